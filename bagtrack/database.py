"""Per-connection database settings, hooked on the engine without connecting."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import event

from .extensions import db


def init_app(app: Flask) -> None:
    with app.app_context():
        engine = db.engine
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)


def _configure_sqlite(engine) -> None:
    """SQLite serialises writers: take the write lock when a transaction starts.

    A deferred transaction that reads and then writes can fail with
    "database is locked" when another writer got in between; ``BEGIN
    IMMEDIATE`` waits (up to the busy timeout) instead.
    """

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=15000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")
