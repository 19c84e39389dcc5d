"""The benchmark's yardstick: the least a route can do on this machine.

A minimal Flask app served by the project's own ``gunicorn.conf.py`` (same
workers, gevent, psycogreen) and the project's own pool settings, with three
routes:

- ``GET /noop``: no I/O at all;
- ``GET /redis``: one Redis GET;
- ``POST /write``: one transaction, one INSERT and one UPDATE, committed.

What bagtrack's endpoints achieve is compared with these, measured in the
same run: the difference is what the application itself costs. The tables
live in the benchmark database, apart from bagtrack's (``baseline_*``).
"""

from __future__ import annotations

import os
import random

import redis
from flask import Flask, jsonify
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text

from bagtrack.config import engine_options, with_psycopg2

COUNTER_ROWS = 64
FIGURES_KEY = "bench:baseline:figures"
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS baseline_event (id bigserial PRIMARY KEY, at timestamp NOT NULL, note text NOT NULL)",
    "CREATE TABLE IF NOT EXISTS baseline_counter (id integer PRIMARY KEY, hits bigint NOT NULL DEFAULT 0)",
    f"INSERT INTO baseline_counter (id) SELECT generate_series(1, {COUNTER_ROWS}) ON CONFLICT DO NOTHING",
)
# About the size of bagtrack's dashboard figures.
FIGURES = (
    '{"bags": {"parents": 25806, "children": 774180}, "parents": {"open": 12, "complete": 25794, "billed": 20000},'
    ' "bills": {"open": 3, "closed": 1000}, "scans": {"total": 1000000, "today": 5000},'
    ' "generated_at": "2025-01-01T00:00:00Z"}'
)


def prepare(database_url: str, redis_url: str) -> None:
    """Create the baseline tables and the cached figures (run once, before gunicorn starts)."""
    from sqlalchemy import create_engine

    engine = create_engine(with_psycopg2(database_url))
    with engine.begin() as connection:
        for statement in SCHEMA:
            connection.execute(text(statement))
    engine.dispose()
    redis.Redis.from_url(redis_url).set(FIGURES_KEY, FIGURES)


def create_baseline_app() -> Flask:
    database_url = with_psycopg2(os.environ["DATABASE_URL"])
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = engine_options(os.environ, database_url)
    db = SQLAlchemy(app)
    store = redis.Redis.from_url(os.environ["REDIS_URL"])

    @app.get("/noop")
    def noop():
        return jsonify(ok=True)

    @app.get("/redis")
    def one_redis_get():
        return app.response_class(store.get(FIGURES_KEY), mimetype="application/json")

    @app.post("/write")
    def one_transaction():
        # A counter row picked at random, like bagtrack's sharded tallies: no single hot row.
        db.session.execute(text("INSERT INTO baseline_event (at, note) VALUES (now(), 'write')"))
        db.session.execute(
            text("UPDATE baseline_counter SET hits = hits + 1 WHERE id = :id"),
            {"id": random.randint(1, COUNTER_ROWS)},
        )
        db.session.commit()
        return jsonify(ok=True)

    return app
