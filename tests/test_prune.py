"""``flask prune``: old scan-log rows go, the rows that explain packed children stay, the dashboard stays exact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text, update

from bagtrack import floor, pruning, scanning, stats, timeline
from bagtrack.errors import Refusal
from bagtrack.extensions import db
from bagtrack.invariants import find_violations
from bagtrack.models import AuditEntry, Bag, Scan, Tally, TallyHour


def count(model, *conditions) -> int:
    return db.session.scalar(select(func.count()).select_from(model).where(*conditions))


def old_floor(make_parent, make_user):
    """A parent filled 40 days ago (with a double-fired scan, a refusal and an undo), and one filled today."""
    worker = make_user("worker", role="dispatcher", area="NORTH")
    parent = make_parent("SB00001", user=worker)
    for qr in ("C0000001", "C0000002", "C0000003"):
        scanning.scan_child(db.session, worker, "SB00001", qr)
    scanning.undo_last(db.session, worker, "SB00001")  # C0000003 is loose again
    scanning.scan_child(db.session, worker, "SB00001", "C0000002")  # double-fired: a duplicate
    with pytest.raises(Refusal):
        scanning.scan_child(db.session, worker, "SB00001", "SB00002")  # refused: wrong_kind
    # Moved 40 days back, a second apart, within one hour.
    long_ago = timeline.hour_start(datetime.now(UTC).replace(tzinfo=None) - timedelta(days=40)) + timedelta(minutes=10)
    for index, scan_id in enumerate(db.session.scalars(select(Scan.id).order_by(Scan.id)).all()):
        db.session.execute(update(Scan).where(Scan.id == scan_id).values(at=long_ago + timedelta(seconds=index)))
    db.session.execute(update(Tally).values(day=long_ago.date()))
    db.session.execute(update(TallyHour).values(hour=timeline.hour_start(long_ago)))
    db.session.execute(text(SCAN_TIMES))
    db.session.commit()
    assert find_violations(db.session) == []
    make_parent("SB00003", user=worker, children=1)
    return parent


# Each per-hour tally row's first and last scan, recounted from the log (all of it in one hour).
SCAN_TIMES = """
UPDATE tally_hour SET
    first_at = (SELECT min(at) FROM scan WHERE {rows}),
    last_at = (SELECT max(at) FROM scan WHERE {rows})
""".format(
    rows="coalesce(scan.user_id, 0) = tally_hour.user_id AND coalesce(scan.area_id, 0) = tally_hour.area_id"
    " AND CASE WHEN scan.outcome = 'ok' THEN '' ELSE scan.reason END = tally_hour.reason"
)


def figures() -> dict:
    shown = stats.tally_figures(db.session, None)
    shown.pop("generated_at")
    return shown


def test_prune_deletes_old_rows_but_keeps_how_children_got_in(runner, make_parent, make_user):
    parent = old_floor(make_parent, make_user)
    before = figures()
    kept_child_scans = [
        db.session.scalar(select(func.max(Scan.id)).where(Scan.qr == qr, Scan.kind == "child", Scan.outcome == "ok"))
        for qr in ("C0000001", "C0000002")
    ]
    old_rows = count(Scan, Scan.at < datetime.now(UTC).replace(tzinfo=None) - timedelta(days=30))

    result = runner.invoke(args=["prune", "--older-than", "30"])

    assert result.exit_code == 0, result.output
    assert f"Deleted {old_rows - 2} scan rows made before" in result.output
    assert "kept 2 that record how packed children got into their parents" in result.output
    db.session.rollback()
    old = db.session.scalars(select(Scan.id).where(Scan.parent_id == parent.id).order_by(Scan.id)).all()
    assert old == kept_child_scans
    assert count(Scan, Scan.qr == "SB00003") == 1 and count(Scan, Scan.qr == "C0000003") == 0
    assert find_violations(db.session) == []
    after = figures()
    assert after["scans"]["total"] == count(Scan, Scan.outcome == "ok") < before["scans"]["total"]
    before["scans"]["total"] = after["scans"]["total"]
    assert after == before
    # The old days' tally is folded into one row per area and shard.
    days = db.session.scalars(select(Tally.day).distinct()).all()
    assert sorted(days) == [pruning.FOLD_DAY, datetime.now(UTC).date()]
    entry = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "scans.prune")).one()
    assert entry.actor == "cli" and entry.target == "older than 30 days"


def test_prune_works_in_batches(runner, make_parent, make_user, monkeypatch):
    old_floor(make_parent, make_user)
    monkeypatch.setattr(pruning, "BATCH_ROWS", 2)
    long_ago = db.session.scalar(select(func.min(Scan.at)))

    report = pruning.prune(db.session, older_than_days=30)

    assert (report.deleted, report.kept) == (5, 2)
    assert count(Scan, Scan.qr == "SB00001") == 0
    assert find_violations(db.session) == []
    # The old day's report: its first and last scans are those of the rows left.
    (worker,) = floor.operators_report(db.session, timeline.local_day(long_ago), None)
    left = select(func.min(Scan.at), func.max(Scan.at)).where(Scan.at < long_ago + timedelta(hours=1))
    assert (worker["first_at"], worker["last_at"]) == tuple(db.session.execute(left).one())
    assert worker["first_at"] > long_ago and worker["accepted"] == 2


def test_prune_dry_run_changes_nothing(runner, make_parent, make_user):
    old_floor(make_parent, make_user)
    scans, tallies = count(Scan), count(Tally)

    result = runner.invoke(args=["prune", "--older-than", "30", "--dry-run"])

    assert result.exit_code == 0, result.output
    assert "Dry run: would delete 5 scan rows" in result.output and "keep 2 that" in result.output
    db.session.rollback()
    assert (count(Scan), count(Tally)) == (scans, tallies)
    assert count(AuditEntry, AuditEntry.action == "scans.prune") == 0


def test_prune_keeps_recent_rows_and_refuses_less_than_a_day(runner, make_parent, make_user):
    make_parent("SB00001", children=2)
    scans = count(Scan)

    nothing = runner.invoke(args=["prune", "--older-than", "1"])
    refused = runner.invoke(args=["prune", "--older-than", "0"])

    assert nothing.exit_code == 0 and "Deleted 0 scan rows" in nothing.output
    assert refused.exit_code == 1 and refused.output == "Error: --older-than must be at least 1 day.\n"
    db.session.rollback()
    assert count(Scan) == scans
    assert find_violations(db.session) == []
    assert count(Bag) == 3
