"""The rules of scanning, called directly: parents, children, undo, close short."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from helpers import refused
from sqlalchemy import func, select, text, update

from bagtrack import billing, scanning, stats
from bagtrack.extensions import db
from bagtrack.models import AuditEntry, Bag, Bill, Scan, TallyHour, utcnow


def fresh_bag(qr: str) -> Bag:
    db.session.expire_all()
    return db.session.scalars(select(Bag).where(Bag.qr == qr)).one()


def last_scan() -> Scan:
    db.session.expire_all()
    return db.session.scalars(select(Scan).order_by(Scan.id.desc()).limit(1)).one()


def scan_count() -> int:
    return db.session.scalar(select(func.count()).select_from(Scan))


def insert_bag(qr: str, kind: str, area_id: int) -> None:
    """A row made by an import under other code patterns: its kind is not what its format says."""
    shape = {"parent": ("open", 30), "child": ("loose", 0)}[kind]
    db.session.execute(
        text(
            "insert into bag (qr, kind, status, area_id, child_count, capacity, created_at)"
            " values (:qr, :kind, :status, :area_id, 0, :capacity, :at)"
        ),
        {"qr": qr, "kind": kind, "status": shape[0], "area_id": area_id, "capacity": shape[1], "at": utcnow()},
    )
    db.session.commit()


def recount_figures(session) -> dict:
    """The dashboard figures counted from the bags, bills and scan log themselves."""

    def count(sql: str, **params) -> int:
        return int(session.scalar(text(sql), params))

    today = datetime.now(UTC).date()
    return {
        "bags": {
            "parents": count("select count(*) from bag where kind = 'parent'"),
            "children": count("select count(*) from bag where kind = 'child'"),
        },
        "parents": {
            "open": count("select count(*) from bag where kind = 'parent' and status = 'open'"),
            "complete": count("select count(*) from bag where kind = 'parent' and status = 'complete'"),
            "billed": count("select count(*) from bag where kind = 'parent' and bill_id is not null"),
        },
        "bills": {
            "open": count("select count(*) from bill where status = 'open'"),
            "closed": count("select count(*) from bill where status = 'closed'"),
        },
        "scans": {
            "total": count("select count(*) from scan where outcome = 'ok'"),
            "today": count(
                "select count(*) from scan where outcome = 'ok' and at >= :start",
                start=datetime(today.year, today.month, today.day),
            ),
        },
    }


def counter_mismatches(session) -> list[str]:
    """Parents and bills whose kept counters differ from a recount (empty when all agree)."""
    problems = []
    parents = session.execute(
        text(
            "select p.qr, p.child_count, p.capacity, p.status,"
            " (select count(*) from bag c where c.parent_id = p.id) as recount"
            " from bag p where p.kind = 'parent'"
        )
    )
    for qr, child_count, capacity, status, recount in parents:
        if child_count != recount or recount > capacity:
            problems.append(f"parent {qr}: child_count {child_count}, recount {recount}, capacity {capacity}")
        if recount == capacity and status != "complete":
            problems.append(f"parent {qr} is full but {status}")
    bills = session.execute(
        text(
            "select b.bill_no, b.parent_count, b.child_count, b.capacity,"
            " (select count(*) from bag p where p.bill_id = b.id) as parents,"
            " (select coalesce(sum(p.child_count), 0) from bag p where p.bill_id = b.id) as children"
            " from bill b"
        )
    )
    for bill_no, parent_count, child_count, capacity, parents_recount, children_recount in bills:
        if (parent_count, child_count) != (parents_recount, children_recount) or parents_recount > capacity:
            problems.append(
                f"bill {bill_no}: counters {parent_count}/{child_count}, recount {parents_recount}/{children_recount}"
            )
    return problems


def figures_without_time(figures: dict) -> dict:
    return {key: value for key, value in figures.items() if key != "generated_at"}


@pytest.fixture
def operator(make_user):
    return make_user("op1", "dispatcher", "NORTH")


# --- Scan parent ----------------------------------------------------------------------------------


def test_unknown_parent_is_created_in_the_dispatchers_area(operator):
    result = scanning.scan_parent(db.session, operator, " sb00001\r\n", "SOUTH")
    assert result.created is True
    parent = fresh_bag("SB00001")
    assert (parent.kind, parent.status, parent.child_count, parent.capacity) == ("parent", "open", 0, 30)
    assert parent.area.code == "NORTH"
    assert parent.created_by_id == operator.id
    scan = last_scan()
    assert (scan.kind, scan.outcome, scan.reason, scan.qr) == ("parent", "ok", None, "SB00001")
    assert (scan.bag_id, scan.parent_id, scan.user_id, scan.area_id) == (
        parent.id,
        parent.id,
        operator.id,
        parent.area_id,
    )


def test_known_parent_is_resumed(operator):
    scanning.scan_parent(db.session, operator, "SB00001")
    result = scanning.scan_parent(db.session, operator, "SB00001")
    assert result.created is False
    assert db.session.scalar(select(func.count()).select_from(Bag)) == 1
    assert [scan.outcome for scan in db.session.scalars(select(Scan))] == ["ok", "ok"]


def test_a_resumed_parent_is_logged_counted_and_answered_with_its_children_in_order(operator, biller, make_bill):
    """On PostgreSQL this is one statement; what it writes and answers is the same on both databases."""
    scanning.scan_parent(db.session, operator, "SB00001")
    for child in ("C0003", "C0001", "C0002"):
        scanning.scan_child(db.session, operator, "SB00001", child)
    bill = make_bill("B-7")
    billing.load_parent(db.session, biller, "B-7", "SB00001", confirmed=True)
    parent = fresh_bag("SB00001")
    scans_before = stats.tally_figures(db.session, None)["scans"]["total"]
    hour_scans = select(func.sum(TallyHour.scans)).where(TallyHour.user_id == biller.id, TallyHour.reason == "")
    biller_before = db.session.scalar(hour_scans) or 0

    result = scanning.scan_parent(db.session, biller, "sb00001")

    assert result.created is False
    assert result.children == ["C0003", "C0001", "C0002"]  # the order they went in, not the codes'
    shown = result.parent
    assert (shown.qr, shown.status, shown.child_count, shown.capacity) == ("SB00001", "open", 3, 30)
    assert (shown.area.code, shown.bill_id) == ("NORTH", bill.id)
    scan = last_scan()
    assert (scan.kind, scan.outcome, scan.reason, scan.qr) == ("parent", "ok", None, "SB00001")
    assert (scan.bag_id, scan.parent_id, scan.bill_id, scan.user_id, scan.area_id) == (
        parent.id,
        parent.id,
        bill.id,
        biller.id,
        parent.area_id,
    )
    assert stats.tally_figures(db.session, None)["scans"]["total"] == scans_before + 1
    assert db.session.scalar(hour_scans) == biller_before + 1


def test_biller_names_the_area_of_a_new_parent(biller, make_area):
    make_area("SOUTH")
    refusal = refused(scanning.scan_parent, biller, "SB00001", None)
    assert (refusal.code, refusal.status) == ("invalid_input", 400)
    assert refusal.message == "Choose the area for this new parent bag."
    refusal = refused(scanning.scan_parent, biller, "SB00001", "WEST")
    assert refusal.code == "invalid_input"
    assert refusal.message == "There is no dispatch area WEST."
    assert scanning.scan_parent(db.session, biller, "SB00001", " south ").created is True
    assert fresh_bag("SB00001").area.code == "SOUTH"
    # Resuming a known parent needs no area.
    assert scanning.scan_parent(db.session, biller, "SB00001", None).created is False


def test_parent_scan_of_a_child_code_is_wrong_kind(operator):
    refusal = refused(scanning.scan_parent, operator, "ABC123")
    assert (refusal.code, refusal.status) == ("wrong_kind", 409)
    assert refusal.message == "ABC123 is a child bag code; a parent bag is needed here."


def test_parent_scan_of_a_row_that_is_a_child_is_wrong_kind(operator):
    insert_bag("SB99999", "child", operator.area_id)
    refusal = refused(scanning.scan_parent, operator, "SB99999")
    assert refusal.code == "wrong_kind"
    assert refusal.message == "SB99999 is a child bag, not a parent bag."


def test_parent_scan_of_an_invalid_code_is_invalid_qr(operator):
    refusal = refused(scanning.scan_parent, operator, "SB-1")
    assert (refusal.code, refusal.status) == ("invalid_qr", 400)
    assert refusal.message.startswith("This is not a bag code: SB-1. A parent bag code looks like SB00001")


def test_dispatcher_cannot_resume_a_parent_of_another_area(operator, make_parent):
    make_parent("SB00002", area="SOUTH")
    refusal = refused(scanning.scan_parent, operator, "SB00002")
    assert (refusal.code, refusal.status) == ("parent_not_found", 404)
    assert refusal.message == "Parent bag SB00002 was not found."
    scan = last_scan()
    # The log keeps no trace of the other area's parent.
    assert (scan.outcome, scan.reason, scan.parent_id, scan.area_id) == (
        "rejected",
        "parent_not_found",
        None,
        operator.area_id,
    )


# --- Scan child -----------------------------------------------------------------------------------


def test_unknown_child_is_created_and_linked(operator):
    scanning.scan_parent(db.session, operator, "SB00001")
    result = scanning.scan_child(db.session, operator, "sb00001", " c0001\r\n")
    assert (result.created, result.duplicate) == (True, False)
    assert result.parent.child_count == 1
    child, parent = fresh_bag("C0001"), fresh_bag("SB00001")
    assert (child.kind, child.status, child.parent_id, child.area_id) == ("child", "packed", parent.id, parent.area_id)
    assert child.linked_by_id == operator.id and child.linked_at is not None
    assert (parent.child_count, parent.status) == (1, "open")
    scan = last_scan()
    assert (scan.kind, scan.outcome, scan.reason, scan.qr) == ("child", "ok", None, "C0001")
    assert (scan.bag_id, scan.parent_id, scan.user_id, scan.area_id) == (
        child.id,
        parent.id,
        operator.id,
        parent.area_id,
    )


def test_loose_child_is_linked_without_being_created(operator):
    scanning.scan_parent(db.session, operator, "SB00001")
    scanning.scan_child(db.session, operator, "SB00001", "C0001")
    scanning.undo_last(db.session, operator, "SB00001")
    result = scanning.scan_child(db.session, operator, "SB00001", "C0001")
    assert (result.created, result.duplicate) == (False, False)
    assert fresh_bag("C0001").status == "packed"
    assert stats.tally_figures(db.session, None)["bags"]["children"] == 1


def test_thirtieth_child_completes_the_parent_in_its_own_transaction(operator, make_parent):
    make_parent("SB00001", children=29)
    result = scanning.scan_child(db.session, operator, "SB00001", "C0030")
    assert result.parent.status == "complete" and result.parent.child_count == 30
    parent = fresh_bag("SB00001")
    assert (parent.status, parent.child_count) == ("complete", 30)
    # One accepted scan for the 30th child, and the tally counted the completion with it.
    assert last_scan().qr == "C0030"
    assert stats.tally_figures(db.session, None)["parents"] == {"open": 0, "complete": 1, "billed": 0}


def test_full_parent_refuses_a_new_child(operator, make_parent):
    make_parent("SB00001", children=30)
    refusal = refused(scanning.scan_child, operator, "SB00001", "C9999")
    assert (refusal.code, refusal.status) == ("parent_full", 409)
    assert refusal.message == "Parent bag SB00001 is complete (30/30)."
    assert fresh_bag("SB00001").child_count == 30
    assert db.session.scalar(select(Bag.id).where(Bag.qr == "C9999")) is None


def test_parent_closed_short_refuses_a_new_child(operator, biller, make_parent):
    make_parent("SB00001", children=3)
    scanning.close_parent(db.session, biller, "SB00001")
    refusal = refused(scanning.scan_child, operator, "SB00001", "C9999")
    assert refusal.code == "parent_full"
    assert refusal.message == "Parent bag SB00001 is complete (3/30)."


def test_capacity_comes_from_the_setting(app, operator):
    app.config["BAGTRACK_PARENT_CAPACITY"] = 3
    scanning.scan_parent(db.session, operator, "SB00001")
    for number in range(3):
        result = scanning.scan_child(db.session, operator, "SB00001", f"C000{number}")
    assert (result.parent.capacity, result.parent.child_count, result.parent.status) == (3, 3, "complete")
    refusal = refused(scanning.scan_child, operator, "SB00001", "C0009")
    assert refusal.message == "Parent bag SB00001 is complete (3/3)."


def test_duplicate_child_scan_changes_nothing(operator):
    scanning.scan_parent(db.session, operator, "SB00001")
    scanning.scan_child(db.session, operator, "SB00001", "C0001")
    result = scanning.scan_child(db.session, operator, "SB00001", "c0001\n")
    assert (result.duplicate, result.created) == (True, False)
    assert fresh_bag("SB00001").child_count == 1
    scan = last_scan()
    assert (scan.kind, scan.outcome, scan.reason) == ("child", "ok", "duplicate")


def test_duplicate_on_a_full_parent_is_a_success(operator, make_parent):
    parent = make_parent("SB00001", children=30)
    child_qr = db.session.scalar(select(Bag.qr).where(Bag.parent_id == parent.id).limit(1))
    result = scanning.scan_child(db.session, operator, "SB00001", child_qr)
    assert result.duplicate is True
    assert (fresh_bag("SB00001").child_count, fresh_bag("SB00001").status) == (30, "complete")


def test_duplicate_on_a_billed_parent_is_a_success(operator, biller, make_parent, make_bill):
    make_parent("SB00001", children=2)
    scanning.scan_child(db.session, operator, "SB00001", "C0001")
    make_bill("B-1")
    billing.load_parent(db.session, biller, "B-1", "SB00001", confirmed=True)
    result = scanning.scan_child(db.session, operator, "SB00001", "C0001")
    assert result.duplicate is True
    assert fresh_bag("SB00001").child_count == 3


def test_billed_parent_refuses_new_children(operator, biller, make_parent, make_bill):
    make_parent("SB00001", children=2)
    make_bill("B-1")
    billing.load_parent(db.session, biller, "B-1", "SB00001", confirmed=True)
    refusal = refused(scanning.scan_child, operator, "SB00001", "C0001")
    assert (refusal.code, refusal.status) == ("parent_on_bill", 409)
    assert refusal.message == "Parent bag SB00001 is loaded on a bill; its contents cannot change."
    assert db.session.scalar(select(Bag.id).where(Bag.qr == "C0001")) is None


def test_child_in_another_parent_of_the_same_area_names_it(operator):
    for parent_qr in ("SB00001", "SB00002"):
        scanning.scan_parent(db.session, operator, parent_qr)
    scanning.scan_child(db.session, operator, "SB00001", "C0001")
    refusal = refused(scanning.scan_child, operator, "SB00002", "C0001")
    assert (refusal.code, refusal.status) == ("child_in_other_parent", 409)
    assert refusal.message == "Child bag C0001 is already in parent bag SB00001."
    assert fresh_bag("C0001").parent_id == fresh_bag("SB00001").id
    assert fresh_bag("SB00002").child_count == 0


def area_children(code: str) -> int:
    return stats.tally_figures(db.session, db.session.scalar(text("select id from dispatch_area where code = :c"),
                                                                  {"c": code}))["bags"]["children"]  # fmt: skip


def test_a_dispatcher_cannot_take_another_areas_loose_child(operator, make_user, runner):
    south = make_user("south-worker", area="SOUTH")
    scanning.scan_parent(db.session, south, "SB00009")
    scanning.scan_child(db.session, south, "SB00009", "C0001")
    scanning.undo_last(db.session, south, "SB00009")
    scanning.scan_parent(db.session, operator, "SB00001")

    refusal = refused(scanning.scan_child, operator, "SB00001", "C0001")

    assert (refusal.code, refusal.status) == ("not_found", 404)
    assert refusal.message == "Child bag C0001 was not found in your dispatch area."
    child = fresh_bag("C0001")
    assert (child.status, child.parent_id, child.area.code) == ("loose", None, "SOUTH")
    assert fresh_bag("SB00001").child_count == 0
    # The refusal is logged in the dispatcher's own area, where the scan happened.
    assert (last_scan().reason, last_scan().area_id) == ("not_found", operator.area_id)
    # Its own area still has it.
    assert scanning.scan_child(db.session, south, "SB00009", "C0001").duplicate is False
    assert (area_children("NORTH"), area_children("SOUTH")) == (0, 1)
    checked = runner.invoke(args=["check", "--invariants"])
    assert checked.exit_code == 0 and "OK    invariants: all hold" in checked.output, checked.output


def test_a_biller_moving_a_loose_child_to_another_area_moves_its_tally(operator, biller, make_user, runner):
    south = make_user("south-worker", area="SOUTH")
    scanning.scan_parent(db.session, south, "SB00009")
    for child in ("C0001", "C0002"):
        scanning.scan_child(db.session, south, "SB00009", child)
    scanning.undo_last(db.session, south, "SB00009")
    scanning.scan_parent(db.session, operator, "SB00001")
    assert (area_children("NORTH"), area_children("SOUTH")) == (0, 2)

    moved = scanning.scan_child(db.session, biller, "SB00001", "C0002")

    assert (moved.created, moved.duplicate) == (False, False)
    child = fresh_bag("C0002")
    assert (child.status, child.parent_id, child.area.code) == ("packed", fresh_bag("SB00001").id, "NORTH")
    assert (area_children("NORTH"), area_children("SOUTH")) == (1, 1)
    assert stats.tally_figures(db.session, None)["bags"]["children"] == 2
    checked = runner.invoke(args=["check", "--invariants"])
    assert checked.exit_code == 0 and "OK    invariants: all hold" in checked.output, checked.output


def test_child_in_a_parent_of_another_area_is_not_named_to_a_dispatcher(operator, biller, make_parent):
    south = make_parent("SB00009", area="SOUTH")
    scanning.scan_child(db.session, biller, "SB00009", "C0001")
    scanning.scan_parent(db.session, operator, "SB00001")
    refusal = refused(scanning.scan_child, operator, "SB00001", "C0001")
    assert refusal.code == "child_in_other_parent"
    assert refusal.message == "Child bag C0001 is already packed in another area."
    assert south.qr not in refusal.message
    # A biller sees every area, so the parent is named.
    scanning.scan_parent(db.session, biller, "SB00001")
    assert refused(scanning.scan_child, biller, "SB00001", "C0001").message == (
        "Child bag C0001 is already in parent bag SB00009."
    )


def test_dispatcher_cannot_scan_into_a_parent_of_another_area(operator, make_parent):
    make_parent("SB00009", area="SOUTH")
    refusal = refused(scanning.scan_child, operator, "SB00009", "C0001")
    assert (refusal.code, refusal.status) == ("parent_not_found", 404)
    assert refusal.message == "Parent bag SB00009 was not found."
    assert db.session.scalar(select(Bag.id).where(Bag.qr == "C0001")) is None


def test_unknown_parent_is_not_created_by_a_child_scan(operator):
    refusal = refused(scanning.scan_child, operator, "SB00001", "C0001")
    assert refusal.code == "parent_not_found"
    assert db.session.scalar(select(func.count()).select_from(Bag)) == 0


def test_child_takes_its_parents_area(biller, make_parent, make_area):
    make_area("NORTH")
    make_parent("SB00001", area="NORTH")
    make_parent("SB00009", area="SOUTH")
    scanning.scan_child(db.session, biller, "SB00009", "C0001")
    assert fresh_bag("C0001").area.code == "SOUTH"
    # A loose child made in the north moves to the south parent's area when packed there.
    scanning.scan_child(db.session, biller, "SB00001", "C0002")
    scanning.undo_last(db.session, biller, "SB00001")
    assert fresh_bag("C0002").area.code == "NORTH"
    scanning.scan_child(db.session, biller, "SB00009", "C0002")
    assert fresh_bag("C0002").area.code == "SOUTH"


def test_child_scan_codes_are_checked_for_kind(operator):
    scanning.scan_parent(db.session, operator, "SB00001")
    refusal = refused(scanning.scan_child, operator, "C0001", "C0002")
    assert refusal.code == "wrong_kind"
    assert refusal.message == "C0001 is a child bag code; a parent bag is needed here."
    refusal = refused(scanning.scan_child, operator, "SB00001", "SB00002")
    assert refusal.code == "wrong_kind"
    assert refusal.message == "SB00002 is a parent bag code; a child bag is needed here."
    insert_bag("ABCD1", "parent", operator.area_id)
    refusal = refused(scanning.scan_child, operator, "SB00001", "ABCD1")
    assert refusal.code == "wrong_kind"
    assert refusal.message == "ABCD1 is a parent bag, not a child bag."


@pytest.mark.parametrize(
    ("parent_qr", "child_qr", "code", "qr_in_message"),
    [
        ("SB-1", "??", "invalid_qr", "SB-1"),  # the parent code is checked first
        ("SB00001", "??", "invalid_qr", "??"),
        ("SB77777", "SB00002", "wrong_kind", "SB00002"),  # either code before parent_not_found
        ("SB77777", "C0001", "parent_not_found", "SB77777"),
    ],
)
def test_child_scan_checks_codes_then_the_parent(operator, parent_qr, child_qr, code, qr_in_message):
    scanning.scan_parent(db.session, operator, "SB00001")
    refusal = refused(scanning.scan_child, operator, parent_qr, child_qr)
    assert refusal.code == code
    assert qr_in_message in refusal.message


def test_child_scan_check_order_on_a_billed_full_parent(operator, biller, make_parent, make_bill):
    """duplicate, then parent_on_bill, then child_in_other_parent, then parent_full."""
    full = make_parent("SB00001", children=30, user=biller)
    make_parent("SB00002", children=1, user=biller)
    in_other = db.session.scalar(select(Bag.qr).where(Bag.parent_id == fresh_bag("SB00002").id))
    inside = db.session.scalar(select(Bag.qr).where(Bag.parent_id == full.id).limit(1))
    # Full and not billed: a child of another parent is named before "full".
    assert refused(scanning.scan_child, operator, "SB00001", in_other).code == "child_in_other_parent"
    assert refused(scanning.scan_child, operator, "SB00001", "NEW0001").code == "parent_full"
    make_bill("B-1")
    billing.load_parent(db.session, biller, "B-1", "SB00001", confirmed=True)
    # Billed and full: duplicate first, then parent_on_bill for everything else.
    assert scanning.scan_child(db.session, operator, "SB00001", inside).duplicate is True
    assert refused(scanning.scan_child, operator, "SB00001", in_other).code == "parent_on_bill"
    assert refused(scanning.scan_child, operator, "SB00001", "NEW0001").code == "parent_on_bill"


# --- Undo -----------------------------------------------------------------------------------------


def test_undo_unlinks_the_users_most_recent_child(operator):
    scanning.scan_parent(db.session, operator, "SB00001")
    scanning.scan_child(db.session, operator, "SB00001", "C0001")
    scanning.scan_child(db.session, operator, "SB00001", "C0002")
    result = scanning.undo_last(db.session, operator, "sb00001\r")
    assert result.child.qr == "C0002"
    child, parent = fresh_bag("C0002"), fresh_bag("SB00001")
    assert (child.status, child.parent_id, child.linked_by_id, child.linked_at) == ("loose", None, None, None)
    assert parent.child_count == 1
    assert fresh_bag("C0001").status == "packed"
    scan = last_scan()
    assert (scan.kind, scan.outcome, scan.qr, scan.bag_id, scan.parent_id) == (
        "undo",
        "ok",
        "C0002",
        child.id,
        parent.id,
    )
    assert scanning.undo_last(db.session, operator, "SB00001").child.qr == "C0001"


def test_undo_reopens_a_complete_parent(operator, make_parent):
    make_parent("SB00001", children=29)
    scanning.scan_child(db.session, operator, "SB00001", "C0030")
    scanning.undo_last(db.session, operator, "SB00001")
    parent = fresh_bag("SB00001")
    assert (parent.status, parent.child_count) == ("open", 29)
    assert stats.tally_figures(db.session, None)["parents"] == {"open": 1, "complete": 0, "billed": 0}


def test_undo_by_another_user_is_refused(operator, make_user):
    colleague = make_user("op2", "dispatcher", "NORTH")
    scanning.scan_parent(db.session, operator, "SB00001")
    scanning.scan_child(db.session, operator, "SB00001", "C0001")
    refusal = refused(scanning.undo_last, colleague, "SB00001")
    assert (refusal.code, refusal.status) == ("nothing_to_undo", 409)
    assert refusal.message == "You scanned no child into SB00001 in the last 600 seconds."
    assert fresh_bag("C0001").status == "packed"


def test_undo_window_comes_from_the_setting(app, operator):
    app.config["BAGTRACK_UNDO_WINDOW_S"] = 60
    scanning.scan_parent(db.session, operator, "SB00001")
    scanning.scan_child(db.session, operator, "SB00001", "C0001")
    db.session.execute(update(Bag).where(Bag.qr == "C0001").values(linked_at=utcnow() - timedelta(seconds=50)))
    db.session.commit()
    scanning.undo_last(db.session, operator, "SB00001")
    scanning.scan_child(db.session, operator, "SB00001", "C0001")
    db.session.execute(update(Bag).where(Bag.qr == "C0001").values(linked_at=utcnow() - timedelta(seconds=61)))
    db.session.commit()
    refusal = refused(scanning.undo_last, operator, "SB00001")
    assert refusal.code == "nothing_to_undo"
    assert refusal.message == "You scanned no child into SB00001 in the last 60 seconds."
    assert fresh_bag("C0001").status == "packed"


def test_undo_on_an_empty_parent_is_nothing_to_undo(operator):
    scanning.scan_parent(db.session, operator, "SB00001")
    assert refused(scanning.undo_last, operator, "SB00001").code == "nothing_to_undo"


def test_undo_on_a_billed_parent_is_refused(biller, make_area, make_bill):
    make_area("NORTH")
    scanning.scan_parent(db.session, biller, "SB00001", "NORTH")
    scanning.scan_child(db.session, biller, "SB00001", "C0001")
    make_bill("B-1")
    billing.load_parent(db.session, biller, "B-1", "SB00001", confirmed=True)
    refusal = refused(scanning.undo_last, biller, "SB00001")
    assert (refusal.code, refusal.status) == ("parent_on_bill", 409)
    assert fresh_bag("C0001").status == "packed"


def test_undo_in_another_area_is_parent_not_found(operator, make_parent):
    make_parent("SB00009", area="SOUTH", children=1)
    assert refused(scanning.undo_last, operator, "SB00009").code == "parent_not_found"


# --- Close short ----------------------------------------------------------------------------------


def test_close_short_completes_the_parent_and_is_audited(biller, make_parent):
    make_parent("SB00001", children=3)
    result = scanning.close_parent(db.session, biller, "SB00001")
    assert result.duplicate is False
    parent = fresh_bag("SB00001")
    assert (parent.status, parent.child_count) == ("complete", 3)
    scan = last_scan()
    assert (scan.kind, scan.outcome, scan.bag_id, scan.user_id) == ("close", "ok", parent.id, biller.id)
    entry = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "parent.close_short")).one()
    assert (entry.actor, entry.user_id, entry.target) == ("boss", biller.id, "SB00001")
    assert json.loads(entry.before) == {"status": "open", "child_count": 3}
    assert json.loads(entry.after) == {"status": "complete", "child_count": 3}


def test_closing_a_complete_parent_again_is_a_duplicate(biller, make_parent):
    make_parent("SB00001", children=3)
    scanning.close_parent(db.session, biller, "SB00001")
    scans = scan_count()
    assert scanning.close_parent(db.session, biller, "SB00001").duplicate is True
    assert scan_count() == scans
    assert (
        db.session.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "parent.close_short"))
        == 1
    )


def test_an_empty_parent_cannot_be_closed_short(biller, make_parent):
    make_parent("SB00001")
    refusal = refused(scanning.close_parent, biller, "SB00001")
    assert (refusal.code, refusal.status) == ("parent_empty", 409)
    assert refusal.message == "Parent bag SB00001 is empty; there is nothing to close."
    assert fresh_bag("SB00001").status == "open"


# --- Scan log and dashboard -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "args", "kind", "reason", "qr"),
    [
        ("scan_parent", ("??",), "parent", "invalid_qr", "??"),
        ("scan_parent", ("C0001",), "parent", "wrong_kind", "C0001"),
        ("scan_child", ("SB00001", "SB00002"), "child", "wrong_kind", "SB00002"),
        ("scan_child", ("SB77777", "C0001"), "child", "parent_not_found", "SB77777"),
        ("scan_child", ("SB00002", "C0001"), "child", "child_in_other_parent", "C0001"),
        ("scan_child", ("SB00003", "C0009"), "child", "parent_full", "C0009"),
        ("undo_last", ("SB00002",), "undo", "nothing_to_undo", "SB00002"),
        ("close_parent", ("SB00002",), "close", "parent_empty", "SB00002"),
    ],
)
def test_every_rejected_scan_is_logged_with_its_reason(app, biller, make_area, action, args, kind, reason, qr):
    app.config["BAGTRACK_PARENT_CAPACITY"] = 1
    make_area("NORTH")
    for parent_qr in ("SB00001", "SB00002", "SB00003"):
        scanning.scan_parent(db.session, biller, parent_qr, "NORTH")
    scanning.scan_child(db.session, biller, "SB00001", "C0001")
    scanning.scan_child(db.session, biller, "SB00003", "C0003")
    before = stats.tally_figures(db.session, None)["scans"]["total"]
    refusal = refused(getattr(scanning, action), biller, *args)
    assert refusal.code == reason
    scan = last_scan()
    assert (scan.kind, scan.outcome, scan.reason, scan.user_id) == (kind, "rejected", reason, biller.id)
    assert scan.qr == qr
    # Rejected scans are not counted as scans on the dashboard.
    assert stats.tally_figures(db.session, None)["scans"]["total"] == before


def test_rejected_child_scan_is_logged_against_the_parent(operator, make_parent):
    make_parent("SB00001", children=30)
    refused(scanning.scan_child, operator, "SB00001", "C9999")
    scan = last_scan()
    parent = fresh_bag("SB00001")
    assert (scan.parent_id, scan.area_id, scan.qr, scan.bag_id) == (parent.id, parent.area_id, "C9999", None)


def test_dashboard_figures_equal_recounts_after_a_day_of_work(app, operator, biller, make_bill, make_user):
    app.config["BAGTRACK_PARENT_CAPACITY"] = 4
    south = make_user("op3", "dispatcher", "SOUTH")
    for parent_qr in ("SB00001", "SB00002"):
        scanning.scan_parent(db.session, operator, parent_qr)
    scanning.scan_parent(db.session, south, "SB00003")
    scanning.scan_parent(db.session, operator, "SB00001")
    for number in range(4):
        scanning.scan_child(db.session, operator, "SB00001", f"N000{number}")
    scanning.scan_child(db.session, operator, "SB00001", "N0000")
    refused(scanning.scan_child, operator, "SB00001", "N0009")
    scanning.undo_last(db.session, operator, "SB00001")
    scanning.scan_child(db.session, operator, "SB00002", "N0003")
    scanning.scan_child(db.session, operator, "SB00002", "N0004")
    scanning.scan_child(db.session, south, "SB00003", "S0001")
    refused(scanning.scan_child, south, "SB00001", "S0002")
    scanning.close_parent(db.session, biller, "SB00002")
    make_bill("B-1", capacity=2)
    make_bill("B-2", capacity=1)
    billing.load_parent(db.session, biller, "B-1", "SB00002", confirmed=True)
    billing.load_parent(db.session, biller, "B-1", "SB00003", confirmed=True)
    billing.load_parent(db.session, biller, "B-1", "SB00003", confirmed=True)
    refused(billing.load_parent, biller, "B-1", "SB00001")
    billing.close_bill(db.session, biller, "B-1")
    billing.reopen_bill(db.session, biller, "B-1")
    billing.remove_parent(db.session, biller, "B-1", "SB00003")
    billing.load_parent(db.session, biller, "B-2", "SB00003", confirmed=True)
    billing.close_bill(db.session, biller, "B-2")

    figures = stats.tally_figures(db.session, None)
    assert figures_without_time(figures) == recount_figures(db.session)
    assert figures["bags"] == {"parents": 3, "children": 6}
    assert figures["parents"] == {"open": 2, "complete": 1, "billed": 2}
    assert figures["bills"] == {"open": 1, "closed": 1}
    assert counter_mismatches(db.session) == []

    north = stats.tally_figures(db.session, operator.area_id)
    assert north["bags"] == {"parents": 2, "children": 5}
    assert north["parents"] == {"open": 1, "complete": 1, "billed": 1}


def test_stale_objects_in_a_long_session_do_not_undo_other_sessions_work(app, operator):
    """Objects outlive commits in a session; a locked read must still see other transactions' changes."""
    scanning.scan_parent(db.session, operator, "SB00001")
    # Held like a view holds what it renders: the session's identity map keeps it.
    first = scanning.scan_child(db.session, operator, "SB00001", "C0001")
    with app.app_context():
        colleague_user = db.session.get(type(operator), operator.id)
        scanning.scan_child(db.session, colleague_user, "SB00001", "C0002")
        db.session.remove()
    result = scanning.scan_child(db.session, operator, "SB00001", "C0003")
    assert first.parent.child_count == 1 and result.parent.child_count == 3
    assert fresh_bag("SB00001").child_count == 3
    assert counter_mismatches(db.session) == []


def test_stale_bill_in_a_long_session_keeps_its_counters(app, biller, make_parent, make_bill):
    make_parent("SB00001", children=1)
    make_parent("SB00002", children=2)
    make_bill("B-1", capacity=2)
    first = billing.load_parent(db.session, biller, "B-1", "SB00001", confirmed=True)
    with app.app_context():
        other = db.session.get(type(biller), biller.id)
        billing.load_parent(db.session, other, "B-1", "SB00002", confirmed=True)
        db.session.remove()
    assert billing.remove_parent(db.session, biller, "B-1", "SB00001").bill is first.bill
    db.session.expire_all()
    bill = db.session.scalars(select(Bill)).one()
    assert (bill.parent_count, bill.child_count) == (1, 2)
    assert counter_mismatches(db.session) == []
