"""The office's corrections of what the floor scanned (billers and admins).

Each function is one transaction in the lock order of every other write
(bill → parent → child), keeps the counters, the bill totals and the
dashboard tally in step, and writes the audit log with the ``reason`` the
office gave.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete

from .audit import reason_given, record
from .billing import bill_snapshot, lock_bill_of
from .codes import QR_MAX_LENGTH, normalise, require_kind
from .errors import PARENT_ON_BILL_TO_REOPEN, Refusal
from .ledger import add_to_tally, count_scan, in_transaction
from .models import Bag, Bill, User
from .scanning import find_bag, visible_parent


@dataclass
class Correction:
    parent: Bag | None
    child: Bag | None = None
    bill: Bill | None = None
    duplicate: bool = False


def remove_child(session, user: User, raw_parent: str | None, raw_child: str | None, raw_reason) -> Correction:
    """Take any child out of a parent, whoever scanned it and whenever.

    The parent may sit on an open bill (its totals follow) but not on a
    closed one (``bill_closed``); a child not in this parent is
    ``child_not_in_parent``. The child stays, loose; a complete
    parent becomes open again.
    """

    def work() -> Correction:
        reason = reason_given(raw_reason)
        parent_code = require_kind(raw_parent, "parent")
        child_code = require_kind(raw_child, "child")
        bill, parent = lock_bill_of(session, user, parent_code.value)
        if bill is not None and bill.status != "open":
            raise Refusal(
                "bill_closed",
                f"Parent bag {parent.qr} is on closed bill {bill.bill_no}; reopen the bill to change it.",
                qr=child_code.value,
                parent=parent,
                bill=bill,
            )
        child = find_bag(session, child_code.value, lock=True)
        if child is None or child.parent_id != parent.id:
            raise Refusal(
                "child_not_in_parent",
                f"Child bag {child_code.value} is not in parent bag {parent.qr}.",
                qr=child_code.value,
                parent=parent,
            )
        before = {"parent_status": parent.status, "child_count": parent.child_count}
        bill_before = bill_snapshot(bill) if bill is not None else None
        was_complete = parent.status == "complete"
        child.parent_id = None
        child.status = "loose"
        child.linked_by_id = None
        child.linked_at = None
        parent.child_count -= 1
        parent.status = "open"
        if bill is not None:
            bill.child_count -= 1
        session.flush()
        count_scan(
            session,
            user,
            "remove",
            parent=parent,
            bag=child,
            bill_id=parent.bill_id,
            parents_complete=-int(was_complete),
        )
        after = {"parent_status": parent.status, "child_count": parent.child_count, "reason": reason}
        if bill is not None:
            after["bill"] = {"bill_no": bill.bill_no, "before": bill_before, "after": bill_snapshot(bill)}
        record(session, user, "parent.remove_child", f"{parent.qr}/{child.qr}", before=before, after=after)
        return Correction(parent, child, bill)

    return in_transaction(session, work, user=user)


def reopen_parent(session, user: User, raw_qr: str | None, raw_reason) -> Correction:
    """Open a parent that was closed short again, so children can be scanned into it.

    An open parent is a ``duplicate`` success; a parent on a bill is frozen
    (``parent_on_bill``); a full parent is complete by its count and stays so
    (``parent_full``: remove a child first).
    """

    def work() -> Correction:
        reason = reason_given(raw_reason)
        code = require_kind(raw_qr, "parent")
        parent = visible_parent(session, user, code.value, lock=True)
        if parent.status == "open":
            return Correction(parent, duplicate=True)
        if parent.bill_id is not None:
            raise Refusal(
                "parent_on_bill",
                PARENT_ON_BILL_TO_REOPEN.format(qr=parent.qr),
                qr=parent.qr,
                parent=parent,
            )
        if parent.child_count >= parent.capacity:
            raise Refusal(
                "parent_full",
                f"Parent bag {parent.qr} is full ({parent.child_count}/{parent.capacity}); "
                "remove a child to open it again.",
                qr=parent.qr,
                parent=parent,
            )
        parent.status = "open"
        session.flush()
        count_scan(session, user, "reopen", parent=parent, parents_complete=-1)
        record(
            session,
            user,
            "parent.reopen",
            parent.qr,
            before={"status": "complete", "child_count": parent.child_count},
            after={"status": "open", "child_count": parent.child_count, "reason": reason},
        )
        return Correction(parent)

    return in_transaction(session, work, user=user)


def delete_bag(session, user: User, raw_qr: str | None, raw_reason) -> str:
    """Delete a bag created by mistake (admin): an empty parent on no bill, or a loose child.

    Anything else is ``bag_in_use``. The bag's scan-log rows stay, with its
    code; the dashboard counts it no more. Returns the deleted code.
    """

    def work() -> str:
        reason = reason_given(raw_reason)
        code = normalise(raw_qr)[:QR_MAX_LENGTH]
        bag = find_bag(session, code, lock=True) if code else None
        if bag is None:
            raise Refusal("not_found", f"Bag {code} was not found.")
        if bag.is_parent and (bag.child_count > 0 or bag.bill_id is not None):
            where = "has children" if bag.child_count > 0 else "is on a bill"
            raise Refusal("bag_in_use", f"Parent bag {bag.qr} {where}; only an empty parent on no bill can be deleted.")
        if not bag.is_parent and bag.parent_id is not None:
            raise Refusal("bag_in_use", f"Child bag {bag.qr} is in a parent; remove it from the parent first.")
        before = {"kind": bag.kind, "status": bag.status, "area_id": bag.area_id, "created_at": bag.created_at}
        area_id, kind, complete = bag.area_id, bag.kind, bag.status == "complete"
        session.execute(delete(Bag).where(Bag.id == bag.id))
        session.expunge(bag)
        if kind == "parent":
            add_to_tally(session, area_id, parents=-1, parents_complete=-int(complete))
        else:
            add_to_tally(session, area_id, children=-1)
        record(session, user, f"{kind}.delete", code, before=before, after={"reason": reason})
        return code

    return in_transaction(session, work, user=user)
