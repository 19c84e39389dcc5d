"""Read-side queries behind the pages and the JSON API.

Lists are newest first with keyset pagination on the primary key (``before``
an id), so a page costs the same on the millionth row as on the first. Every
query is scoped to the areas the user may see.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, or_, select
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
    statement = scoped(select(Bag.id), user, Bag.area_id)
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
        matching = Bag.qr.startswith(filters.q, autoescape=True)
        statement = statement.where(matching)
        if _few_matches(session, matching):
            # Materialised, the matches are read once on the code index; only their rows are sorted.
            found = statement.cte("found").prefix_with("MATERIALIZED", dialect="postgresql")
            statement = select(found.c.id)
    page = statement.order_by(statement.selected_columns.id.desc()).limit(limit + 1).subquery()
    bags = list(session.scalars(select(Bag).join(page, Bag.id == page.c.id).order_by(Bag.id.desc())))
    next_before = bags[limit - 1].id if len(bags) > limit else None
    return bags[:limit], next_before


# A prefix with fewer matches than this is read through the code index and sorted; one with
# more has matches all over the table, where walking the newest ids finds a page soonest.
FEW_MATCHES = 2_000


def _few_matches(session, matching) -> bool:
    """Whether fewer than ``FEW_MATCHES`` codes match (an index-only range on the code index).

    The planner guesses a prefix's matches are spread over the ids and walks
    the primary key back from the newest bag; for a prefix whose matches are
    all old that reads most of the table.
    """
    counted = select(func.count()).select_from(select(Bag.qr).where(matching).limit(FEW_MATCHES).subquery())
    return session.scalar(counted) < FEW_MATCHES


def children_of(session, parent: Bag) -> list[str]:
    return list(session.scalars(select(Bag.qr).where(Bag.parent_id == parent.id).order_by(Bag.linked_at, Bag.id)))


def parents_on_bill(session, bill: Bill) -> list[Bag]:
    return list(session.scalars(select(Bag).where(Bag.bill_id == bill.id).order_by(Bag.qr)))


def bill_page(session, *, limit: int, before: int | None = None, status: str | None = None):
    statement = select(Bill).order_by(Bill.id.desc()).limit(limit + 1)
    if before is not None:
        statement = statement.where(Bill.id < before)
    if status in ("open", "closed"):
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
