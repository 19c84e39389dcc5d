"""Read-side queries behind the pages and the JSON API.

Lists are newest first with keyset pagination on the primary key (``before``
an id), so a page costs the same on the millionth row as on the first. Every
query is scoped to the areas the user may see.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.orm import aliased

from .access import area_scope, scoped
from .models import AuditEntry, Bag, Bill, DispatchArea, Scan, User


def scan_rows(
    session, user: User, *, limit: int, before: int | None = None, bag: Bag | None = None, bill: Bill | None = None
):
    """Scan log rows the user may see, newest first, with names instead of ids."""
    parent = aliased(Bag)
    statement = (
        select(
            Scan.id,
            Scan.at,
            Scan.kind,
            Scan.outcome,
            Scan.reason,
            Scan.qr,
            parent.qr.label("parent_qr"),
            # A subquery, not a join: PostgreSQL would rather hash the whole bill table than look up a few rows.
            select(Bill.bill_no).where(Bill.id == Scan.bill_id).scalar_subquery().label("bill_no"),
            User.username,
            DispatchArea.code.label("area_code"),
        )
        .outerjoin(parent, parent.id == Scan.parent_id)
        .outerjoin(User, User.id == Scan.user_id)
        .outerjoin(DispatchArea, DispatchArea.id == Scan.area_id)
        .order_by(Scan.id.desc())
        .limit(limit)
    )
    statement = scoped(statement, user, Scan.area_id)
    if before is not None:
        statement = statement.where(Scan.id < before)
    if bag is not None:
        if bag.kind == "parent":
            statement = statement.where(or_(Scan.bag_id == bag.id, Scan.parent_id == bag.id))
        else:
            statement = statement.where(Scan.bag_id == bag.id)
    if bill is not None:
        statement = statement.where(Scan.bill_id == bill.id)
    return session.execute(statement).all()


@dataclass
class BagFilters:
    kind: str | None = None
    status: str | None = None
    area: str | None = None
    bill: str | None = None
    q: str | None = None


KINDS = ("parent", "child")
STATUSES = ("open", "complete", "packed", "loose")
KIND_OF_STATUS = {"open": "parent", "complete": "parent", "packed": "child", "loose": "child"}


def bag_page(session, user: User, filters: BagFilters, *, limit: int, before: int | None = None):
    """One page of the bag list and the id to pass as ``before`` for the next (or None)."""
    statement = select(Bag).order_by(Bag.id.desc()).limit(limit + 1)
    statement = scoped(statement, user, Bag.area_id)
    if before is not None:
        statement = statement.where(Bag.id < before)
    # A status belongs to one kind: naming it lets the (kind, status, id) indexes serve a status alone.
    kind = filters.kind if filters.kind in KINDS else KIND_OF_STATUS.get(filters.status)
    if kind is not None:
        statement = statement.where(Bag.kind == kind)
    if filters.status in STATUSES:
        statement = statement.where(Bag.status == filters.status)
    if filters.area:
        area_id = session.scalar(select(DispatchArea.id).where(DispatchArea.code == filters.area))
        statement = statement.where(Bag.area_id == (area_id or -1))
    if filters.bill:
        bill_id = session.scalar(select(Bill.id).where(Bill.bill_no == filters.bill))
        statement = statement.where(Bag.bill_id == (bill_id or -1))
    if filters.q:
        statement = statement.where(Bag.qr.startswith(filters.q, autoescape=True))
    bags = list(session.scalars(statement))
    next_before = bags[limit - 1].id if len(bags) > limit else None
    return bags[:limit], next_before


def holders_of(session, bag: Bag) -> tuple[str | None, Bill | None]:
    """The code of the parent ``bag`` is in (children) and the bill it travels on: its own, or its parent's."""
    if bag.parent_id is None:
        return None, session.get(Bill, bag.bill_id) if bag.bill_id is not None else None
    parent_qr, bill_id = session.execute(select(Bag.qr, Bag.bill_id).where(Bag.id == bag.parent_id)).one()
    return parent_qr, session.get(Bill, bill_id) if bill_id is not None else None


def children_of(session, parent: Bag) -> list[str]:
    return list(session.scalars(select(Bag.qr).where(Bag.parent_id == parent.id).order_by(Bag.linked_at, Bag.id)))


def parents_on_bill(session, bill: Bill) -> list[Bag]:
    return list(session.scalars(select(Bag).where(Bag.bill_id == bill.id).order_by(Bag.qr)))


BILL_STATUSES = ("open", "closed", "cancelled")


def bill_exists(session, bill_no: str) -> bool:
    return session.scalar(select(Bill.id).where(Bill.bill_no == bill_no[:50])) is not None


def bill_people(session, bill: Bill) -> dict:
    """Who created ``bill`` and who closed it last (None when unknown or still open), for its dispatch note."""
    created_by = session.scalar(select(User.username).where(User.id == bill.created_by_id))
    closed_by = None
    if bill.status == "closed":
        closed_by = session.scalar(
            select(AuditEntry.actor)
            .where(AuditEntry.target == bill.bill_no, AuditEntry.action == "bill.close")
            .order_by(AuditEntry.id.desc())
            .limit(1)
        )
    return {"created_by": created_by, "closed_by": closed_by}


def bill_page(session, *, limit: int, before: int | None = None, status: str | None = None):
    statement = select(Bill).order_by(Bill.id.desc()).limit(limit + 1)
    if before is not None:
        statement = statement.where(Bill.id < before)
    if status in BILL_STATUSES:
        statement = statement.where(Bill.status == status)
    bills = list(session.scalars(statement))
    next_before = bills[limit - 1].id if len(bills) > limit else None
    return bills[:limit], next_before


def areas_for(session, user: User) -> list[DispatchArea]:
    statement = select(DispatchArea).order_by(DispatchArea.code)
    scope = area_scope(user)
    if scope is not None:
        statement = statement.where(DispatchArea.id == scope)
    return list(session.scalars(statement))


def all_users(session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


def audit_page(session, *, limit: int, before: int | None = None):
    """One page of the audit log, newest first, and the id to pass as ``before`` for the next (or None)."""
    statement = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit + 1)
    if before is not None:
        statement = statement.where(AuditEntry.id < before)
    entries = list(session.scalars(statement))
    next_before = entries[limit - 1].id if len(entries) > limit else None
    return entries[:limit], next_before
