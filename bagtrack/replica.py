"""Read routing: lists, searches, exports and reports read from a streaming replica.

With ``DATABASE_REPLICA_URL`` set, a view decorated with
:func:`reads_from_replica` passes :func:`reads` to its queries instead of
``db.session``, and those reads go to the replica while its replay lag is
under ``BAGTRACK_REPLICA_MAX_LAG_S``. Everything else (scans, bills, logins,
the pages a user opens right after acting) reads and writes on the primary,
and so does a routed view once its request has committed a write: a user
always sees what they just did.

The lag is asked of the replica at most once a second per worker (five
seconds after a failure), by one request while the others use the last
answer, with a short connect timeout. A replica that is down, unknown or
lagging sends reads to the primary; a replica that fails during a routed
view makes the view run again on the primary. Neither fails a request.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from functools import wraps
from time import monotonic

from flask import Flask, current_app, g, has_app_context
from sqlalchemy import create_engine, event, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session

from . import database, observability
from .extensions import db

log = logging.getLogger(__name__)

EXTENSION = "bagtrack_replica"
CHECK_EVERY_S = 1.0
RETRY_AFTER_FAILURE_S = 5.0
# 0 when everything received is replayed (an idle primary sends nothing, and the
# last replayed transaction may be old); NULL on a server that is not a standby.
LAG_QUERY = text(
    "SELECT pg_is_in_recovery(), CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0"
    " ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END"
)

# Keys in flask.g, for the length of one request.
MAY_USE = "bagtrack_reads_may_use_replica"
CHOSEN = "bagtrack_reads_chosen"
SESSION = "bagtrack_replica_session"
WROTE = "bagtrack_wrote_to_primary"
FAILED = "bagtrack_replica_failed"
QUERY_CANCELED = "57014"


@dataclass
class Lag:
    """The replica as last seen: whether reads may go there, and its lag in seconds (None: unknown)."""

    usable: bool
    seconds: float | None
    error: str | None = None


class Replica:
    """One worker's view of the replica: its engine and the last answer about its lag."""

    def __init__(self, app: Flask, url: str):
        options = dict(app.config["SQLALCHEMY_ENGINE_OPTIONS"])
        connect_args = dict(options.get("connect_args", {}))
        connect_args["connect_timeout"] = app.config["BAGTRACK_REPLICA_CONNECT_TIMEOUT_S"]
        options["connect_args"] = connect_args
        self.engine = create_engine(url, **options)
        self.max_lag_s = app.config["BAGTRACK_REPLICA_MAX_LAG_S"]
        self.lag = Lag(usable=False, seconds=None, error="not checked yet")
        self.next_check = 0.0
        self.checking = threading.Lock()
        observability.publish_replica(False, None)

    def current(self) -> Lag:
        """The replica's lag, asked again when the last answer is over a second old.

        One request asks; the others, meanwhile, use the previous answer.
        """
        if monotonic() >= self.next_check and self.checking.acquire(blocking=False):
            try:
                self.lag = self.measure()
                self.next_check = monotonic() + (CHECK_EVERY_S if self.lag.error is None else RETRY_AFTER_FAILURE_S)
                observability.publish_replica(self.lag.usable, self.lag.seconds)
            finally:
                self.checking.release()
        return self.lag

    def failed(self, error: SQLAlchemyError) -> None:
        """A read failed on the replica: send reads to the primary until the next check."""
        log.warning("replica: a read failed, reading on the primary: %s", observability.describe_database_error(error))
        self.lag = Lag(False, None, error.__class__.__name__)
        self.next_check = monotonic() + RETRY_AFTER_FAILURE_S
        observability.publish_replica(False, None)

    def measure(self) -> Lag:
        try:
            with self.engine.connect() as connection:
                in_recovery, seconds = connection.execute(LAG_QUERY).one()
        except SQLAlchemyError as error:
            log.warning("replica: lag check failed: %s", observability.describe_database_error(error))
            return Lag(False, None, error.__class__.__name__)
        if not in_recovery:
            # Promoted, or a server that is no standby at all: it has everything it will get.
            seconds = 0.0
        elif seconds is None:
            return Lag(False, None, "lag unknown")
        seconds = max(0.0, float(seconds))
        return Lag(seconds <= self.max_lag_s, round(seconds, 3))


def init_app(app: Flask) -> None:
    url = app.config.get("BAGTRACK_REPLICA_URL")
    if not url:
        return
    replica = Replica(app, url)
    app.extensions[EXTENSION] = replica
    database.configure_engine(app, replica.engine)

    @event.listens_for(replica.engine, "handle_error")
    def on_error(context):
        # Only the reads of a routed view; a failed lag check is handled where it happens. A
        # statement over the timeout is the query's doing: the primary would take as long.
        if has_app_context() and SESSION in g and getattr(context.original_exception, "pgcode", None) != QUERY_CANCELED:
            setattr(g, FAILED, True)

    with app.app_context():
        primary = db.engine

    @event.listens_for(primary, "commit")
    def on_commit(_connection):
        if has_app_context():
            setattr(g, WROTE, True)

    @app.teardown_appcontext
    def close_replica_session(_error):
        session = g.pop(SESSION, None)
        if session is not None:
            _close_quietly(session)


def _close_quietly(session: Session) -> None:
    try:
        session.close()
    except DBAPIError as error:
        log.warning("replica: closing the session failed: %s", observability.describe_database_error(error))


def reads():
    """The session for this request's reads that may lag a few seconds behind the primary.

    The replica's session in a view decorated with :func:`reads_from_replica`
    while the replica is fresh and this request has written nothing; else
    ``db.session``. Whether the replica is fresh is decided once per request,
    so one page never mixes two points in time.
    """
    if not g.get(MAY_USE) or g.get(WROTE):
        return db.session
    replica = current_app.extensions.get(EXTENSION)
    if CHOSEN not in g:
        setattr(g, CHOSEN, replica is not None and replica.current().usable)
    if not g.get(CHOSEN):
        return db.session
    if SESSION not in g:
        setattr(g, SESSION, Session(replica.engine, expire_on_commit=False))
    return g.get(SESSION)


def reads_from_replica(view):
    """Let ``view`` read from the replica through :func:`reads`.

    For views that only read (a list, a search, an export, a report): when the
    replica fails under them they run once more, on the primary.
    """

    @wraps(view)
    def routed(*args, **kwargs):
        setattr(g, MAY_USE, True)
        try:
            response = view(*args, **kwargs)
        except SQLAlchemyError as error:
            if not g.pop(FAILED, False):
                raise
            current_app.extensions[EXTENSION].failed(error)
            _close_quietly(g.pop(SESSION))
            setattr(g, CHOSEN, False)
            db.session.rollback()
            response = view(*args, **kwargs)
        if CHOSEN in g:
            observability.count_routed_read("replica" if g.get(CHOSEN) else "primary")
        return response

    return routed


def status() -> dict:
    """Where routed reads go now and the replica's lag, for ``/ready``."""
    replica = current_app.extensions.get(EXTENSION)
    if replica is None:
        return {"configured": False, "reads": "primary"}
    lag = replica.current()
    report = {
        "configured": True,
        "reads": "replica" if lag.usable else "primary",
        "lag_s": lag.seconds,
        "max_lag_s": replica.max_lag_s,
    }
    if lag.error:
        report["error"] = lag.error
    return report
