"""Per-connection database settings, hooked on the engine without connecting:
transaction timeouts on PostgreSQL, SQLite's write lock, reads without a
transaction block, slow-query logging and pool gauges; and the end of each
request's session."""

from __future__ import annotations

import logging
import select
from time import perf_counter

from flask import Flask, current_app, has_request_context, request
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.pool import QueuePool

from . import observability
from .extensions import db

log = logging.getLogger(__name__)

# The attribute :func:`reads_only` sets on a view.
READS_ONLY = "bagtrack_reads_only"


def init_app(app: Flask) -> None:
    with app.app_context():
        engine = db.engine
    configure_engine(app, engine)
    _publish_pool_usage(engine)
    _end_sessions_quietly(app)


def configure_engine(app: Flask, engine) -> None:
    """What every engine of the app gets, the primary's and a replica's alike."""
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    if engine.dialect.name == "postgresql":
        _discard_closed_connections(engine)
        _configure_postgresql(
            engine,
            app.config["BAGTRACK_DB_STATEMENT_TIMEOUT_MS"],
            app.config["BAGTRACK_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS"],
            per_transaction=app.config["BAGTRACK_DB_PGBOUNCER"],
        )
        if not app.config["BAGTRACK_DB_PGBOUNCER"]:
            _autocommit_reads(engine)
    _time_queries(engine, app.config["BAGTRACK_SLOW_QUERY_MS"])


def _end_sessions_quietly(app: Flask) -> None:
    """Roll back what a request left open before Flask-SQLAlchemy removes its session.

    The connection may have died while that transaction sat idle (a database
    restart, a terminated backend), and then the rollback fails. The answer is
    made by then, perhaps for a committed scan: it must not become a 500, nor
    the session stay half-closed. SQLAlchemy has already invalidated the dead
    connection, so the pool replaces it. Flask runs teardown functions in
    reverse order of registration, so this one runs first.
    """

    @app.teardown_appcontext
    def rollback(_error):
        if not db.session.registry.has():
            return
        try:
            db.session.rollback()
        except DBAPIError as error:
            log.warning("rollback at the end of the request failed: %s", observability.describe_database_error(error))


def reads_only(view):
    """Mark ``view`` as one that only reads: on PostgreSQL its GET requests read outside a transaction block.

    Under READ COMMITTED every statement takes a snapshot of its own, inside a
    transaction or not, so a transaction around a page's reads buys nothing
    and costs two round trips: the ``BEGIN`` psycopg2 sends before the first
    statement and the ``ROLLBACK`` that ends the request. A marked view's
    connection is in autocommit mode from the moment the request connects
    (the signed-in user's read included); the pool restores the mode when the
    connection comes back. Only for views that write nothing: in autocommit
    mode each statement would commit on its own.
    """
    setattr(view, READS_ONLY, True)
    return view


def _autocommit_reads(engine) -> None:
    """Give the GET requests of :func:`reads_only` views a connection in autocommit mode.

    The driver's mode is switched on the connection itself, which sends
    nothing to the server (SQLAlchemy's ``isolation_level`` option would cost
    a ``SET`` round trip when it restores the level), and switched back as the
    connection returns to the pool. Not behind PgBouncer in transaction mode:
    there the request's timeouts are ``SET LOCAL`` at the start of a
    transaction, which needs one.
    """

    @event.listens_for(engine, "engine_connect")
    def on_connect(connection):
        if has_request_context() and request.method in ("GET", "HEAD"):
            view = current_app.view_functions.get(request.endpoint)
            if getattr(view, READS_ONLY, False):
                connection.connection.dbapi_connection.autocommit = True

    @event.listens_for(engine, "checkin")
    def on_checkin(dbapi_connection, _record):
        if dbapi_connection is not None and dbapi_connection.autocommit:
            dbapi_connection.autocommit = False


def _discard_closed_connections(engine) -> None:
    """Hand out no pooled connection the server has closed, without a round trip to find out.

    An idle connection has nothing to read; when PostgreSQL ends it (a
    restart, ``pg_terminate_backend``, an idle timeout) it sends its last
    words and closes the socket, which then polls readable. Such a connection
    is replaced at checkout. One that dies without a word is found on first
    use, and ``ledger.in_transaction`` retries the write.
    """

    @event.listens_for(engine, "checkout")
    def on_checkout(dbapi_connection, _record, _proxy):
        readable, _, _ = select.select([dbapi_connection], [], [], 0)
        if readable:
            raise DisconnectionError("the server closed this pooled connection")


def _configure_postgresql(
    engine, statement_timeout_ms: int, idle_in_transaction_timeout_ms: int, per_transaction: bool
) -> None:
    """Requests run under a statement timeout and an idle-in-transaction timeout.

    Only requests: migrations, seeding, imports and exports run from the CLI
    and may rightly run one statement for minutes, so a connection gets the
    timeouts the first time a request checks it out.

    By default they are session settings, sent once per connection. Behind
    PgBouncer in transaction mode (``BAGTRACK_DB_PGBOUNCER``) session
    settings would travel to whichever client gets the server connection
    next, so there they are sent with ``SET LOCAL`` as each transaction
    begins, one round trip per transaction. A statement that times out raises
    ``QueryCanceled``; the rollback that follows leaves the connection clean
    for the pool.
    """
    settings = []
    if statement_timeout_ms:
        settings.append(f"statement_timeout = {int(statement_timeout_ms)}")
    if idle_in_transaction_timeout_ms:
        settings.append(f"idle_in_transaction_session_timeout = {int(idle_in_transaction_timeout_ms)}")
    if not settings:
        return
    if per_transaction:
        statement = "; ".join(f"SET LOCAL {setting}" for setting in settings)

        @event.listens_for(engine, "begin")
        def on_begin(connection):
            if has_request_context():
                connection.exec_driver_sql(statement)

        return

    statement = "; ".join(f"SET {setting}" for setting in settings)

    @event.listens_for(engine, "checkout")
    def on_checkout(dbapi_connection, record, _proxy):
        if has_request_context() and not record.info.get("request_timeouts"):
            with dbapi_connection.cursor() as cursor:
                cursor.execute(statement)
            # A session SET outside a transaction block takes effect at once;
            # psycopg2 opened one, so end it before the pool hands this out.
            dbapi_connection.commit()
            record.info["request_timeouts"] = True


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


def _time_queries(engine, threshold_ms: float) -> None:
    """Add each statement's time to its request's phases, and warn about every one slower than ``threshold_ms``."""

    @event.listens_for(engine, "before_cursor_execute")
    def before(connection, _cursor, _statement, _parameters, _context, _executemany):
        # One slot per connection is enough: statements on a connection never nest.
        connection.info["query_started"] = perf_counter()

    @event.listens_for(engine, "after_cursor_execute")
    def after(connection, _cursor, statement, _parameters, _context, _executemany):
        duration_ms = (perf_counter() - connection.info["query_started"]) * 1000
        observability.count_query(duration_ms)
        if threshold_ms and duration_ms >= threshold_ms:
            observability.log_slow_query(statement, duration_ms)


def _publish_pool_usage(engine) -> None:
    """Keep the pool gauges (size, open, checked out, overflow) in step with the pool."""
    pool = engine.pool
    usage = observability.PoolUsage(pool.size() if isinstance(pool, QueuePool) else 0)

    @event.listens_for(engine, "connect")
    def on_connect(_dbapi_connection, _record):
        usage.change(connections=1)

    @event.listens_for(engine, "close")
    def on_close(_dbapi_connection, _record):
        usage.change(connections=-1)

    @event.listens_for(engine, "detach")
    def on_detach(_dbapi_connection, _record):
        usage.change(connections=-1)

    @event.listens_for(engine, "checkout")
    def on_checkout(_dbapi_connection, _record, _proxy):
        usage.change(checked_out=1)

    @event.listens_for(engine, "checkin")
    def on_checkin(_dbapi_connection, _record):
        usage.change(checked_out=-1)
