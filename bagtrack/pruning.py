"""Pruning the scan log: old rows go, the dashboard tally follows them.

Rows older than a number of days are deleted oldest first, in batches of
``BATCH_ROWS`` that are each a short transaction of their own, so scanners
never wait long. Each batch subtracts what it deleted from the tally of the
rows' area and day, so the dashboard's scan total stays equal to the rows
left in the log. One row is never deleted however old: the latest accepted
child/undo scan of a child that is in a parent, which records how it got
there (see :func:`bagtrack.invariants.find_violations`).

The dashboard sums the tally of every day; to keep that sum small over the
years, the tally rows of the days before yesterday are folded into one row
per area and shard, dated ``FOLD_DAY``. The sums do not change. The
per-hour tally loses the deleted rows' scans too, hour by hour, and those
hours' first and last scans are found again among the rows left, so the
reports of a pruned day count the rows the log still holds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import Date, and_, bindparam, delete, exists, func, not_, select, text
from sqlalchemy.orm import aliased

from . import figures, timeline
from .audit import record
from .errors import Refusal
from .ledger import add_hours, recount_hour_times
from .models import TALLY_FIELDS, Bag, Scan, User, utcnow
from .timeline import first_id_from

BATCH_ROWS = 10_000
# The day the folded tally rows carry: before any real day, never "today".
FOLD_DAY = date(2000, 1, 1)


@dataclass
class PruneReport:
    cutoff: datetime
    deleted: int = 0
    kept: int = 0
    folded: int = 0
    dry_run: bool = False


def _still_needed():
    """A scan row that is the latest accepted child/undo scan of a child now in a parent."""
    later = aliased(Scan)
    return and_(
        Scan.kind.in_(("child", "undo")),
        Scan.outcome == "ok",
        exists().where(Bag.id == Scan.bag_id, Bag.parent_id.is_not(None)),
        ~exists().where(
            later.bag_id == Scan.bag_id, later.id > Scan.id, later.kind.in_(("child", "undo")), later.outcome == "ok"
        ),
    )


SUBTRACT_SCANS = """
INSERT INTO tally (area_id, day, shard, parents, children, parents_complete, parents_billed,
                   bills_open, bills_closed, scans_ok, scans_rejected)
VALUES (:area_id, :day, 0, 0, 0, 0, 0, 0, 0, :scans_ok, :scans_rejected)
ON CONFLICT (area_id, day, shard) DO UPDATE SET
    scans_ok = tally.scans_ok + excluded.scans_ok,
    scans_rejected = tally.scans_rejected + excluded.scans_rejected
"""

FOLD_TALLY = f"""
INSERT INTO tally (area_id, day, shard, {", ".join(TALLY_FIELDS)})
SELECT area_id, :fold_day, shard, {", ".join(f"sum({name})" for name in TALLY_FIELDS)}
FROM tally WHERE day < :before AND day <> :fold_day
GROUP BY area_id, shard
ON CONFLICT (area_id, day, shard) DO UPDATE SET
    {", ".join(f"{name} = tally.{name} + excluded.{name}" for name in TALLY_FIELDS)}
"""

FOLDED_ROWS = "SELECT count(*) FROM tally WHERE day < :before AND day <> :fold_day"
DROP_FOLDED = "DELETE FROM tally WHERE day < :before AND day <> :fold_day"


def _with_days(sql: str):
    """The statement with its day parameters bound as dates (SQLite stores them as text)."""
    names = [name for name in ("day", "fold_day", "before") if f":{name}" in sql]
    return text(sql).bindparams(*(bindparam(name, type_=Date()) for name in names))


def prune(session, *, older_than_days: int, dry_run: bool = False, user: User | None = None) -> PruneReport:
    """Delete scan-log rows older than ``older_than_days`` days (at least 1) and fold old tally days.

    Keeps every row still needed to show how a packed child got into its
    parent; subtracts the deleted rows from the tally of their area and day;
    then folds the tally rows of the days before yesterday into ``FOLD_DAY``.
    With ``dry_run`` nothing changes and the report says what would.
    """
    if older_than_days < 1:
        raise Refusal("invalid_input", "--older-than must be at least 1 day.")
    report = PruneReport(cutoff=utcnow() - timedelta(days=older_than_days), dry_run=dry_run)
    session.rollback()
    stop = first_id_from(session, Scan.id, Scan.at, report.cutoff)
    session.commit()
    scan = Scan.__table__
    changed_areas: set[int] = set()
    after = 0
    while True:
        window = select(Scan.id).where(Scan.id > after, Scan.id < stop).order_by(Scan.id).limit(BATCH_ROWS).subquery()
        last = session.scalar(select(func.max(window.c.id)))
        if last is None:
            break
        batch = (Scan.id > after, Scan.id <= last, Scan.at < report.cutoff)
        old = session.scalar(select(func.count()).select_from(scan).where(*batch))
        if dry_run:
            deleted = session.scalar(select(func.count()).select_from(scan).where(*batch, not_(_still_needed())))
        else:
            deleting = delete(scan).where(*batch, not_(_still_needed()))
            rows = session.execute(
                deleting.returning(scan.c.area_id, scan.c.at, scan.c.outcome, scan.c.user_id, scan.c.reason)
            ).all()
            deleted = len(rows)
            changed_areas |= _subtract(session, rows)
        session.commit()
        report.deleted += deleted
        report.kept += old - deleted
        after = last
    days = {"before": timeline.today() - timedelta(days=1), "fold_day": FOLD_DAY}
    report.folded = session.scalar(_with_days(FOLDED_ROWS), days)
    if not dry_run:
        session.execute(_with_days(FOLD_TALLY), days)
        session.execute(_with_days(DROP_FOLDED), days)
        record(
            session, user, "scans.prune", f"older than {older_than_days} days",
            after={"cutoff": report.cutoff, "deleted": report.deleted, "kept": report.kept, "folded": report.folded},
        )  # fmt: skip
    session.commit()
    figures.announce(None, sorted(changed_areas))
    return report


def _subtract(session, rows) -> set[int]:
    """Take deleted scan rows off the tally of their area and local day and hour; returns the areas changed.

    The hours' first and last scans are recounted from the rows left.
    """
    counts: Counter = Counter()
    hours: dict[tuple, list[int]] = {}
    for area_id, at, outcome, user_id, reason in rows:
        counts[(area_id or 0, timeline.local_day(at), outcome)] += 1
        key = (timeline.hour_start(at), area_id or 0, user_id or 0, reason if outcome == "rejected" else "")
        hours.setdefault(key, [0, 0, None, None])[0] -= 1
    for area_id, day in {(area_id, day) for area_id, day, _ in counts}:
        session.execute(
            _with_days(SUBTRACT_SCANS),
            {
                "area_id": area_id,
                "day": day,
                "scans_ok": -counts[(area_id, day, "ok")],
                "scans_rejected": -counts[(area_id, day, "rejected")],
            },
        )
    add_hours(session.connection(), hours)
    if hours:
        touched = [hour for hour, *_ in hours]
        recount_hour_times(session, min(touched), max(touched) + timedelta(hours=1))
    return {area_id for area_id, _, _ in counts}
