"""Read-side queries behind the pages and the JSON API.

Lists are newest first with keyset pagination on the primary key (``before``
an id), so a page costs the same on the millionth row as on the first. Every
query is scoped to the areas the user may see.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from datetime import datetime
from functools import cache
from typing import NamedTuple

from sqlalchemy import and_, bindparam, func, literal_column, or_, select
from sqlalchemy.orm import aliased, joinedload

from .access import area_scope, may_see_area, scoped
from .codes import (
    AREA_CODE_MAX_LENGTH,
    BILL_NO_MAX_LENGTH,
    QR_MAX_LENGTH,
    USERNAME_MAX_LENGTH,
    normalise,
    without_controls,
)
from .errors import Refusal
from .exporting import Days, parse_day
from .models import AuditEntry, Bag, Bill, DispatchArea, Scan, User, utcnow
from .timeline import SLACK, first_id_from

SCAN_KINDS = ("parent", "child", "undo", "close", "load", "unload", "remove", "reopen")
OUTCOMES = ("ok", "rejected")
REASON_PATTERN = re.compile(r"^[a-z_]{1,32}$", re.ASCII)


@dataclass(frozen=True)
class ScanFilters:
    """The scan log's filters as the user chose them (None: not filtered)."""

    user: str | None = None
    outcome: str | None = None
    reason: str | None = None
    kind: str | None = None
    area: str | None = None
    first: datetime | None = None
    end: datetime | None = None

    @classmethod
    def from_args(cls, args) -> ScanFilters:
        """Read the filters from a query string; a value that cannot be one is ``invalid_input``."""
        outcome = (args.get("outcome") or "").strip().lower() or None
        kind = (args.get("kind") or "").strip().lower() or None
        reason = (args.get("reason") or "").strip().lower() or None
        if outcome is not None and outcome not in OUTCOMES:
            raise Refusal("invalid_input", f"An outcome is one of: {', '.join(OUTCOMES)}.")
        if kind is not None and kind not in SCAN_KINDS:
            raise Refusal("invalid_input", f"A kind of scan is one of: {', '.join(SCAN_KINDS)}.")
        if reason is not None and not REASON_PATTERN.fullmatch(reason):
            raise Refusal("invalid_input", "A reason is a code such as parent_full or duplicate.")
        first, end = day_bounds(args)
        return cls(
            user=without_controls(args.get("user")).strip()[:USERNAME_MAX_LENGTH] or None,
            outcome=outcome,
            reason=reason,
            kind=kind,
            area=normalise(args.get("area"))[:AREA_CODE_MAX_LENGTH] or None,
            first=first,
            end=end,
        )

    def chosen(self) -> dict:
        """The filters in use, as query-string arguments (for the pager's links)."""
        chosen = {field.name: getattr(self, field.name) for field in fields(self)}
        chosen.pop("first"), chosen.pop("end")
        return {name: value for name, value in chosen.items() if value}


def keyset_page(rows: list, limit: int) -> tuple[list, int | None]:
    """The first ``limit`` of ``rows`` (read as ``limit + 1``, newest first) and the ``before`` of the next page.

    The one row more than shown tells whether an older page exists; without
    it there is no next page and the cursor is None.
    """
    return rows[:limit], (rows[limit - 1].id if len(rows) > limit else None)


def day_bounds(args) -> tuple[datetime | None, datetime | None]:
    """The instants ``from`` (a day, included) and ``to`` (a day, included) of a list filter stand for."""
    first = parse_day(args.get("from"), "from")
    last = parse_day(args.get("to"), "to")
    if first is not None and last is not None and first > last:
        raise Refusal("invalid_input", f"'from' ({first.isoformat()}) is after 'to' ({last.isoformat()}).")
    start = Days(first, first).start if first is not None else None
    end = Days(last, last).end if last is not None else None
    return start, end


def days_chosen(args) -> dict:
    return {name: args.get(name).strip() for name in ("from", "to") if (args.get(name) or "").strip()}


# The scan's parent bag, aliased once: building an alias copies every column of the table.
SCAN_PARENT = aliased(Bag, name="scan_parent")


@cache
def _scan_log_select(scoped_to_area: bool):
    """The scan log's SELECT, newest first: ``limit`` (and ``scope``, the user's area) bound by name.

    Built once: a SELECT of ten columns, three joins and a subquery took a
    quarter of a millisecond to build on every page that shows scans.
    """
    parent = SCAN_PARENT
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
        .limit(bindparam("limit"))
    )
    if scoped_to_area:
        statement = statement.where(Scan.area_id == bindparam("scope"))
    return statement


def scan_rows(
    session,
    user: User,
    *,
    limit: int,
    before: int | None = None,
    bag: Bag | None = None,
    bill: Bill | None = None,
    filters: ScanFilters | None = None,
):
    """Scan log rows the user may see, newest first, with names instead of ids."""
    scope = area_scope(user)
    statement = _scan_log_select(scope is not None)
    if before is not None:
        statement = statement.where(Scan.id < before)
    if bag is not None:
        if bag.kind == "parent":
            statement = statement.where(or_(Scan.bag_id == bag.id, Scan.parent_id == bag.id))
        else:
            statement = statement.where(Scan.bag_id == bag.id)
    if bill is not None:
        statement = statement.where(Scan.bill_id == bill.id)
    if filters is not None:
        statement = _filtered_scans(session, statement, filters)
    return session.execute(statement, {"limit": limit, "scope": scope}).all()


def scan_page(session, user: User, *, limit: int, before: int | None = None, filters: ScanFilters | None = None):
    """One page of the scan log the user may see, newest first, and the ``before`` of the next (or None)."""
    return keyset_page(scan_rows(session, user, limit=limit + 1, before=before, filters=filters), limit)


def _filtered_scans(session, statement, filters: ScanFilters):
    """Each filter is served by an index: (user_id, id), (area_id, id), (kind, id), the partial
    (reason, id) and rejected-only (id) ones, and the day range by the primary key, as an id range."""
    if filters.user:
        user_id = session.scalar(select(User.id).where(User.username == filters.user))
        statement = statement.where(Scan.user_id == (user_id or -1))
    if filters.area:
        area_id = session.scalar(select(DispatchArea.id).where(DispatchArea.code == filters.area))
        statement = statement.where(Scan.area_id == (area_id or -1))
    if filters.kind:
        statement = statement.where(Scan.kind == filters.kind)
    if filters.outcome:
        statement = statement.where(Scan.outcome == filters.outcome)
    if filters.reason and not (filters.user or filters.kind or filters.outcome or filters.first or filters.end):
        # A reason alone (in an area or not): said as an equality, PostgreSQL may walk the primary key
        # backwards instead, betting that the reason is spread evenly over time; when the newest scans
        # are all accepted it reads them all. Said as a range, in the order of the (reason, id) and
        # (area_id, reason, id) indexes, only those indexes give the order the page needs.
        statement = (
            statement.where(Scan.reason.between(filters.reason, filters.reason), Scan.reason.is_not(None))
            .order_by(None)
            .order_by(Scan.reason.desc(), Scan.id.desc())
        )
    elif filters.reason:
        # With other filters the equality keeps the planner's estimates (a range underestimates the matches).
        statement = statement.where(Scan.reason == filters.reason, Scan.reason.is_not(None))
    if filters.first is not None:
        first = first_id_from(session, Scan.id, Scan.at, filters.first - SLACK)
        statement = statement.where(Scan.at >= filters.first, Scan.id >= first)
    if filters.end is not None:
        statement = statement.where(Scan.at < filters.end)
        # A range ending today or later needs no upper id: no row is that new yet.
        if filters.end + SLACK < utcnow():
            statement = statement.where(Scan.id < first_id_from(session, Scan.id, Scan.at, filters.end + SLACK))
    return statement


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
    return keyset_page(
        list(session.scalars(select(Bag).join(page, Bag.id == page.c.id).order_by(Bag.id.desc()))), limit
    )


# The statements every bag page and /api/bags/<qr> send, built once (values bound by name).
_BAG_WITH_ITS_BILL = select(Bag).options(joinedload(Bag.bill)).where(Bag.qr == bindparam("qr"))
_PARENT_WITH_ITS_BILL = select(Bag.qr, Bill).outerjoin(Bill, Bill.id == Bag.bill_id).where(Bag.id == bindparam("id"))
_CHILDREN = select(Bag.qr).where(Bag.parent_id == bindparam("id")).order_by(Bag.linked_at, Bag.id)


def visible_bag(session, user: User, raw_qr: str | None) -> Bag | None:
    """The bag ``raw_qr`` names, or None when it is unknown or outside the user's area.

    The bill a parent travels on is read in the same statement, so showing
    the bag's holders (:func:`holders_of`) finds it in the session.
    """
    code = normalise(raw_qr)
    if not 0 < len(code) <= QR_MAX_LENGTH:
        return None
    bag = session.scalars(_BAG_WITH_ITS_BILL, {"qr": code}).one_or_none()
    if bag is None or not may_see_area(user, bag.area_id):
        return None
    return bag


class BagRecord(NamedTuple):
    """What is shown with a bag: the parent it is in, the bill it travels on, its children, its latest scans."""

    parent_qr: str | None
    bill: Bill | None
    children: list[str]
    scans: list


def bag_record(session, user: User, bag: Bag, *, scans: int) -> BagRecord:
    """A bag's page and ``/api/bags/<qr>``: its holders, its children (a parent's) and its ``scans`` latest scans."""
    parent_qr, bill = holders_of(session, bag)
    children = children_of(session, bag) if bag.kind == "parent" else []
    return BagRecord(parent_qr, bill, children, scan_rows(session, user, limit=scans, bag=bag))


def bill_no_of(session, parent: Bag) -> str | None:
    """The number of the bill ``parent`` is loaded on, or None."""
    return session.get(Bill, parent.bill_id).bill_no if parent.bill_id is not None else None


def holders_of(session, bag: Bag) -> tuple[str | None, Bill | None]:
    """The code of the parent ``bag`` is in (children) and the bill it travels on: its own, or its parent's.

    One statement at most: a child's parent is read with its bill.
    """
    if bag.parent_id is None:
        return None, session.get(Bill, bag.bill_id) if bag.bill_id is not None else None
    parent_qr, bill = session.execute(_PARENT_WITH_ITS_BILL, {"id": bag.parent_id}).one()
    return parent_qr, bill


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
    return list(session.scalars(_CHILDREN, {"id": parent.id}))


def parents_on_bill(session, bill: Bill) -> list[Bag]:
    return list(session.scalars(select(Bag).where(Bag.bill_id == bill.id).order_by(Bag.qr)))


BILL_STATUSES = ("open", "closed", "cancelled")


def bill_exists(session, bill_no: str) -> bool:
    return session.scalar(select(Bill.id).where(Bill.bill_no == bill_no[:BILL_NO_MAX_LENGTH])) is not None


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


@dataclass(frozen=True)
class BillFilters:
    """The bill list's filters: ``q`` a bill number prefix or destination words, a status, created days."""

    q: str | None = None
    status: str | None = None
    first: datetime | None = None
    end: datetime | None = None

    @classmethod
    def from_args(cls, args) -> BillFilters:
        status = (args.get("status") or "").strip().lower() or None
        if status is not None and status not in BILL_STATUSES:
            raise Refusal("invalid_input", f"A bill status is one of: {', '.join(BILL_STATUSES)}.")
        q = " ".join("".join(ch for ch in (args.get("q") or "") if ch.isprintable()).split())[:100] or None
        first, end = day_bounds(args)
        return cls(q=q, status=status, first=first, end=end)


def bill_page(session, *, limit: int, before: int | None = None, filters: BillFilters | None = None):
    """One page of bills, newest first, and the id to pass as ``before`` for the next (or None).

    ``q`` finds bills whose number starts with it (the prefix index) or whose
    destination holds all of its words (a full-text index on PostgreSQL).
    """
    filters = filters or BillFilters()
    statement = select(Bill).order_by(Bill.id.desc()).limit(limit + 1)
    if before is not None:
        statement = statement.where(Bill.id < before)
    if filters.status:
        statement = statement.where(Bill.status == filters.status)
    if filters.q:
        statement = statement.where(
            or_(
                Bill.bill_no.startswith(normalise(filters.q), autoescape=True),
                _destination_has_words(session, filters.q),
            )
        )
    if filters.first is not None:
        statement = statement.where(Bill.created_at >= filters.first)
    if filters.end is not None:
        statement = statement.where(Bill.created_at < filters.end)
    return keyset_page(list(session.scalars(statement)), limit)


def _destination_has_words(session, words: str):
    if session.get_bind().dialect.name == "postgresql":
        # The expression of the index ix_bill_destination_words, so the planner can use it.
        return func.to_tsvector(literal_column("'simple'"), Bill.destination).op("@@")(
            func.plainto_tsquery(literal_column("'simple'"), words)
        )
    return and_(*(Bill.destination.contains(word, autoescape=True) for word in words.split()))


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
    return keyset_page(list(session.scalars(statement)), limit)
