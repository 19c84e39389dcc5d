"""The write side shared by every domain action: one transaction, the scan
log, and the dashboard tally."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import bindparam, insert, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from . import cache
from .errors import Refusal
from .models import TALLY_FIELDS, Scan, Tally, User, utcnow
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


def tally_key() -> dict:
    """The tally row a scan counts in besides its area: today's, on one shard picked at random."""
    return {"day": datetime.now(UTC).date(), "shard": random.randrange(TALLY_SHARDS)}


TALLY_KEY = ("day", "shard")


def _add_on_conflict(statement):
    table = Tally.__table__
    return statement.on_conflict_do_update(
        index_elements=["area_id", *TALLY_KEY],
        set_={field: table.c[field] + statement.excluded[field] for field in TALLY_FIELDS},
    )


def tally_upsert_from(area_id, **deltas):
    """The tally upsert as a piece of a larger PostgreSQL statement.

    ``area_id`` and ``deltas`` are SQL expressions (columns of the statement's
    other parts, say); the rest of the key is bound by name, with the values
    of :func:`tally_key`. The caller must also :func:`note_changed_tally`.
    """
    unknown = set(deltas) - set(TALLY_FIELDS)
    if unknown:
        raise ValueError(f"not tally fields: {sorted(unknown)}")
    columns = {
        "area_id": area_id,
        **{name: bindparam(name) for name in TALLY_KEY},
        **{field: deltas.get(field, literal(0)) for field in TALLY_FIELDS},
    }
    source = select(*(expression.label(name) for name, expression in columns.items()))
    return _add_on_conflict(postgresql.insert(Tally.__table__).from_select(list(columns), source))


def note_changed_tally(session, area_id: int) -> None:
    session.info.setdefault(CHANGED_TALLIES, set()).add(area_id)


def add_to_tally(session, area_id: int, **deltas: int) -> None:
    """Add ``deltas`` to the current tally row of ``area_id`` (0 for bills) in this transaction."""
    unknown = set(deltas) - set(TALLY_FIELDS)
    if unknown:
        raise ValueError(f"not tally fields: {sorted(unknown)}")
    note_changed_tally(session, area_id)
    dialect = _dialect(session)
    statement = _statements.get((dialect, Tally))
    if statement is None:
        statement = _add_on_conflict(_insert(dialect, Tally.__table__))
        _statements[(dialect, Tally)] = statement
    row = {field: deltas.get(field, 0) for field in TALLY_FIELDS}
    session.connection().execute(statement, {"area_id": area_id, **tally_key(), **row})


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
) -> None:
    session.connection().execute(
        _SCAN_INSERT,
        {
            "at": utcnow(),
            "kind": kind,
            "outcome": outcome,
            "reason": reason,
            "qr": (qr or "")[:64],
            "bag_id": bag_id,
            "parent_id": parent_id,
            "bill_id": bill_id,
            "user_id": user.id if user is not None else None,
            "area_id": area_id,
        },
    )


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
    log_scan(
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
    add_to_tally(session, parent.area_id, scans_ok=1, **tally)


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
            cache.announce(scan_kind, session.info.pop(CHANGED_TALLIES, ()))
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
    log_scan(
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
    add_to_tally(session, area_id or 0, scans_rejected=1)
    session.commit()
