"""Bills: loading filled parent bags onto a truck's dispatch document.

Each function is one transaction that locks the bill before the parent
(the same order as everywhere else), and keeps the bill's parent and child
counts in step with what it changes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import set_committed_value

from .audit import entry_insert, entry_row, reason_given, record
from .codes import BILL_NO_MAX_LENGTH, QR_MAX_LENGTH, normalise, normalise_bill_no, require_kind
from .errors import PARENT_EMPTY_TO_LOAD, Refusal
from .ledger import (
    add_to_tally,
    count_scan,
    in_transaction,
    log_scan,
    note_changed_tally,
    scan_and_tally_statement,
    scan_and_tally_values,
)
from .models import OFFICE_TALLY, Bag, Bill, User, utcnow
from .scanning import visible_parent

LOCK_ATTEMPTS = 5


@dataclass
class BillChange:
    bill: Bill
    parent: Bag | None = None
    duplicate: bool = False


def bill_snapshot(bill: Bill) -> dict:
    return {
        "status": bill.status,
        "parent_count": bill.parent_count,
        "child_count": bill.child_count,
        "capacity": bill.capacity,
    }


def find_bill(session, raw_bill_no: str | None, *, lock: bool = False) -> Bill:
    """The bill ``raw_bill_no`` (normalised), or ``bill_not_found``."""
    bill_no = normalise(raw_bill_no)
    statement = select(Bill).where(Bill.bill_no == bill_no[:BILL_NO_MAX_LENGTH])
    if lock:
        # The session keeps objects across commits; a locked read must replace their stale values.
        statement = statement.with_for_update(key_share=True).execution_options(populate_existing=True)
    bill = session.scalars(statement).one_or_none() if bill_no else None
    if bill is None:
        shown = bill_no[:BILL_NO_MAX_LENGTH]
        raise Refusal("bill_not_found", f"Bill {shown} was not found.", qr=bill_no[:QR_MAX_LENGTH])
    return bill


def refuse_if_cancelled(bill: Bill, **about) -> None:
    """A cancelled bill is kept for the record only: every change to it is ``bill_cancelled``."""
    if bill.status == "cancelled":
        raise Refusal(
            "bill_cancelled", f"Bill {bill.bill_no} was cancelled; it can no longer change.", bill=bill, **about
        )


def refuse_unless_open(bill: Bill, **about) -> None:
    """Only an open bill takes changes: ``bill_cancelled``, or ``bill_closed`` (reopen it first)."""
    refuse_if_cancelled(bill, **about)
    if bill.status != "open":
        raise Refusal("bill_closed", f"Bill {bill.bill_no} is closed.", bill=bill, **about)


def lock_bill_of(session, user: User, parent_qr: str) -> tuple[Bill | None, Bag]:
    """Lock the parent ``parent_qr`` and the bill it is on (if any), bill first as everywhere.

    The parent's bill is read before the locks are taken. If a concurrent load
    or unload changed it meanwhile, the transaction is rolled back and the
    locks are taken again in order (so call this before writing anything);
    locking the new bill while holding the parent could deadlock with that
    load. After a few such races the new bill is locked anyway, and a
    deadlock, should one follow, is retried like any other.
    """
    for _ in range(LOCK_ATTEMPTS):
        bill_id = session.scalar(select(Bag.bill_id).where(Bag.qr == parent_qr))
        bill = _lock_bill_by_id(session, bill_id)
        parent = visible_parent(session, user, parent_qr, lock=True)
        if parent.bill_id == bill_id:
            return bill, parent
        session.rollback()
    parent = visible_parent(session, user, parent_qr, lock=True)
    return _lock_bill_by_id(session, parent.bill_id), parent


def _lock_bill_by_id(session, bill_id: int | None) -> Bill | None:
    if bill_id is None:
        return None
    return session.scalars(
        select(Bill).where(Bill.id == bill_id).with_for_update(key_share=True).execution_options(populate_existing=True)
    ).one()


def _text_field(fields: dict, name: str, limit: int, label: str, *, upper: bool = False) -> str:
    value = fields.get(name) or ""
    if not isinstance(value, str):
        raise Refusal("invalid_input", f"{label} must be text.")
    value = "".join(ch for ch in value if ch.isprintable() or ch == "\n").strip()
    if upper:
        # Before the length check: upper-casing can lengthen text ("ß" becomes "SS").
        value = value.upper()
    if len(value) > limit:
        raise Refusal("invalid_input", f"{label} is at most {limit} characters.")
    return value


def _capacity(raw) -> int:
    try:
        capacity = int(str(raw).strip())
    except (TypeError, ValueError):
        raise Refusal("invalid_input", "Capacity must be a whole number of parent bags from 1 to 500.") from None
    if not 1 <= capacity <= 500:
        raise Refusal("invalid_input", "Capacity must be a whole number of parent bags from 1 to 500.")
    return capacity


def bill_details(fields: dict) -> dict:
    """The fields of a new bill, checked and normalised, for the form and the import alike.

    ``bill_no`` is normalised like a QR and must be 1–50 of ``A-Z 0-9 -``
    (``invalid_bill_no``); ``capacity`` is a number of parent bags from 1 to
    500; destination, vehicle number and description are printable text of a
    bounded length. Anything else is ``invalid_input``.
    """
    return {
        "bill_no": normalise_bill_no(fields.get("bill_no")),
        "capacity": _capacity(fields.get("capacity")),
        "destination": _text_field(fields, "destination", 200, "Destination"),
        "vehicle_no": _text_field(fields, "vehicle_no", 50, "Vehicle number", upper=True),
        "description": _text_field(fields, "description", 2000, "Description"),
    }


def create_bill(session, user: User, fields: dict) -> Bill:
    """Open a new bill.

    ``bill_no`` is normalised like a QR and must be 1–50 of ``A-Z 0-9 -``
    (``invalid_bill_no``) and unused (``bill_exists``); ``capacity`` is a
    number of parent bags from 1 to 500; other bad fields are
    ``invalid_input``.
    """

    def work() -> Bill:
        details = bill_details(fields)
        bill_no = details["bill_no"]
        bill = Bill(
            status="open", parent_count=0, child_count=0, created_by_id=user.id if user is not None else None, **details
        )
        if session.scalar(select(Bill.id).where(Bill.bill_no == bill_no)) is not None:
            raise Refusal("bill_exists", f"Bill {bill_no} already exists.")
        session.add(bill)
        try:
            session.flush()
        except IntegrityError:
            raise Refusal("bill_exists", f"Bill {bill_no} already exists.") from None
        add_to_tally(session, OFFICE_TALLY, bills_open=1)
        record(session, user, "bill.create", bill_no, after=bill_snapshot(bill))
        return bill

    return in_transaction(session, work, user=user)


def load_parent(
    session, user: User, raw_bill_no: str | None, raw_qr: str | None, *, confirmed: bool = False
) -> BillChange:
    """Load a parent bag onto an open bill.

    Checked in this order: the code is a valid parent code; the bill exists;
    the parent exists (parents are never created here); a parent already on
    this bill is a ``duplicate`` success even on a closed or full bill; then
    ``bill_closed``, ``parent_on_other_bill`` (naming it), ``parent_empty``,
    ``parent_not_complete`` (a parent still open is loaded only when the
    loader ``confirmed`` it) and ``bill_full``.
    """

    def work() -> BillChange:
        code = require_kind(raw_qr, "parent")
        bill = find_bill(session, raw_bill_no, lock=True)
        try:
            parent = visible_parent(session, user, code.value, lock=True)
        except Refusal as refusal:
            refusal.bill_id = bill.id
            raise
        if parent.bill_id == bill.id:
            count_scan(session, user, "load", parent=parent, bill_id=bill.id, reason="duplicate")
            return BillChange(bill, parent, duplicate=True)
        refuse_unless_open(bill, qr=parent.qr, parent=parent)
        if parent.bill_id is not None:
            other = session.scalar(select(Bill.bill_no).where(Bill.id == parent.bill_id))
            raise Refusal(
                "parent_on_other_bill",
                f"Parent bag {parent.qr} is already on bill {other}.",
                qr=parent.qr,
                parent=parent,
                bill=bill,
            )
        if parent.child_count == 0:
            raise Refusal(
                "parent_empty",
                PARENT_EMPTY_TO_LOAD.format(qr=parent.qr),
                qr=parent.qr,
                parent=parent,
                bill=bill,
            )
        if parent.status != "complete" and not confirmed:
            raise Refusal(
                "parent_not_complete",
                f"Parent bag {parent.qr} is not complete ({parent.child_count}/{parent.capacity}). Load it anyway?",
                qr=parent.qr,
                parent=parent,
                bill=bill,
            )
        if bill.parent_count >= bill.capacity:
            raise Refusal(
                "bill_full",
                f"Bill {bill.bill_no} is full ({bill.parent_count}/{bill.capacity} parent bags).",
                qr=parent.qr,
                parent=parent,
                bill=bill,
            )
        _move_parent(session, user, bill, parent, onto=True)
        return BillChange(bill, parent)

    return in_transaction(session, work, user=user, scan_kind="load")


def _move_parent(session, user: User, bill: Bill, parent: Bag, *, onto: bool) -> None:
    """Put the locked ``parent`` on the locked ``bill`` (``onto``) or take it off: count, log and audit it.

    On PostgreSQL the two rows' changes, the scan's log and tally rows and
    the audit entry are one statement, and ``bill`` and ``parent`` take their
    new values as committed ones (a rollback expires them).
    """
    before = bill_snapshot(bill)
    sign = 1 if onto else -1
    new_bill_id = bill.id if onto else None
    kind, action = ("load", "bill.load_parent") if onto else ("unload", "bill.remove_parent")
    if session.get_bind().dialect.name != "postgresql":
        parent.bill_id = new_bill_id
        bill.parent_count += sign
        bill.child_count += sign * parent.child_count
        session.flush()
        count_scan(session, user, kind, parent=parent, bill_id=bill.id, parents_billed=sign)
        record(session, user, action, f"{bill.bill_no}/{parent.qr}", before=before, after=bill_snapshot(bill))
        return
    set_committed_value(parent, "bill_id", new_bill_id)
    set_committed_value(bill, "parent_count", bill.parent_count + sign)
    set_committed_value(bill, "child_count", bill.child_count + sign * parent.child_count)
    audited = entry_row(user, action, f"{bill.bill_no}/{parent.qr}", before=before, after=bill_snapshot(bill))
    values = scan_and_tally_values(user, kind, parent=parent, bill_id=bill.id, parents_billed=sign)
    values.update(
        {f"audit_{column}": value for column, value in audited.items()},
        moved_parent_id=parent.id,
        moved_bill_id=new_bill_id,
        counted_bill_id=bill.id,
        counted_parents=sign,
        counted_children=sign * parent.child_count,
    )
    note_changed_tally(session, parent.area_id)
    session.connection().execute(_move_statement(), values)


@functools.cache
def _move_statement():
    """:func:`_move_parent`'s one statement on PostgreSQL."""
    bag, bill = Bag.__table__, Bill.__table__
    moved = update(bag).where(bag.c.id == bindparam("moved_parent_id")).values(bill_id=bindparam("moved_bill_id"))
    counted = (
        update(bill)
        .where(bill.c.id == bindparam("counted_bill_id"))
        .values(
            parent_count=bill.c.parent_count + bindparam("counted_parents"),
            child_count=bill.c.child_count + bindparam("counted_children"),
        )
    )
    audited = entry_insert("audit_")
    return scan_and_tally_statement().add_cte(moved.cte("moved"), counted.cte("counted"), audited.cte("audited"))


def remove_parent(session, user: User, raw_bill_no: str | None, raw_qr: str | None) -> BillChange:
    """Take a parent bag off an open bill (``bill_closed``, ``parent_not_on_bill``)."""

    def work() -> BillChange:
        code = require_kind(raw_qr, "parent")
        bill = find_bill(session, raw_bill_no, lock=True)
        parent = visible_parent(session, user, code.value, lock=True)
        refuse_unless_open(bill, qr=parent.qr, parent=parent)
        if parent.bill_id != bill.id:
            raise Refusal(
                "parent_not_on_bill",
                f"Parent bag {parent.qr} is not on bill {bill.bill_no}.",
                qr=parent.qr,
                parent=parent,
                bill=bill,
            )
        _move_parent(session, user, bill, parent, onto=False)
        return BillChange(bill, parent)

    return in_transaction(session, work, user=user, scan_kind="unload")


def close_bill(session, user: User, raw_bill_no: str | None) -> BillChange:
    """Close an open bill; it needs at least one parent (``bill_empty``). Closing twice is a duplicate."""

    def work() -> BillChange:
        bill = find_bill(session, raw_bill_no, lock=True)
        if bill.status == "closed":
            return BillChange(bill, duplicate=True)
        refuse_unless_open(bill)
        if bill.parent_count == 0:
            raise Refusal("bill_empty", f"Bill {bill.bill_no} has no parent bags; load one before closing it.")
        before = bill_snapshot(bill)
        bill.status = "closed"
        bill.closed_at = utcnow()
        session.flush()
        add_to_tally(session, OFFICE_TALLY, bills_open=-1, bills_closed=1)
        record(session, user, "bill.close", bill.bill_no, before=before, after=bill_snapshot(bill))
        return BillChange(bill)

    return in_transaction(session, work, user=user)


def reopen_bill(session, user: User, raw_bill_no: str | None) -> BillChange:
    """Reopen a closed bill so parents can be loaded or removed again. Reopening an open bill is a duplicate."""

    def work() -> BillChange:
        bill = find_bill(session, raw_bill_no, lock=True)
        if bill.status == "open":
            return BillChange(bill, duplicate=True)
        refuse_if_cancelled(bill)
        before = bill_snapshot(bill)
        bill.status = "open"
        bill.closed_at = None
        session.flush()
        add_to_tally(session, OFFICE_TALLY, bills_open=1, bills_closed=-1)
        record(session, user, "bill.reopen", bill.bill_no, before=before, after=bill_snapshot(bill))
        return BillChange(bill)

    return in_transaction(session, work, user=user)


EDITABLE_FIELDS = ("destination", "vehicle_no", "description", "capacity")


def edit_bill(session, user: User, raw_bill_no: str | None, fields: dict) -> BillChange:
    """Correct the destination, vehicle number, description or capacity of an open bill.

    Only the fields present change, checked as when the bill was created; the
    capacity cannot go below the parent bags already loaded
    (``invalid_input``). A closed bill is ``bill_closed``, a cancelled one
    ``bill_cancelled``. An optional ``reason`` goes to the audit log.
    """

    def work() -> BillChange:
        bill = find_bill(session, raw_bill_no, lock=True)
        refuse_unless_open(bill)
        checks = {
            "destination": lambda: _text_field(fields, "destination", 200, "Destination"),
            "vehicle_no": lambda: _text_field(fields, "vehicle_no", 50, "Vehicle number", upper=True),
            "description": lambda: _text_field(fields, "description", 2000, "Description"),
            "capacity": lambda: _capacity(fields.get("capacity")),
        }
        changes = {name: checks[name]() for name in EDITABLE_FIELDS if name in fields}
        reason = _text_field(fields, "reason", 500, "Reason")
        if changes.get("capacity", bill.capacity) < bill.parent_count:
            raise Refusal(
                "invalid_input",
                f"Bill {bill.bill_no} already carries {bill.parent_count} parent bags; "
                "its capacity cannot be less than that.",
            )
        before = {name: getattr(bill, name) for name in changes}
        changed = {name: value for name, value in changes.items() if before[name] != value}
        if not changed:
            return BillChange(bill, duplicate=True)
        for name, value in changed.items():
            setattr(bill, name, value)
        session.flush()
        record(
            session,
            user,
            "bill.edit",
            bill.bill_no,
            before={name: before[name] for name in changed},
            after={**changed, "reason": reason},
        )
        return BillChange(bill)

    return in_transaction(session, work, user=user)


def cancel_bill(session, user: User, raw_bill_no: str | None, raw_reason) -> BillChange:
    """Cancel an open bill: its parent bags are unloaded and it stays listed, empty, for the record.

    Cancelling a cancelled bill is a ``duplicate``; a closed bill is
    ``bill_closed`` (reopen it first). Each parent's unloading is written to
    the scan log with reason ``cancelled``; the audit log names them all.
    """

    def work() -> BillChange:
        reason = reason_given(raw_reason)
        bill = find_bill(session, raw_bill_no, lock=True)
        if bill.status == "cancelled":
            return BillChange(bill, duplicate=True)
        refuse_unless_open(bill)
        before = bill_snapshot(bill)
        parents = list(
            session.scalars(
                select(Bag)
                .where(Bag.bill_id == bill.id)
                .order_by(Bag.id)
                .with_for_update(key_share=True, of=Bag)
                .execution_options(populate_existing=True)
            )
        )
        unloaded_by_area: dict[int, int] = {}
        # One moment for every unload: each area's tally adds them all at it.
        at = utcnow()
        for parent in parents:
            parent.bill_id = None
            log_scan(
                session,
                user=user,
                kind="unload",
                qr=parent.qr,
                bag_id=parent.id,
                parent_id=parent.id,
                bill_id=bill.id,
                area_id=parent.area_id,
                reason="cancelled",
                at=at,
            )
            unloaded_by_area[parent.area_id] = unloaded_by_area.get(parent.area_id, 0) + 1
        bill.status = "cancelled"
        bill.parent_count = 0
        bill.child_count = 0
        session.flush()
        # One tally row per area, in a fixed order.
        for area_id, count in sorted(unloaded_by_area.items()):
            add_to_tally(session, area_id, user_id=user.id, at=at, scans_ok=count, parents_billed=-count)
        add_to_tally(session, OFFICE_TALLY, bills_open=-1)
        record(
            session,
            user,
            "bill.cancel",
            bill.bill_no,
            before={**before, "parents": [parent.qr for parent in parents]},
            after={**bill_snapshot(bill), "reason": reason},
        )
        return BillChange(bill)

    return in_transaction(session, work, user=user)
