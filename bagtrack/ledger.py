"""The write side shared by every domain action: one transaction, the scan
log, and the dashboard tally."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from sqlalchemy import bindparam, insert, literal, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from . import figures, timeline
from .codes import QR_MAX_LENGTH
from .errors import Refusal
from .models import TALLY_FIELDS, Scan, Tally, TallyHour, User, utcnow
from .observability import describe_database_error

T = TypeVar("T")
log = logging.getLogger(__name__)

TALLY_SHARDS = 8
# Deadlock and serialization failures are safe to retry: nothing was committed.
RETRYABLE_PGCODES = {"40P01", "40001"}
ATTEMPTS = 3
# The areas whose tally the current transaction changed, announced to the cache after commit.
CHANGED_TALLIES = "bagtrack.changed_tallies"


# Statements built once per dialect and executed on the Core connection: the
# write path of every scan runs them, and neither building nor the ORM's
# bulk-insert machinery is free.
_statements: dict[tuple, object] = {}


def _dialect(session) -> str:
    return session.get_bind().dialect.name


def _insert(dialect: str, table):
    return (postgresql if dialect == "postgresql" else sqlite).insert(table)


def insert_ignoring_duplicates(session, model, values: dict, key: str):
    """INSERT a row unless one with the same ``key`` exists; return its new id or None."""
    dialect = _dialect(session)
    statement = _statements.get((dialect, model, key))
    if statement is None:
        table = model.__table__
        statement = _insert(dialect, table).on_conflict_do_nothing(index_elements=[key]).returning(table.c.id)
        _statements[(dialect, model, key)] = statement
    return session.connection().execute(statement, values).scalar_one_or_none()


# What a scan adds to its hour's row of the per-hour tally.
HOURLY_FIELDS = ("scans_ok", "scans_rejected", "parents_complete")


def tally_statement(dialect: str, *, hourly: bool):
    """The one statement that adds to the tally: today's area row and, with ``hourly``, the hour's row.

    Parameters: ``area_id``, ``day``, ``shard`` and every tally field; with
    ``hourly`` also ``hour``, ``user_id``, ``reason``, ``hour_scans`` and
    ``hour_parents_complete``. On PostgreSQL both rows are written by one
    statement (the hour's upsert is a CTE of the day's); SQLite cannot, and
    gets :func:`hour_statement` run after it.
    """
    key = (dialect, "tally", hourly and dialect == "postgresql")
    statement = _statements.get(key)
    if statement is not None:
        return statement
    table = Tally.__table__
    statement = _insert(dialect, table).values(
        area_id=bindparam("area_id"),
        day=bindparam("day"),
        shard=bindparam("shard"),
        **{field: bindparam(field) for field in TALLY_FIELDS},
    )
    statement = statement.on_conflict_do_update(
        index_elements=["area_id", "day", "shard"],
        set_={field: table.c[field] + statement.excluded[field] for field in TALLY_FIELDS},
    )
    if hourly and dialect == "postgresql":
        statement = statement.add_cte(hour_statement(dialect).cte("hourly"))
    _statements[key] = statement
    return statement


def hour_statement(dialect: str):
    """The upsert of one row of the per-hour tally (see :func:`tally_statement` for its parameters)."""
    table = TallyHour.__table__
    statement = _insert(dialect, table).values(
        hour=bindparam("hour"),
        area_id=bindparam("area_id"),
        user_id=bindparam("user_id"),
        reason=bindparam("reason"),
        scans=bindparam("hour_scans"),
        parents_complete=bindparam("hour_parents_complete"),
    )
    return statement.on_conflict_do_update(
        index_elements=["hour", "area_id", "user_id", "reason"],
        set_={
            "scans": table.c.scans + statement.excluded.scans,
            "parents_complete": table.c.parents_complete + statement.excluded.parents_complete,
        },
    )


def tally_key(at: datetime) -> dict:
    """The tally rows a scan at ``at`` counts in besides its area and user.

    The local day's row on one shard picked at random, and the local hour's row.
    """
    return {"day": timeline.local_day(at), "shard": random.randrange(TALLY_SHARDS), "hour": timeline.hour_start(at)}


TALLY_KEY = ("day", "shard")


def tally_upsert_from(area_id, **deltas):
    """The day's tally upsert as a piece of a larger PostgreSQL statement.

    ``area_id`` and ``deltas`` are SQL expressions (columns of the statement's
    other parts, say); the rest of the key is bound by name, with the values
    of :func:`tally_key`. The caller must also :func:`note_changed_tally`.
    """
    unknown = set(deltas) - set(TALLY_FIELDS)
    if unknown:
        raise ValueError(f"not tally fields: {sorted(unknown)}")
    table = Tally.__table__
    columns = {
        "area_id": area_id,
        **{name: bindparam(name) for name in TALLY_KEY},
        **{field: deltas.get(field, literal(0)) for field in TALLY_FIELDS},
    }
    source = select(*(expression.label(name) for name, expression in columns.items()))
    statement = postgresql.insert(table).from_select(list(columns), source)
    return statement.on_conflict_do_update(
        index_elements=["area_id", *TALLY_KEY],
        set_={field: table.c[field] + statement.excluded[field] for field in TALLY_FIELDS},
    )


def hour_upsert_from(area_id, *, scans, parents_complete):
    """The hour's tally upsert of an accepted scan as a piece of a larger PostgreSQL statement.

    Bound by name: ``hour`` (from :func:`tally_key`) and ``user_id``.
    """
    table = TallyHour.__table__
    columns = {
        "hour": bindparam("hour"),
        "area_id": area_id,
        "user_id": bindparam("user_id"),
        "reason": literal(""),
        "scans": scans,
        "parents_complete": parents_complete,
    }
    source = select(*(expression.label(name) for name, expression in columns.items()))
    statement = postgresql.insert(table).from_select(list(columns), source)
    return statement.on_conflict_do_update(
        index_elements=["hour", "area_id", "user_id", "reason"],
        set_={
            "scans": table.c.scans + statement.excluded.scans,
            "parents_complete": table.c.parents_complete + statement.excluded.parents_complete,
        },
    )


def note_changed_tally(session, area_id: int) -> None:
    """Remember that this transaction changed ``area_id``'s figures."""
    session.info.setdefault(CHANGED_TALLIES, set()).add(area_id)


def add_to_tally(
    session,
    area_id: int,
    *,
    user_id: int | None = None,
    reason: str | None = None,
    at: datetime | None = None,
    **deltas: int,
) -> None:
    """Add ``deltas`` to the tally of ``area_id`` (0 for bills) in this transaction.

    The area's row of the local day of ``at`` (default: now) always; when the
    deltas count scans or completed parents, also the row of that local hour,
    ``user_id`` (None: no user) and ``reason`` (of a refusal; accepted scans
    count under ''). ``at`` is the scan's own time, so the hour is the one
    its scan-log row falls in.
    """
    unknown = set(deltas) - set(TALLY_FIELDS)
    if unknown:
        raise ValueError(f"not tally fields: {sorted(unknown)}")
    note_changed_tally(session, area_id)
    at = utcnow() if at is None else at
    hourly = any(deltas.get(field) for field in HOURLY_FIELDS)
    dialect = _dialect(session)
    values = {"area_id": area_id, **tally_key(at), **{field: deltas.get(field, 0) for field in TALLY_FIELDS}}
    if hourly:
        values.update(
            user_id=user_id or 0,
            reason=(reason or "") if deltas.get("scans_rejected") else "",
            hour_scans=deltas.get("scans_ok", 0) + deltas.get("scans_rejected", 0),
            hour_parents_complete=deltas.get("parents_complete", 0),
        )
    connection = session.connection()
    connection.execute(tally_statement(dialect, hourly=hourly), values)
    if hourly and dialect != "postgresql":
        connection.execute(hour_statement(dialect), values)


def add_hours(connection, hours: dict[tuple, list[int]]) -> None:
    """Add many rows to the per-hour tally: ``{(hour, area_id, user_id, reason): [scans, parents_complete]}``."""
    if hours:
        connection.execute(
            hour_statement(connection.dialect.name),
            [
                {
                    "hour": hour,
                    "area_id": area_id,
                    "user_id": user_id,
                    "reason": reason,
                    "hour_scans": scans,
                    "hour_parents_complete": complete,
                }
                for (hour, area_id, user_id, reason), (scans, complete) in hours.items()
            ],
        )


def scans_by_hour(connection, condition: str = "true", **params) -> dict[tuple, int]:
    """Scan-log rows matching ``condition`` counted as the per-hour tally counts them.

    ``{(hour, area_id, user_id, reason): scans}``: the database groups the
    rows by quarter hour in UTC (every zone's hours start on one), Python
    turns quarters into local hours.
    """
    quarter = timeline.quarter_sql(connection.dialect.name, "at")
    rows = connection.execute(
        text(
            f"SELECT {quarter}, coalesce(area_id, 0), coalesce(user_id, 0),"
            " CASE WHEN outcome = 'ok' THEN '' ELSE reason END, count(*)"
            f" FROM scan WHERE {condition} GROUP BY 1, 2, 3, 4"
        ),
        params,
    )
    counts: dict[tuple, int] = {}
    for quarter_no, area_id, user_id, reason, scans in rows:
        key = (timeline.hour_start(timeline.quarter_moment(quarter_no)), area_id, user_id, reason)
        counts[key] = counts.get(key, 0) + scans
    return counts


_SCAN_INSERT = insert(Scan.__table__)


def log_scan(
    session,
    *,
    user: User | None,
    kind: str,
    qr: str,
    bag_id: int | None = None,
    parent_id: int | None = None,
    bill_id: int | None = None,
    area_id: int | None = None,
    reason: str | None = None,
    outcome: str = "ok",
) -> datetime:
    """Write one scan-log row; returns its time."""
    at = utcnow()
    session.connection().execute(
        _SCAN_INSERT,
        {
            "at": at,
            "kind": kind,
            "outcome": outcome,
            "reason": reason,
            "qr": (qr or "")[:QR_MAX_LENGTH],
            "bag_id": bag_id,
            "parent_id": parent_id,
            "bill_id": bill_id,
            "user_id": user.id if user is not None else None,
            "area_id": area_id,
        },
    )
    return at


def count_scan(
    session,
    user: User | None,
    kind: str,
    *,
    parent,
    bag=None,
    bill_id: int | None = None,
    reason: str | None = None,
    **tally: int,
) -> None:
    """Log an accepted scan of ``bag`` (default: ``parent`` itself) and count it in the parent's area.

    ``tally`` adds what else the scan changed (children, parents_complete, ...)
    to the same area's dashboard figures, in the same transaction.
    """
    bag = parent if bag is None else bag
    at = log_scan(
        session,
        user=user,
        kind=kind,
        qr=bag.qr,
        bag_id=bag.id,
        parent_id=parent.id,
        bill_id=bill_id,
        area_id=parent.area_id,
        reason=reason,
    )
    add_to_tally(session, parent.area_id, user_id=user.id if user is not None else None, at=at, scans_ok=1, **tally)


def _retryable(exc: DBAPIError, *, committing: bool) -> bool:
    """Deadlocks, serialization failures, and a connection found dead before COMMIT was sent.

    Connections are not pinged when the pool hands them out: one that died
    while pooled (a database restart, a terminated backend) fails on its first
    statement, and whatever the attempt did died with it. A connection lost
    during COMMIT is not retried: the commit may have happened.
    """
    if getattr(exc.orig, "pgcode", None) in RETRYABLE_PGCODES:
        return True
    return exc.connection_invalidated and not committing


def in_transaction(
    session,
    work: Callable[[], T],
    *,
    user: User | None = None,
    scan_kind: str | None = None,
) -> T:
    """Run ``work`` as one transaction and commit it.

    A :class:`Refusal` rolls everything back; when ``scan_kind`` is given the
    refusal is then written to the scan log in a transaction of its own, so
    supervisors see error rates, and re-raised (also when that write fails:
    the refusal is still the answer). Deadlocks, serialization failures and
    connections lost before the commit are retried: nothing of the failed
    attempt was committed.
    """
    for attempt in range(ATTEMPTS):
        session.info.pop(CHANGED_TALLIES, None)
        committing = False
        try:
            result = work()
            committing = True
            session.commit()
            figures.announce(scan_kind, session.info.pop(CHANGED_TALLIES, ()))
            return result
        except Refusal as refusal:
            session.rollback()
            if scan_kind is not None:
                try:
                    _log_refusal(session, refusal, user=user, scan_kind=scan_kind)
                except (DBAPIError, PoolTimeout) as exc:
                    # The refusal is the answer the scanner needs; its log row is best-effort.
                    session.rollback()
                    log.warning(
                        "refusal %s not written to the scan log: %s", refusal.code, describe_database_error(exc)
                    )
            raise
        except DBAPIError as exc:
            session.rollback()
            if attempt + 1 < ATTEMPTS and _retryable(exc, committing=committing):
                continue
            raise
    raise AssertionError("unreachable")


def _log_refusal(session, refusal: Refusal, *, user: User | None, scan_kind: str) -> None:
    area_id = refusal.area_id or getattr(user, "area_id", None)
    at = log_scan(
        session,
        user=user,
        kind=scan_kind,
        qr=refusal.qr or "",
        parent_id=refusal.parent_id,
        bill_id=refusal.bill_id,
        area_id=area_id,
        reason=refusal.code,
        outcome="rejected",
    )
    add_to_tally(
        session,
        area_id or 0,
        user_id=user.id if user is not None else None,
        reason=refusal.code,
        at=at,
        scans_rejected=1,
    )
    session.commit()
