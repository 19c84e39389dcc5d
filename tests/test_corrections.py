"""The office's corrections: each one transaction, audited with its reason, every counter kept."""

from __future__ import annotations

import json
import random
from functools import partial

import pytest
from sqlalchemy import select

from bagtrack import billing, corrections, queries, scanning, stats
from bagtrack.errors import Refusal
from bagtrack.extensions import db
from bagtrack.invariants import find_violations
from bagtrack.models import AuditEntry, Bag, Bill, Scan


@pytest.fixture
def office(make_user):
    return make_user("office", role="biller", area=None)


@pytest.fixture
def admin(make_user):
    return make_user("boss", role="admin", area=None)


def bag(qr: str) -> Bag | None:
    db.session.expire_all()
    return db.session.scalars(select(Bag).where(Bag.qr == qr)).one_or_none()


def last_audit() -> tuple[str, str, dict]:
    entry = db.session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1)).one()
    return entry.action, entry.target, json.loads(entry.after or "{}")


def assert_invariants() -> None:
    db.session.expire_all()
    assert find_violations(db.session) == []


def refused(code: str, action, *args) -> Refusal:
    with pytest.raises(Refusal) as caught:
        action(db.session, *args)
    assert caught.value.code == code, caught.value.message
    db.session.rollback()
    return caught.value


def test_removing_a_child_from_a_complete_parent_opens_it_and_leaves_the_child_loose(office, make_parent):
    parent = make_parent("SB10001", children=3)
    scanning.close_parent(db.session, office, "SB10001")
    child = queries.children_of(db.session, parent)[0]
    result = corrections.remove_child(db.session, office, "sb10001", child.lower(), "  wrong bag ")
    assert (result.parent.status, result.parent.child_count) == ("open", 2)
    assert (bag(child).status, bag(child).parent_id) == ("loose", None)
    assert last_audit() == ("parent.remove_child", f"SB10001/{child}", last_audit()[2])
    assert last_audit()[2]["reason"] == "wrong bag"
    removal = db.session.scalars(select(Scan).order_by(Scan.id.desc()).limit(1)).one()
    assert (removal.kind, removal.qr, removal.outcome) == ("remove", child, "ok")
    assert_invariants()
    # The loose child can be scanned again, into another parent.
    make_parent("SB10002")
    assert scanning.scan_child(db.session, office, "SB10002", child).created is False
    assert_invariants()


def test_removing_a_child_from_a_parent_on_an_open_bill_lowers_the_bill_totals(office, make_parent, make_bill):
    parent = make_parent("SB10001", children=2)
    make_bill("B-1")
    billing.load_parent(db.session, office, "B-1", "SB10001", confirmed=True)
    child = queries.children_of(db.session, parent)[0]
    result = corrections.remove_child(db.session, office, "SB10001", child, "torn bag")
    assert (result.bill.parent_count, result.bill.child_count) == (1, 1)
    assert_invariants()


def test_a_closed_or_cancelled_bill_freezes_its_parents(office, make_parent, make_bill):
    parent = make_parent("SB10001", children=2)
    child = queries.children_of(db.session, parent)[0]
    make_bill("B-1")
    billing.load_parent(db.session, office, "B-1", "SB10001", confirmed=True)
    billing.close_bill(db.session, office, "B-1")
    refused("bill_closed", corrections.remove_child, office, "SB10001", child, "late")
    assert bag(child).status == "packed"
    assert_invariants()


def test_removal_refuses_what_is_not_there_and_wants_a_reason(office, make_parent):
    make_parent("SB10001", children=1)
    other = make_parent("SB10002", children=1)
    stranger = queries.children_of(db.session, other)[0]
    refused("child_not_in_parent", corrections.remove_child, office, "SB10001", stranger, "oops")
    refused("child_not_in_parent", corrections.remove_child, office, "SB10001", "CNEVERSEEN", "oops")
    refused("parent_not_found", corrections.remove_child, office, "SB99999", stranger, "oops")
    refused("wrong_kind", corrections.remove_child, office, stranger, "SB10001", "oops")
    for reason in (None, "", "   ", "\x00\n", "x" * 501, 5):
        refused("invalid_input", corrections.remove_child, office, "SB10002", stranger, reason)
    assert bag(stranger).parent_id == bag("SB10002").id
    assert_invariants()


def test_a_dispatcher_may_correct_nothing_outside_their_area(make_user, make_parent):
    make_parent("SB20001", area="SOUTH", children=1)
    north = make_user("north", area="NORTH")
    refused("parent_not_found", corrections.reopen_parent, north, "SB20001", "why")


def test_reopening_a_parent_closed_short(office, make_parent, make_bill):
    make_parent("SB10001", children=2)
    scanning.close_parent(db.session, office, "SB10001")
    before = stats.tally_figures(db.session, None)["parents"]["complete"]
    result = corrections.reopen_parent(db.session, office, "SB10001", "closed by mistake")
    assert (result.parent.status, result.duplicate) == ("open", False)
    assert stats.tally_figures(db.session, None)["parents"]["complete"] == before - 1
    assert last_audit()[0] == "parent.reopen" and last_audit()[2]["reason"] == "closed by mistake"
    assert corrections.reopen_parent(db.session, office, "SB10001", "again").duplicate is True
    assert_invariants()
    # A closed parent on a bill is frozen; so is a full one.
    scanning.close_parent(db.session, office, "SB10001")
    make_bill("B-1")
    billing.load_parent(db.session, office, "B-1", "SB10001", confirmed=True)
    refused("parent_on_bill", corrections.reopen_parent, office, "SB10001", "why")
    make_parent("SB10002", children=30)
    assert bag("SB10002").status == "complete"
    refused("parent_full", corrections.reopen_parent, office, "SB10002", "why")
    assert_invariants()


def test_deleting_an_empty_parent_or_a_loose_child_keeps_their_scan_log(admin, make_parent):
    make_parent("SB10001")
    filled = make_parent("SB10002", children=1)
    child = queries.children_of(db.session, filled)[0]
    corrections.remove_child(db.session, admin, "SB10002", child, "spare label")
    figures = stats.tally_figures(db.session, None)["bags"]
    scans = db.session.query(Scan).count()
    assert corrections.delete_bag(db.session, admin, "sb10001", "label printed twice") == "SB10001"
    assert corrections.delete_bag(db.session, admin, child, "never used") == child
    assert bag("SB10001") is None and bag(child) is None
    assert stats.tally_figures(db.session, None)["bags"] == {
        "parents": figures["parents"] - 1,
        "children": figures["children"] - 1,
    }
    assert db.session.query(Scan).count() == scans
    assert {"SB10001", child} <= set(db.session.scalars(select(Scan.qr)))
    assert last_audit()[:2] == ("child.delete", child)
    assert_invariants()


def test_a_bag_in_use_cannot_be_deleted(admin, make_parent, make_bill):
    filled = make_parent("SB10001", children=1)
    child = queries.children_of(db.session, filled)[0]
    refused("bag_in_use", corrections.delete_bag, admin, "SB10001", "why")
    refused("bag_in_use", corrections.delete_bag, admin, child, "why")
    refused("not_found", corrections.delete_bag, admin, "SB99999", "why")
    refused("invalid_input", corrections.delete_bag, admin, "SB10001", "")
    assert bag("SB10001") is not None and bag(child) is not None


def test_editing_an_open_bill(office, make_parent, make_bill):
    make_bill("B-1", capacity=5)
    for qr in ("SB10001", "SB10002"):
        make_parent(qr, children=1)
        billing.load_parent(db.session, office, "B-1", qr, confirmed=True)
    change = billing.edit_bill(
        db.session, office, "b-1", {"destination": "Port gate 4", "vehicle_no": "mh 12 ab 1234", "capacity": "2"}
    )
    bill = change.bill
    assert (bill.destination, bill.vehicle_no, bill.capacity) == ("Port gate 4", "MH 12 AB 1234", 2)
    assert last_audit()[0] == "bill.edit"
    assert billing.edit_bill(db.session, office, "B-1", {"destination": "Port gate 4"}).duplicate is True
    refused("invalid_input", billing.edit_bill, office, "B-1", {"capacity": "1"})
    refused("invalid_input", billing.edit_bill, office, "B-1", {"capacity": "501"})
    refused("invalid_input", billing.edit_bill, office, "B-1", {"destination": "x" * 201})
    refused("bill_not_found", billing.edit_bill, office, "B-404", {"destination": "x"})
    billing.close_bill(db.session, office, "B-1")
    refused("bill_closed", billing.edit_bill, office, "B-1", {"destination": "x"})
    assert_invariants()


def test_cancelling_a_bill_unloads_its_parents_and_freezes_it(office, make_parent, make_bill):
    make_bill("B-1", capacity=5)
    for qr, area in (("SB10001", "NORTH"), ("SB20001", "SOUTH")):
        make_parent(qr, area=area, children=2)
        billing.load_parent(db.session, office, "B-1", qr, confirmed=True)
    billed = stats.tally_figures(db.session, None)["parents"]["billed"]
    change = billing.cancel_bill(db.session, office, "B-1", "truck did not come")
    assert (change.bill.status, change.bill.parent_count, change.bill.child_count) == ("cancelled", 0, 0)
    assert bag("SB10001").bill_id is None and bag("SB20001").bill_id is None
    figures = stats.tally_figures(db.session, None)
    assert figures["parents"]["billed"] == billed - 2
    assert figures["bills"]["open"] == 0
    action, target, after = last_audit()
    assert (action, target, after["reason"]) == ("bill.cancel", "B-1", "truck did not come")
    unloads = db.session.scalars(select(Scan.qr).where(Scan.reason == "cancelled")).all()
    assert sorted(unloads) == ["SB10001", "SB20001"]
    assert billing.cancel_bill(db.session, office, "B-1", "again").duplicate is True
    # Kept for the record, and it can no longer change.
    for action, args in (
        (billing.load_parent, ("B-1", "SB10001")),
        (billing.close_bill, ("B-1",)),
        (billing.reopen_bill, ("B-1",)),
        (billing.edit_bill, ("B-1", {"destination": "x"})),
    ):
        assert "cancelled" in refused("bill_cancelled", action, office, *args).message
    assert db.session.get(Bill, change.bill.id).status == "cancelled"
    assert_invariants()
    # The parents can go on another bill.
    make_bill("B-2")
    billing.load_parent(db.session, office, "B-2", "SB10001", confirmed=True)
    assert_invariants()


def test_a_closed_bill_is_reopened_before_it_is_cancelled(office, make_parent, make_bill):
    make_parent("SB10001", children=1)
    make_bill("B-1")
    billing.load_parent(db.session, office, "B-1", "SB10001", confirmed=True)
    billing.close_bill(db.session, office, "B-1")
    refused("bill_closed", billing.cancel_bill, office, "B-1", "wrong")
    refused("invalid_input", billing.cancel_bill, office, "B-1", " ")


@pytest.mark.postgres
def test_removals_and_scans_on_one_parent_at_once_stay_consistent(make_app, make_user, make_parent, make_bill):
    from test_concurrency import run_together, thread_user

    big_app = make_app(SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 12, "max_overflow": 0, "pool_timeout": 20})
    office = make_user("office", role="biller", area=None)
    operators = [make_user(f"op{number}", "dispatcher", "NORTH") for number in range(4)]
    parent = make_parent("SB00001", children=10)
    make_bill("B-1", capacity=3)
    billing.load_parent(db.session, office, "B-1", "SB00001", confirmed=True)
    billing.remove_parent(db.session, office, "B-1", "SB00001")
    packed = queries.children_of(db.session, parent)

    def scanner(user_id: int):
        def work():
            user = thread_user(user_id)
            for number in range(15):
                try:
                    scanning.scan_child(db.session, user, "SB00001", f"C{user_id}X{number}")
                except Refusal as refusal:
                    assert refusal.code in {"parent_full", "parent_on_bill"}

        return work

    def remover(seed: int):
        def work():
            user = thread_user(office.id)
            chooser = random.Random(seed)
            for qr in chooser.sample(packed, 5):
                try:
                    corrections.remove_child(db.session, user, "SB00001", qr, "checking")
                except Refusal as refusal:
                    assert refusal.code in {"child_not_in_parent", "bill_closed"}
            for action in (partial(billing.load_parent, confirmed=True), billing.remove_parent):
                try:
                    action(db.session, user, "B-1", "SB00001")
                except Refusal as refusal:
                    assert refusal.code in {"parent_not_on_bill", "parent_on_other_bill", "bill_full"}

        return work

    run_together(big_app, [scanner(operator.id) for operator in operators] + [remover(seed) for seed in range(3)])
    db.session.expire_all()
    row = bag("SB00001")
    assert row.child_count <= row.capacity
    assert_invariants()
