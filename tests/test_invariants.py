"""The invariant checker: silent on data the domain wrote, loud on data corrupted behind its back."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text

from bagtrack import billing, scanning
from bagtrack.extensions import db
from bagtrack.invariants import find_violations
from bagtrack.models import Bag, Scan, User


def corrupt(sql: str, **params) -> None:
    db.session.execute(text(sql), params)
    db.session.commit()


def child_qrs(parent: Bag) -> list[str]:
    return list(db.session.scalars(text("SELECT qr FROM bag WHERE parent_id = :id ORDER BY id"), {"id": parent.id}))


@pytest.fixture
def floor(make_parent, make_bill, make_user):
    """A full parent loaded on a closed bill, a partly filled parent, an empty one, in two areas."""
    full = make_parent("SB00001", children=30)
    partial = make_parent("SB00002", children=3)
    make_parent("SB00003", area="SOUTH")
    bill = make_bill("B-100", capacity=5)
    factory = db.session.query(User).filter_by(username="factory").one()
    billing.load_parent(db.session, factory, bill.bill_no, full.qr, confirmed=True)
    billing.close_bill(db.session, factory, bill.bill_no)
    return {"full": full, "partial": partial, "bill": bill, "factory": factory}


def test_domain_written_data_has_no_violations(floor, make_user):
    worker = make_user("worker", "dispatcher", "NORTH")
    partial = floor["partial"]
    scanning.scan_child(db.session, worker, partial.qr, "LOOSE0001")
    scanning.undo_last(db.session, worker, partial.qr)
    other = scanning.scan_parent(db.session, worker, "SB00004").parent
    scanning.scan_child(db.session, worker, other.qr, "LOOSE0001")
    scanning.scan_child(db.session, worker, other.qr, "LOOSE0001")
    scanning.close_parent(db.session, floor["factory"], other.qr)

    assert find_violations(db.session) == []


def test_empty_database_has_no_violations(app):
    assert find_violations(db.session) == []


def test_wrong_child_count_is_reported(floor):
    corrupt("UPDATE bag SET child_count = 2 WHERE qr = 'SB00002'")

    assert "Parent SB00002 has child_count 2 but holds 3 children." in find_violations(db.session)


def test_parent_over_capacity_is_reported(floor):
    stray = child_qrs(floor["partial"])[0]
    corrupt("UPDATE bag SET parent_id = :full WHERE qr = :qr", full=floor["full"].id, qr=stray)

    violations = find_violations(db.session)

    assert "Parent SB00001 is over capacity: 31 children, capacity 30." in violations
    assert "Parent SB00001 has child_count 30 but holds 31 children." in violations
    assert "Parent SB00002 has child_count 3 but holds 2 children." in violations
    assert f"Child {stray} is in parent SB00001, but its latest accepted scan is not into it." in violations


def test_missing_scan_row_is_reported(floor):
    child = child_qrs(floor["partial"])[1]
    corrupt("DELETE FROM scan WHERE qr = :qr", qr=child)

    violations = find_violations(db.session)

    assert violations[0] == f"Child {child} is in parent SB00002, but its latest accepted scan is not into it."
    # The deleted row was an accepted scan, so the dashboard now counts one too many.
    assert violations[1:3] == [
        "Dashboard (all areas) shows 37 accepted scans but the rows count 36.",
        "Dashboard (area NORTH) shows 36 accepted scans but the rows count 35.",
    ]
    # So does the hour of the operator who scanned it.
    assert len(violations) == 4
    assert violations[3].startswith("Hourly tally of ")
    assert violations[3].endswith(", area NORTH, user factory, accepted scans: 36 but the scan log holds 35.")


def test_wrong_first_or_last_scan_of_an_hour_is_reported(floor):
    factory = floor["factory"]
    first, last = db.session.execute(
        select(func.min(Scan.at), func.max(Scan.at)).where(
            Scan.user_id == factory.id, Scan.area_id == floor["full"].area_id, Scan.outcome == "ok"
        )
    ).one()
    corrupt(
        "UPDATE tally_hour SET last_at = first_at WHERE user_id = :user AND area_id = :area AND reason = ''",
        user=factory.id,
        area=floor["full"].area_id,
    )

    violations = find_violations(db.session)

    assert len(violations) == 1
    assert violations[0].startswith("Hourly tally of ")
    assert violations[0].endswith(
        f", area NORTH, user factory, accepted scans: first and last scan {first:%Y-%m-%d %H:%M:%S.%f}"
        f" and {first:%Y-%m-%d %H:%M:%S.%f} but the scan log's are {first:%Y-%m-%d %H:%M:%S.%f}"
        f" and {last:%Y-%m-%d %H:%M:%S.%f}."
    )


def test_bill_counts_and_empty_closed_bill_are_reported(floor):
    corrupt("UPDATE bag SET bill_id = NULL WHERE qr = 'SB00001'")

    violations = find_violations(db.session)

    assert "Bill B-100 has parent_count 1 / child_count 30 but carries 0 parents with 0 children." in violations
    assert "Bill B-100 is closed but empty." in violations
    assert "Dashboard (all areas) shows 1 billed parents but the rows count 0." in violations


def test_child_inside_a_child_is_reported(floor):
    first, second = child_qrs(floor["partial"])[:2]
    corrupt(
        "UPDATE bag SET parent_id = (SELECT id FROM bag WHERE qr = :holder) WHERE qr = :qr", holder=first, qr=second
    )

    assert f"Child {second} is inside child {first}." in find_violations(db.session)


def test_tally_drift_is_reported_for_all_areas_and_the_area(floor, make_area):
    south = make_area("SOUTH")
    corrupt("UPDATE tally SET parents = parents + 2 WHERE area_id = :area", area=south.id)

    violations = find_violations(db.session)

    assert "Dashboard (all areas) shows 5 parents but the rows count 3." in violations
    assert "Dashboard (area SOUTH) shows 3 parents but the rows count 1." in violations


def test_accepted_scan_count_drift_is_reported(floor):
    corrupt("DELETE FROM scan WHERE kind = 'parent' AND qr = 'SB00003'")

    assert "Dashboard (area SOUTH) shows 1 accepted scans but the rows count 0." in find_violations(db.session)


def test_many_violations_are_listed_up_to_a_limit(floor):
    corrupt("DELETE FROM scan WHERE kind = 'child'")

    violations = find_violations(db.session)
    unlogged = [line for line in violations if "latest accepted scan" in line]

    assert len(unlogged) == 10
    assert "... and more linked children without their scan (only the first 10 are listed)." in violations
