"""The write side shared by every domain action: one transaction, the scan
log, and the dashboard tally."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy import DateTime, and_, bindparam, func, insert, literal, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from . import figures, timeline
from .codes import QR_MAX_LENGTH
from .errors import Refusal
from .models import OFFICE_TALLY, TALLY_FIELDS, Scan, Tally, TallyHour, User, utcnow
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

    Parameters: ``tally_area_id``, ``day``, ``shard`` and every tally field;
    with ``hourly`` also ``hour``, ``user_id``, ``reason``, ``hour_scans``,
    ``hour_parents_complete``, ``hour_first_at`` and ``hour_last_at``. On
    PostgreSQL both rows are written by one statement (the hour's upsert is
    a CTE of the day's); SQLite cannot, and gets :func:`hour_statement` run
    after it. The area's parameter is not named ``area_id``: SQLAlchemy adds
    a parameter named like a column to the SET of any UPDATE sent with it,
    and callers send this statement with an UPDATE of bags as a CTE.
    """
    key = (dialect, "tally", hourly and dialect == "postgresql")
    statement = _statements.get(key)
    if statement is not None:
        return statement
    table = Tally.__table__
    statement = _insert(dialect, table).values(
        area_id=bindparam("tally_area_id"),
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
    """The upsert of one row of the per-hour tally (see :func:`tally_statement` for its parameters).

    ``hour_first_at`` and ``hour_last_at`` are the times of the first and last
    scan added (None when the row gains no scans): the row keeps the earlier
    and the later of its own and these.
    """
    table = TallyHour.__table__
    statement = _insert(dialect, table).values(
        hour=bindparam("hour"),
        area_id=bindparam("tally_area_id"),
        user_id=bindparam("user_id"),
        reason=bindparam("reason"),
        scans=bindparam("hour_scans"),
        parents_complete=bindparam("hour_parents_complete"),
        first_at=bindparam("hour_first_at"),
        last_at=bindparam("hour_last_at"),
    )
    return statement.on_conflict_do_update(
        index_elements=["hour", "area_id", "user_id", "reason"],
        set_=_hour_sums(dialect, statement),
    )


def _hour_sums(dialect: str, statement) -> dict:
    """What an upsert into the per-hour tally sets: counts added, first and last scan widened."""
    kept, new = TallyHour.__table__.c, statement.excluded
    if dialect == "postgresql":
        # LEAST and GREATEST skip NULLs: a row that gains no scans keeps its times.
        first_at, last_at = func.least(kept.first_at, new.first_at), func.greatest(kept.last_at, new.last_at)
    else:
        # SQLite's min() and max() of several values are NULL when one is.
        first_at = func.min(func.coalesce(kept.first_at, new.first_at), func.coalesce(new.first_at, kept.first_at))
        last_at = func.max(func.coalesce(kept.last_at, new.last_at), func.coalesce(new.last_at, kept.last_at))
    return {
        "scans": kept.scans + new.scans,
        "parents_complete": kept.parents_complete + new.parents_complete,
        "first_at": first_at,
        "last_at": last_at,
    }


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


def hour_upsert_from(area_id, *, at, scans, parents_complete):
    """The hour's tally upsert of accepted scans logged at ``at`` as a piece of a larger PostgreSQL statement.

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
        "first_at": at,
        "last_at": at,
    }
    source = select(*(expression.label(name) for name, expression in columns.items()))
    statement = postgresql.insert(table).from_select(list(columns), source)
    return statement.on_conflict_do_update(
        index_elements=["hour", "area_id", "user_id", "reason"],
        set_=_hour_sums("postgresql", statement),
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
    count under ''). ``at`` is the scan's own time (of every scan counted),
    so the hour is the one its scan-log rows fall in and ``at`` becomes the
    hour row's first or last scan when it is earlier or later.
    """
    values = tally_values(area_id, user_id=user_id, reason=reason, at=at, **deltas)
    note_changed_tally(session, area_id)
    hourly = "hour_scans" in values
    dialect = _dialect(session)
    connection = session.connection()
    connection.execute(tally_statement(dialect, hourly=hourly), values)
    if hourly and dialect != "postgresql":
        connection.execute(hour_statement(dialect), values)


def tally_values(
    area_id: int, *, user_id: int | None = None, reason: str | None = None, at: datetime | None = None, **deltas: int
) -> dict:
    """The parameters of :func:`tally_statement` for :func:`add_to_tally`'s arguments.

    They are those of the hourly statement when they hold ``hour_scans``.
    """
    unknown = set(deltas) - set(TALLY_FIELDS)
    if unknown:
        raise ValueError(f"not tally fields: {sorted(unknown)}")
    at = utcnow() if at is None else at
    values = {"tally_area_id": area_id, **tally_key(at), **{field: deltas.get(field, 0) for field in TALLY_FIELDS}}
    if any(deltas.get(field) for field in HOURLY_FIELDS):
        scans = deltas.get("scans_ok", 0) + deltas.get("scans_rejected", 0)
        values.update(
            user_id=user_id or 0,
            reason=(reason or "") if deltas.get("scans_rejected") else "",
            hour_scans=scans,
            hour_parents_complete=deltas.get("parents_complete", 0),
            hour_first_at=at if scans > 0 else None,
            hour_last_at=at if scans > 0 else None,
        )
    return values


def add_hours(connection, hours: dict[tuple, list]) -> None:
    """Add many rows to the per-hour tally.

    ``{(hour, area_id, user_id, reason): [scans, parents_complete, first_at, last_at]}``,
    the times those of the first and last scan added (None if none is).
    """
    if hours:
        connection.execute(
            hour_statement(connection.dialect.name),
            [
                {
                    "hour": hour,
                    "tally_area_id": area_id,
                    "user_id": user_id,
                    "reason": reason,
                    "hour_scans": scans,
                    "hour_parents_complete": complete,
                    "hour_first_at": first_at,
                    "hour_last_at": last_at,
                }
                for (hour, area_id, user_id, reason), (scans, complete, first_at, last_at) in hours.items()
            ],
        )


@dataclass
class HourScans:
    """The scan-log rows of one per-hour tally row: how many, and the first's and the last's time."""

    scans: int = 0
    first_at: datetime | None = None
    last_at: datetime | None = None

    def add(self, scans: int, first_at: datetime, last_at: datetime) -> None:
        self.scans += scans
        self.first_at = first_at if self.first_at is None else min(self.first_at, first_at)
        self.last_at = last_at if self.last_at is None else max(self.last_at, last_at)


def scans_by_hour(connection, condition: str = "true", **params) -> dict[tuple, HourScans]:
    """Scan-log rows matching ``condition`` counted as the per-hour tally counts them.

    ``{(hour, area_id, user_id, reason): HourScans}``: the database groups the
    rows by quarter hour in UTC (every zone's hours start on one), Python
    turns quarters into local hours. Moments in ``params`` are bound as timestamps.
    """
    quarter = timeline.quarter_sql(connection.dialect.name, "at")
    moments = [bindparam(name, type_=DateTime()) for name, value in params.items() if isinstance(value, datetime)]
    statement = (
        text(
            f"SELECT {quarter}, coalesce(area_id, {OFFICE_TALLY}), coalesce(user_id, 0),"
            " CASE WHEN outcome = 'ok' THEN '' ELSE reason END, count(*), min(at) AS first_at, max(at) AS last_at"
            f" FROM scan WHERE {condition} GROUP BY 1, 2, 3, 4"
        )
        .bindparams(*moments)
        .columns(first_at=DateTime, last_at=DateTime)
    )
    found: dict[tuple, HourScans] = {}
    for quarter_no, area_id, user_id, reason, scans, first_at, last_at in connection.execute(statement, params):
        key = (timeline.hour_start(timeline.quarter_moment(quarter_no)), area_id, user_id, reason)
        found.setdefault(key, HourScans()).add(scans, first_at, last_at)
    return found


def recount_hour_times(session, start: datetime, end: datetime) -> None:
    """Set the first and last scan of the per-hour tally's rows of hours ``[start, end)`` from the scan log.

    For after rows were deleted from the log: a row whose scans are all gone
    keeps no times. Reads the log through the id range of those hours.
    """
    first_id, stop_id = timeline.id_window(session, Scan.id, Scan.at, start, end)
    connection = session.connection()
    found = scans_by_hour(
        connection, "id >= :first_id AND id < :stop_id AND at >= :start AND at < :end",
        first_id=first_id, stop_id=stop_id, start=start, end=end,
    )  # fmt: skip
    table = TallyHour.__table__
    key = (table.c.hour, table.c.area_id, table.c.user_id, table.c.reason)
    names = [f"b_{column.name}" for column in key]
    changes = []
    for *row_key, first_at, last_at in connection.execute(
        select(*key, table.c.first_at, table.c.last_at).where(table.c.hour >= start, table.c.hour < end)
    ):
        counted = found.get(tuple(row_key), HourScans())
        if (first_at, last_at) != (counted.first_at, counted.last_at):
            times = {"first_at": counted.first_at, "last_at": counted.last_at}
            changes.append({**dict(zip(names, row_key, strict=True)), **times})
    if changes:
        connection.execute(
            update(table)
            .where(and_(*(column == bindparam(name) for column, name in zip(key, names, strict=True))))
            .values(first_at=bindparam("first_at"), last_at=bindparam("last_at")),
            changes,
        )


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
    at: datetime | None = None,
) -> datetime:
    """Write one scan-log row at ``at`` (default: now); returns its time."""
    at = utcnow() if at is None else at
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
    to the same area's dashboard figures, in the same transaction. On
    PostgreSQL the scan-log row and both tally rows are one statement
    (:func:`scan_and_tally_statement`); SQLite, without data-modifying CTEs,
    writes them one statement each.
    """
    values = scan_and_tally_values(user, kind, parent=parent, bag=bag, bill_id=bill_id, reason=reason, **tally)
    note_changed_tally(session, parent.area_id)
    connection = session.connection()
    if _dialect(session) == "postgresql":
        connection.execute(scan_and_tally_statement(), values)
        return
    connection.execute(_scan_row_insert(), values)
    connection.execute(tally_statement("sqlite", hourly=True), values)
    connection.execute(hour_statement("sqlite"), values)


def _scan_row_insert():
    """The INSERT of an accepted scan's log row, its values bound as :func:`scan_and_tally_values` names them."""
    statement = _statements.get("scan row")
    if statement is None:
        statement = _statements["scan row"] = insert(Scan.__table__).values(
            at=bindparam("scan_at"),
            kind=bindparam("scan_kind"),
            outcome="ok",
            reason=bindparam("scan_reason"),
            qr=bindparam("scan_qr"),
            bag_id=bindparam("scan_bag_id"),
            parent_id=bindparam("scan_parent_id"),
            bill_id=bindparam("scan_bill_id"),
            user_id=bindparam("scan_user_id"),
            area_id=bindparam("tally_area_id"),
        )
    return statement


def scan_and_tally_statement():
    """An accepted scan's log row as a CTE of its tally upsert, on PostgreSQL.

    Its parameters are :func:`scan_and_tally_values`. A caller may add CTEs
    of its own (the other writes of its transaction) and send them all at once;
    it must then :func:`note_changed_tally` itself.
    """
    statement = _statements.get("scan and tally")
    if statement is None:
        statement = _statements["scan and tally"] = tally_statement("postgresql", hourly=True).add_cte(
            _scan_row_insert().cte("logged")
        )
    return statement


def scan_and_tally_values(
    user: User | None,
    kind: str,
    *,
    parent,
    bag=None,
    bill_id: int | None = None,
    reason: str | None = None,
    **tally: int,
) -> dict:
    """The parameters of :func:`scan_and_tally_statement` (the arguments are :func:`count_scan`'s)."""
    bag = parent if bag is None else bag
    at = utcnow()
    user_id = user.id if user is not None else None
    values = tally_values(parent.area_id, user_id=user_id, at=at, scans_ok=1, **tally)
    values.update(
        scan_at=at,
        scan_kind=kind,
        scan_reason=reason,
        scan_qr=(bag.qr or "")[:QR_MAX_LENGTH],
        scan_bag_id=bag.id,
        scan_parent_id=parent.id,
        scan_bill_id=bill_id,
        scan_user_id=user_id,
    )
    return values


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
