"""The rules of bills, called directly: create, load, remove, close, reopen."""

from __future__ import annotations

import json

import pytest
from helpers import refused
from sqlalchemy import func, select
from test_scanning import counter_mismatches, figures_without_time, fresh_bag, last_scan, recount_figures

from bagtrack import billing, scanning, stats
from bagtrack.extensions import db
from bagtrack.models import AuditEntry, Bag, Bill, Scan


def fresh_bill(bill_no: str) -> Bill:
    db.session.expire_all()
    return db.session.scalars(select(Bill).where(Bill.bill_no == bill_no)).one()


def audit_actions() -> list[str]:
    return list(db.session.scalars(select(AuditEntry.action).order_by(AuditEntry.id)))


def new_bill(biller, bill_no: str = "B-1", capacity: int = 10, **fields) -> Bill:
    return billing.create_bill(db.session, biller, {"bill_no": bill_no, "capacity": str(capacity), **fields})


# --- Create ---------------------------------------------------------------------------------------


def test_create_bill_normalises_and_stores_the_fields(biller):
    bill = billing.create_bill(
        db.session,
        biller,
        {
            "bill_no": " bill-2024-07\r\n",
            "capacity": "12",
            "destination": " Depot North ",
            "vehicle_no": "ka-01-1234",
            "description": "Morning truck",
        },
    )
    stored = fresh_bill("BILL-2024-07")
    assert stored.id == bill.id
    assert (stored.status, stored.capacity, stored.parent_count, stored.child_count) == ("open", 12, 0, 0)
    assert (stored.destination, stored.vehicle_no, stored.description) == ("Depot North", "KA-01-1234", "Morning truck")
    assert stored.created_by_id == biller.id
    entry = db.session.scalars(select(AuditEntry)).one()
    assert (entry.action, entry.target, entry.actor) == ("bill.create", "BILL-2024-07", "boss")
    assert json.loads(entry.after)["status"] == "open"
    assert stats.tally_figures(db.session, None)["bills"] == {"open": 1, "closed": 0}


@pytest.mark.parametrize("bill_no", ["", "B 1", "B_1", "A" * 51, "B\uff11"])
def test_bad_bill_no_is_invalid_bill_no(biller, bill_no):
    refusal = refused(billing.create_bill, biller, {"bill_no": bill_no, "capacity": "5"})
    assert (refusal.code, refusal.status) == ("invalid_bill_no", 400)
    assert refusal.message == "A bill number is 1 to 50 characters of A-Z, 0-9 and '-'."
    assert db.session.scalar(select(func.count()).select_from(Bill)) == 0


def test_bill_no_is_unique_after_normalising(biller):
    new_bill(biller, "B-1")
    refusal = refused(billing.create_bill, biller, {"bill_no": "b-1\n", "capacity": "5"})
    assert (refusal.code, refusal.status) == ("bill_exists", 409)
    assert refusal.message == "Bill B-1 already exists."
    assert audit_actions() == ["bill.create"]


@pytest.mark.parametrize("capacity", ["0", "501", "abc", "", None, "2.5", "-1"])
def test_capacity_is_one_to_five_hundred_parents(biller, capacity):
    refusal = refused(billing.create_bill, biller, {"bill_no": "B-1", "capacity": capacity})
    assert (refusal.code, refusal.status) == ("invalid_input", 400)
    assert refusal.message == "Capacity must be a whole number of parent bags from 1 to 500."


@pytest.mark.parametrize("capacity", ["1", "500", " 7 "])
def test_capacity_bounds_are_accepted(biller, capacity):
    assert new_bill(biller, capacity=capacity.strip()).capacity == int(capacity)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("destination", "x" * 201, "Destination is at most 200 characters."),
        ("vehicle_no", "x" * 51, "Vehicle number is at most 50 characters."),
        ("description", ["not", "text"], "Description must be text."),
    ],
)
def test_other_bad_fields_are_invalid_input(biller, field, value, message):
    refusal = refused(billing.create_bill, biller, {"bill_no": "B-1", "capacity": "5", field: value})
    assert (refusal.code, refusal.message) == ("invalid_input", message)


# --- Load -----------------------------------------------------------------------------------------


def test_load_parent_links_it_and_counts_it(biller, make_parent):
    make_parent("SB00001", children=4)
    new_bill(biller, "B-1", capacity=3)
    result = billing.load_parent(db.session, biller, "b-1", "sb00001", confirmed=True)
    assert result.duplicate is False
    bill, parent = fresh_bill("B-1"), fresh_bag("SB00001")
    assert parent.bill_id == bill.id
    assert (bill.parent_count, bill.child_count, bill.status) == (1, 4, "open")
    scan = last_scan()
    assert (scan.kind, scan.outcome, scan.bill_id, scan.parent_id, scan.user_id) == (
        "load",
        "ok",
        bill.id,
        parent.id,
        biller.id,
    )
    entry = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "bill.load_parent")).one()
    assert entry.target == "B-1/SB00001"
    assert json.loads(entry.before)["parent_count"] == 0 and json.loads(entry.after)["parent_count"] == 1


def test_a_parent_that_is_not_complete_is_loaded_only_when_confirmed(biller, make_parent):
    make_parent("SB00001", children=1)
    new_bill(biller)
    refusal = refused(billing.load_parent, biller, "B-1", "SB00001")
    assert (refusal.code, refusal.status) == ("parent_not_complete", 409)
    assert refusal.message == "Parent bag SB00001 is not complete (1/30). Load it anyway?"
    assert (last_scan().outcome, last_scan().reason) == ("rejected", "parent_not_complete")
    assert fresh_bill("B-1").parent_count == 0 and fresh_bag("SB00001").bill_id is None

    billing.load_parent(db.session, biller, "B-1", "SB00001", confirmed=True)
    assert fresh_bag("SB00001").status == "open"
    assert fresh_bill("B-1").parent_count == 1


def test_loading_twice_is_a_duplicate_even_on_a_closed_full_bill(biller, make_parent):
    make_parent("SB00001", children=2)
    new_bill(biller, "B-1", capacity=1)
    billing.load_parent(db.session, biller, "B-1", "SB00001", confirmed=True)
    billing.close_bill(db.session, biller, "B-1")
    result = billing.load_parent(db.session, biller, "B-1", "SB00001", confirmed=True)
    assert result.duplicate is True
    bill = fresh_bill("B-1")
    assert (bill.parent_count, bill.child_count, bill.status) == (1, 2, "closed")
    scan = last_scan()
    assert (scan.kind, scan.outcome, scan.reason) == ("load", "ok", "duplicate")
    assert audit_actions().count("bill.load_parent") == 1


def test_unknown_bill_is_bill_not_found(biller, make_parent):
    make_parent("SB00001", children=1)
    refusal = refused(billing.load_parent, biller, "B-404", "SB00001")
    assert (refusal.code, refusal.status) == ("bill_not_found", 404)
    assert refusal.message == "Bill B-404 was not found."


def test_parents_are_not_created_by_loading(biller):
    new_bill(biller)
    refusal = refused(billing.load_parent, biller, "B-1", "SB00001")
    assert (refusal.code, refusal.status) == ("parent_not_found", 404)
    assert refusal.message == "Parent bag SB00001 was not found."
    assert db.session.scalar(select(func.count()).select_from(Bag)) == 0


def test_a_child_code_cannot_be_loaded(biller):
    new_bill(biller)
    refusal = refused(billing.load_parent, biller, "B-1", "C0001")
    assert (refusal.code, refusal.status) == ("wrong_kind", 409)
    assert refused(billing.load_parent, biller, "B-1", "??").code == "invalid_qr"


def test_closed_bill_refuses_a_new_parent(biller, make_parent):
    make_parent("SB00001", children=1)
    make_parent("SB00002", children=1)
    new_bill(biller)
    billing.load_parent(db.session, biller, "B-1", "SB00001", confirmed=True)
    billing.close_bill(db.session, biller, "B-1")
    refusal = refused(billing.load_parent, biller, "B-1", "SB00002")
    assert (refusal.code, refusal.status) == ("bill_closed", 409)
    assert refusal.message == "Bill B-1 is closed."
    assert fresh_bag("SB00002").bill_id is None


def test_parent_on_another_bill_is_refused_naming_it(biller, make_parent):
    make_parent("SB00001", children=1)
    new_bill(biller, "B-1")
    new_bill(biller, "B-2")
    billing.load_parent(db.session, biller, "B-1", "SB00001", confirmed=True)
    refusal = refused(billing.load_parent, biller, "B-2", "SB00001")
    assert (refusal.code, refusal.status) == ("parent_on_other_bill", 409)
    assert refusal.message == "Parent bag SB00001 is already on bill B-1."
    assert fresh_bill("B-2").parent_count == 0


def test_empty_parent_is_refused(biller, make_parent):
    make_parent("SB00001")
    new_bill(biller)
    refusal = refused(billing.load_parent, biller, "B-1", "SB00001")
    assert (refusal.code, refusal.status) == ("parent_empty", 409)
    assert refusal.message == "Parent bag SB00001 is empty; fill it before loading."


def test_full_bill_is_refused(biller, make_parent):
    make_parent("SB00001", children=1)
    make_parent("SB00002", children=1)
    new_bill(biller, capacity=1)
    billing.load_parent(db.session, biller, "B-1", "SB00001", confirmed=True)
    refusal = refused(billing.load_parent, biller, "B-1", "SB00002", confirmed=True)
    assert (refusal.code, refusal.status) == ("bill_full", 409)
    assert refusal.message == "Bill B-1 is full (1/1 parent bags)."
    assert fresh_bill("B-1").parent_count == 1


def test_load_checks_run_in_the_documented_order(biller, make_parent):
    """invalid_qr/wrong_kind, bill_not_found, parent_not_found, duplicate, bill_closed,
    parent_on_other_bill, parent_empty, parent_not_complete, bill_full."""
    make_parent("SB00001", children=1)  # on B-1
    make_parent("SB00002", children=1)  # on B-2
    make_parent("SB00003")  # empty
    new_bill(biller, "B-1", capacity=1)
    new_bill(biller, "B-2", capacity=1)
    billing.load_parent(db.session, biller, "B-1", "SB00001", confirmed=True)
    billing.load_parent(db.session, biller, "B-2", "SB00002", confirmed=True)
    billing.close_bill(db.session, biller, "B-1")  # B-1: closed and full; B-2: open and full

    assert refused(billing.load_parent, biller, "B-404", "C0001").code == "wrong_kind"
    assert refused(billing.load_parent, biller, "B-404", "SB77777").code == "bill_not_found"
    assert refused(billing.load_parent, biller, "B-1", "SB77777").code == "parent_not_found"
    assert billing.load_parent(db.session, biller, "B-1", "SB00001", confirmed=True).duplicate is True
    assert refused(billing.load_parent, biller, "B-1", "SB00002").code == "bill_closed"
    assert refused(billing.load_parent, biller, "B-1", "SB00003").code == "bill_closed"
    assert refused(billing.load_parent, biller, "B-2", "SB00001").code == "parent_on_other_bill"
    assert refused(billing.load_parent, biller, "B-2", "SB00003").code == "parent_empty"
    scanning.scan_child(db.session, biller, "SB00003", "C0003")
    assert refused(billing.load_parent, biller, "B-2", "SB00003").code == "parent_not_complete"
    assert refused(billing.load_parent, biller, "B-2", "SB00003", confirmed=True).code == "bill_full"


def test_every_refused_load_is_logged_with_its_reason(biller, make_parent):
    make_parent("SB00001")
    new_bill(biller)
    for bill_no, qr, reason in [
        ("B-404", "SB00001", "bill_not_found"),
        ("B-1", "SB77777", "parent_not_found"),
        ("B-1", "SB00001", "parent_empty"),
        ("B-1", "C0001", "wrong_kind"),
    ]:
        refused(billing.load_parent, biller, bill_no, qr)
        scan = last_scan()
        assert (scan.kind, scan.outcome, scan.reason, scan.user_id) == ("load", "rejected", reason, biller.id)
    parent_not_found = db.session.scalars(select(Scan).where(Scan.reason == "parent_not_found")).one()
    assert parent_not_found.bill_id == fresh_bill("B-1").id


def test_dispatcher_cannot_load_a_parent_of_another_area(make_user, make_parent, biller):
    south = make_user("op3", "dispatcher", "SOUTH")
    make_parent("SB00001", area="NORTH", children=1)
    new_bill(biller)
    refusal = refused(billing.load_parent, south, "B-1", "SB00001")
    assert refusal.code == "parent_not_found"


# --- Remove, close, reopen ------------------------------------------------------------------------


def test_remove_parent_takes_it_off_the_bill(biller, make_parent):
    make_parent("SB00001", children=3)
    make_parent("SB00002", children=2)
    new_bill(biller)
    billing.load_parent(db.session, biller, "B-1", "SB00001", confirmed=True)
    billing.load_parent(db.session, biller, "B-1", "SB00002", confirmed=True)
    billing.remove_parent(db.session, biller, "B-1", "sb00001")
    bill = fresh_bill("B-1")
    assert (bill.parent_count, bill.child_count) == (1, 2)
    assert fresh_bag("SB00001").bill_id is None
    scan = last_scan()
    assert (scan.kind, scan.outcome, scan.bill_id) == ("unload", "ok", bill.id)
    assert audit_actions()[-1] == "bill.remove_parent"
    # Off the bill, its contents may change again.
    scanning.scan_child(db.session, biller, "SB00001", "C0009")
    assert fresh_bag("SB00001").child_count == 4


def test_remove_from_a_closed_bill_is_refused(biller, make_parent):
    make_parent("SB00001", children=1)
    new_bill(biller)
    billing.load_parent(db.session, biller, "B-1", "SB00001", confirmed=True)
    billing.close_bill(db.session, biller, "B-1")
    refusal = refused(billing.remove_parent, biller, "B-1", "SB00001")
    assert (refusal.code, refusal.status, refusal.message) == ("bill_closed", 409, "Bill B-1 is closed.")
    assert fresh_bag("SB00001").bill_id is not None


def test_remove_a_parent_that_is_not_on_the_bill_is_refused(biller, make_parent):
    make_parent("SB00001", children=1)
    new_bill(biller, "B-1")
    new_bill(biller, "B-2")
    billing.load_parent(db.session, biller, "B-2", "SB00001", confirmed=True)
    refusal = refused(billing.remove_parent, biller, "B-1", "SB00001")
    assert (refusal.code, refusal.status) == ("parent_not_on_bill", 409)
    assert refusal.message == "Parent bag SB00001 is not on bill B-1."
    assert fresh_bill("B-2").parent_count == 1
    assert last_scan().reason == "parent_not_on_bill"


def test_close_and_reopen_a_bill(biller, make_parent):
    make_parent("SB00001", children=1)
    new_bill(biller)
    billing.load_parent(db.session, biller, "B-1", "SB00001", confirmed=True)
    result = billing.close_bill(db.session, biller, "b-1")
    assert result.duplicate is False
    bill = fresh_bill("B-1")
    assert bill.status == "closed" and bill.closed_at is not None
    assert billing.close_bill(db.session, biller, "B-1").duplicate is True
    assert stats.tally_figures(db.session, None)["bills"] == {"open": 0, "closed": 1}

    assert billing.reopen_bill(db.session, biller, "B-1").duplicate is False
    bill = fresh_bill("B-1")
    assert bill.status == "open" and bill.closed_at is None
    assert billing.reopen_bill(db.session, biller, "B-1").duplicate is True
    assert stats.tally_figures(db.session, None)["bills"] == {"open": 1, "closed": 0}
    assert audit_actions() == ["bill.create", "bill.load_parent", "bill.close", "bill.reopen"]
    close_entry = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "bill.close")).one()
    assert json.loads(close_entry.before)["status"] == "open"
    assert json.loads(close_entry.after)["status"] == "closed"


def test_an_empty_bill_cannot_be_closed(biller):
    new_bill(biller)
    refusal = refused(billing.close_bill, biller, "B-1")
    assert (refusal.code, refusal.status) == ("bill_empty", 409)
    assert refusal.message == "Bill B-1 has no parent bags; load one before closing it."
    assert fresh_bill("B-1").status == "open"


@pytest.mark.parametrize("action", ["close_bill", "reopen_bill"])
def test_close_or_reopen_an_unknown_bill(biller, action):
    refusal = refused(getattr(billing, action), biller, "B-404")
    assert (refusal.code, refusal.status) == ("bill_not_found", 404)


def test_bill_counters_and_dashboard_equal_recounts(biller, make_parent):
    for number, children in enumerate([3, 5, 30, 1], start=1):
        make_parent(f"SB0000{number}", children=children)
    new_bill(biller, "B-1", capacity=3)
    new_bill(biller, "B-2", capacity=2)
    for qr in ("SB00001", "SB00002", "SB00003"):
        billing.load_parent(db.session, biller, "B-1", qr, confirmed=True)
    refused(billing.load_parent, biller, "B-1", "SB00004")
    billing.remove_parent(db.session, biller, "B-1", "SB00002")
    billing.load_parent(db.session, biller, "B-2", "SB00002", confirmed=True)
    billing.load_parent(db.session, biller, "B-2", "SB00004", confirmed=True)
    billing.close_bill(db.session, biller, "B-2")
    assert (fresh_bill("B-1").parent_count, fresh_bill("B-1").child_count) == (2, 33)
    assert (fresh_bill("B-2").parent_count, fresh_bill("B-2").child_count) == (2, 6)
    assert counter_mismatches(db.session) == []
    assert figures_without_time(stats.tally_figures(db.session, None)) == recount_figures(db.session)
