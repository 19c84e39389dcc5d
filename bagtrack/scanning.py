"""Filling parent bags with child bags on the floor.

Every function here is one transaction. A parent is locked (``FOR NO KEY
UPDATE``, or by the ``UPDATE`` that counts a child in it) before anything
about it is decided, so concurrent scanners on one
parent queue on that row and the capacity can never be exceeded. Locks are
always taken in the order bill → parent → child, so these transactions
cannot deadlock one another.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import NamedTuple

from flask import current_app
from sqlalchemy import bindparam, case, func, insert, literal, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.orm.attributes import set_committed_value

from .access import area_scope, may_see_area
from .audit import record
from .codes import AREA_CODE_MAX_LENGTH, normalise, require_kind
from .errors import PARENT_EMPTY_TO_CLOSE, PARENT_ON_BILL, Refusal
from .ledger import (
    add_to_tally,
    count_scan,
    hour_upsert_from,
    in_transaction,
    insert_ignoring_duplicates,
    note_changed_tally,
    tally_key,
    tally_upsert_from,
)
from .models import AreaRef, Bag, DispatchArea, Scan, User, utcnow
from .prepared import Prepared
from .queries import children_of


class OpenParent(NamedTuple):
    """A parent as a one-statement scan read or left it (read like a :class:`Bag`)."""

    id: int
    qr: str
    status: str
    child_count: int
    capacity: int
    area_id: int
    area: AreaRef
    bill_id: int | None = None
    kind: str = "parent"

    @classmethod
    def from_row(cls, row, qr: str) -> OpenParent:
        """The parent ``qr`` from a statement's row: its columns, its area's code and name, ``bill_id`` if read."""
        area = AreaRef(row.area_id, row.area_code, row.area_name)
        bill_id = getattr(row, "bill_id", None)
        return cls(row.id, qr, row.status, row.child_count, row.capacity, row.area_id, area, bill_id)


class NewChild(NamedTuple):
    id: int
    qr: str
    parent_id: int
    status: str = "packed"
    kind: str = "child"


@dataclass
class ParentScan:
    parent: Bag | OpenParent
    created: bool
    # The parent's child codes in the order they went in, read in the scan's transaction.
    children: list[str]


@dataclass
class ChildScan:
    parent: Bag | OpenParent
    child: Bag | NewChild
    created: bool
    duplicate: bool


@dataclass
class Undo:
    parent: Bag
    child: Bag


@dataclass
class CloseShort:
    parent: Bag
    duplicate: bool


def find_bag(session, qr: str, *, lock: bool = False) -> Bag | None:
    statement = select(Bag).where(Bag.qr == qr)
    if lock:
        # The session keeps objects across commits; a locked read must replace their stale values.
        statement = statement.with_for_update(key_share=True, of=Bag).execution_options(populate_existing=True)
    return session.scalars(statement).one_or_none()


def visible_parent(session, user: User, qr: str, *, lock: bool = False) -> Bag:
    """The parent ``qr``, or ``parent_not_found`` if it is unknown or out of the user's area."""
    return _refuse_unless_visible(user, find_bag(session, qr, lock=lock), qr)


def _refuse_unless_visible(user: User, parent: Bag | None, qr: str) -> Bag:
    if parent is None or not may_see_area(user, parent.area_id):
        raise Refusal("parent_not_found", f"Parent bag {qr} was not found.", qr=qr)
    if parent.kind != "parent":
        raise Refusal("wrong_kind", f"{qr} is a child bag, not a parent bag.", qr=qr)
    return parent


def area_for_new_parent(session, user: User, area_code: str | None) -> int:
    """A dispatcher's new parents go to their own area; billers and admins name one."""
    scope = area_scope(user)
    if scope is not None:
        return scope
    code = normalise(area_code)
    if not code:
        raise Refusal("invalid_input", "Choose the area for this new parent bag.")
    area_id = session.scalar(select(DispatchArea.id).where(DispatchArea.code == code))
    if area_id is None:
        raise Refusal("invalid_input", f"There is no dispatch area {code[:AREA_CODE_MAX_LENGTH]}.")
    return area_id


def scan_parent(session, user: User, raw_qr: str | None, area_code: str | None = None) -> ParentScan:
    """Start or resume filling a parent bag.

    An unknown valid parent code creates the parent (in the dispatcher's area,
    or the area a biller/admin names); a known one is resumed. A parent in
    another area than a dispatcher's is ``parent_not_found``.
    """

    def work() -> ParentScan:
        code = require_kind(raw_qr, "parent")
        if session.get_bind().dialect.name == "postgresql":
            resumed = _resume_in_one_statement(session, user, code.value)
            if resumed is not None:
                return resumed
        parent = find_bag(session, code.value)
        created = False
        if parent is None:
            area_id = area_for_new_parent(session, user, area_code)
            new_id = insert_ignoring_duplicates(
                session,
                Bag,
                {
                    "qr": code.value,
                    "kind": "parent",
                    "status": "open",
                    "area_id": area_id,
                    "child_count": 0,
                    "capacity": current_app.config["BAGTRACK_PARENT_CAPACITY"],
                    "created_by_id": user.id,
                    "created_at": utcnow(),
                },
                "qr",
            )
            created = new_id is not None
            # Ours, or created a moment ago by another scanner.
            parent = find_bag(session, code.value)
        parent = _refuse_unless_visible(user, parent, code.value)
        # One tally row per transaction: two shard locks taken in random order could deadlock.
        count_scan(session, user, "parent", parent=parent, bill_id=parent.bill_id, parents=int(created))
        return ParentScan(parent, created, [] if created else children_of(session, parent))

    return in_transaction(session, work, user=user, scan_kind="parent")


def _parent_columns() -> tuple:
    """What :meth:`OpenParent.from_row` reads of a parent: its own columns, and its area's code and name."""
    bag, area = Bag.__table__, DispatchArea.__table__
    return (
        bag.c.id,
        bag.c.status,
        bag.c.child_count,
        bag.c.capacity,
        bag.c.area_id,
        select(area.c.code).where(area.c.id == bag.c.area_id).scalar_subquery().label("area_code"),
        select(area.c.name).where(area.c.id == bag.c.area_id).scalar_subquery().label("area_name"),
    )


def _one_statement_parent_resume(scoped_to_area: bool):
    """The common case of :func:`scan_parent` as one PostgreSQL statement: a known parent, resumed.

    Reads the parent with its area and bill, logs the scan, adds it to the
    tally and returns the parent's child codes in the order they went in (what
    the handheld shows): one statement instead of four. It returns no row for
    a code that is unknown, of another area or of a child bag, and writes
    nothing then; the caller creates or refuses statement by statement.
    """
    bag, scan = Bag.__table__, Scan.__table__
    child = bag.alias("child")
    found = select(*_parent_columns(), bag.c.bill_id).where(bag.c.qr == bindparam("parent_qr"), bag.c.kind == "parent")
    if scoped_to_area:
        found = found.where(bag.c.area_id == bindparam("scope"))
    found = found.cte("found")
    logged = (
        insert(scan)
        .from_select(
            ["at", "kind", "outcome", "qr", "bag_id", "parent_id", "bill_id", "user_id", "area_id"],
            select(
                bindparam("now"),
                literal("parent"),
                literal("ok"),
                bindparam("parent_qr"),
                found.c.id,
                found.c.id,
                found.c.bill_id,
                bindparam("user_id"),
                found.c.area_id,
            ),
        )
        .cte("logged")
    )
    tallied = tally_upsert_from(found.c.area_id, scans_ok=literal(1)).cte("tallied")
    hour_tallied = hour_upsert_from(
        found.c.area_id, at=bindparam("now"), scans=literal(1), parents_complete=literal(0)
    ).cte("hour_tallied")
    children = (
        select(func.array_agg(aggregate_order_by(child.c.qr, child.c.linked_at, child.c.id)))
        .where(child.c.parent_id == found.c.id)
        .scalar_subquery()
    )
    return select(*found.c, children.label("children")).add_cte(logged, tallied, hour_tallied)


# The floor's one-statement scans, prepared per name and area scope: (name, scoped) -> Prepared.
_ONE_STATEMENT_SCANS: dict[tuple[str, bool], Prepared] = {}


def _one_statement_scan_row(session, user: User, name: str, build, **params):
    """Run the one-statement scan ``build(scoped_to_area)`` for ``user``; its row, or None.

    Besides ``params`` it is given the user's area scope, the user, the
    moment and the tally's key.
    """
    scope = area_scope(user)
    key = (name, scope is not None)
    statement = _ONE_STATEMENT_SCANS.get(key)
    if statement is None:
        prepared_name = f"{name}_in_area" if scope is not None else name
        statement = _ONE_STATEMENT_SCANS[key] = Prepared(prepared_name, build(scope is not None))
    now = utcnow()
    return statement.execute(
        session.connection(),
        {**params, "scope": scope, "user_id": user.id, "now": now, **tally_key(now)},
    ).one_or_none()


def _resume_in_one_statement(session, user: User, parent_qr: str) -> ParentScan | None:
    """A known parent of the user's area, resumed in one statement (PostgreSQL); None for anything else."""
    row = _one_statement_scan_row(session, user, "parent_resume", _one_statement_parent_resume, parent_qr=parent_qr)
    if row is None:
        return None
    note_changed_tally(session, row.area_id)
    return ParentScan(OpenParent.from_row(row, parent_qr), created=False, children=list(row.children or ()))


def scan_child(session, user: User, raw_parent: str | None, raw_qr: str | None) -> ChildScan:
    """Put a child bag into a parent bag.

    Checked in this order: both codes valid and of the right kind; the parent
    exists in the user's area (``parent_not_found``); a child already in this
    parent is a success with ``duplicate`` and changes nothing, even on a full
    or billed parent; a parent on a bill is frozen (``parent_on_bill``); a
    child in another parent is refused (``child_in_other_parent``); a complete
    parent is ``parent_full``. An unknown child is created. A loose child
    outside a dispatcher's area is ``not_found`` (404, like any bag of
    another area); a biller or admin may move one into a parent of another
    area, and the child then counts in the parent's area, not its old one.
    The child that fills the parent to capacity completes it in the same
    transaction.
    """

    def work() -> ChildScan:
        parent_code = require_kind(raw_parent, "parent")
        child_code = require_kind(raw_qr, "child")
        if session.get_bind().dialect.name == "postgresql":
            taken = _new_child_into_open_parent(session, user, parent_code.value, child_code.value)
        else:
            taken = _new_child_in_steps(session, user, parent_code.value, child_code.value)
        if taken is not None:
            return taken
        parent = visible_parent(session, user, parent_code.value, lock=True)
        child = find_bag(session, child_code.value, lock=True)
        created = False
        if child is None:
            # New, but the parent was full, billed or busy a moment ago: decide on its locked row now.
            _refuse_unless_parent_takes_children(parent, child_code.value)
            created = (
                insert_ignoring_duplicates(
                    session,
                    Bag,
                    {
                        "qr": child_code.value,
                        "kind": "child",
                        "status": "loose",
                        "area_id": parent.area_id,
                        "created_by_id": user.id,
                        "created_at": utcnow(),
                    },
                    "qr",
                )
                is not None
            )
            child = find_bag(session, child_code.value, lock=True)
        if child.kind != "child":
            raise Refusal("wrong_kind", f"{child.qr} is a parent bag, not a child bag.", qr=child.qr, parent=parent)
        if child.parent_id == parent.id:
            count_scan(session, user, "child", parent=parent, bag=child, bill_id=parent.bill_id, reason="duplicate")
            return ChildScan(parent, child, created=False, duplicate=True)
        if child.parent_id is not None:
            # Frozen parents say so first; otherwise name the other parent if the user may see it.
            _refuse_unless_parent_takes_children(parent, child.qr, check_full=False)
            other = session.execute(select(Bag.qr, Bag.area_id).where(Bag.id == child.parent_id)).one()
            if may_see_area(user, other.area_id):
                message = f"Child bag {child.qr} is already in parent bag {other.qr}."
            else:
                message = f"Child bag {child.qr} is already packed in another area."
            raise Refusal("child_in_other_parent", message, qr=child.qr, parent=parent)
        if not may_see_area(user, child.area_id):
            # A loose child of another area is as unknown to a dispatcher as any of its bags.
            raise Refusal(
                "not_found", f"Child bag {child.qr} was not found in your dispatch area.", qr=child.qr, parent=parent
            )
        _refuse_unless_parent_takes_children(parent, child.qr)
        # A loose child: just created, or packed before and taken out again. It takes the parent's area.
        moved_from = child.area_id if child.area_id != parent.area_id else None
        child.parent_id = parent.id
        child.status = "packed"
        child.area_id = parent.area_id
        child.linked_by_id = user.id
        child.linked_at = utcnow()
        session.flush()
        if moved_from is not None:
            # Counted in its old area until now; the scan below counts it in the parent's. Two tally
            # rows in one transaction could deadlock with another such move, which is then retried.
            add_to_tally(session, moved_from, children=-1)
        _count_child_in(session, user, parent, child, created=created, moved=moved_from is not None)
        return ChildScan(parent, child, created=created, duplicate=False)

    return in_transaction(session, work, user=user, scan_kind="child")


def _new_child_in_steps(session, user: User, parent_qr: str, child_qr: str) -> ChildScan | None:
    """The floor's common case, statement by statement: an open parent takes one more, new, child.

    None when it does not apply (the parent is not open in the user's area,
    or the child exists): the caller then decides on locked rows.
    """
    parent = _count_a_child_in_open_parent(session, user, parent_qr)
    if parent is None:
        return None
    # Insert the child already linked; if it exists after all, give the place back.
    linked_at = utcnow()
    child_id = insert_ignoring_duplicates(
        session,
        Bag,
        {
            "qr": child_qr,
            "kind": "child",
            "status": "packed",
            "area_id": parent.area_id,
            "parent_id": parent.id,
            "linked_by_id": user.id,
            "linked_at": linked_at,
            "created_by_id": user.id,
            "created_at": linked_at,
        },
        "qr",
    )
    if child_id is None:
        _set_child_count(session, parent.id, parent.child_count - 1)
        return None
    child = NewChild(child_id, child_qr, parent.id)
    _log_child_scan(session, user, parent, child, created=True)
    return ChildScan(parent, child, created=True, duplicate=False)


def _one_statement_child_scan(scoped_to_area: bool):
    """The common case of :func:`scan_child` as one PostgreSQL statement.

    Counts the child in the parent (the same locking ``UPDATE`` as
    :func:`_open_parent_update`, skipped when the child code is known), inserts
    the child already linked, logs the scan and adds it to the tally: one
    statement instead of four. Every part sees the same snapshot, so a child
    inserted concurrently is caught by the insert's conflict, not the check.
    """
    bag, scan = Bag.__table__, Scan.__table__
    known = bag.alias("known")
    counted = (
        _open_parent_update(scoped_to_area)
        .where(~select(known.c.id).where(known.c.qr == bindparam("child_qr")).exists())
        .cte("counted")
    )
    linked = (
        postgresql.insert(bag)
        .from_select(
            [
                "qr",
                "kind",
                "status",
                "child_count",
                "capacity",
                "area_id",
                "parent_id",
                "linked_by_id",
                "linked_at",
                "created_by_id",
                "created_at",
            ],
            select(
                bindparam("child_qr"),
                literal("child"),
                literal("packed"),
                literal(0),
                literal(0),
                counted.c.area_id,
                counted.c.id,
                bindparam("user_id"),
                bindparam("now"),
                bindparam("user_id"),
                bindparam("now"),
            ),
        )
        .on_conflict_do_nothing(index_elements=["qr"])
        .returning(bag.c.id, bag.c.parent_id, bag.c.area_id)
        .cte("linked")
    )
    logged = (
        insert(scan)
        .from_select(
            ["at", "kind", "outcome", "qr", "bag_id", "parent_id", "user_id", "area_id"],
            select(
                bindparam("now"),
                literal("child"),
                literal("ok"),
                bindparam("child_qr"),
                linked.c.id,
                linked.c.parent_id,
                bindparam("user_id"),
                linked.c.area_id,
            ),
        )
        .cte("logged")
    )
    completed = select(case((counted.c.status == "complete", 1), else_=0)).scalar_subquery()
    tallied = (
        # Read from the inserted child: no child, no tally.
        tally_upsert_from(linked.c.area_id, scans_ok=literal(1), children=literal(1), parents_complete=completed).cte(
            "tallied"
        )
    )
    hour_tallied = hour_upsert_from(
        linked.c.area_id, at=bindparam("now"), scans=literal(1), parents_complete=completed
    ).cte("hour_tallied")
    return select(
        counted.c.id,
        counted.c.status,
        counted.c.child_count,
        counted.c.capacity,
        counted.c.area_id,
        counted.c.area_code,
        counted.c.area_name,
        select(linked.c.id).scalar_subquery().label("child_id"),
    ).add_cte(logged, tallied, hour_tallied)


def _new_child_into_open_parent(session, user: User, parent_qr: str, child_qr: str) -> ChildScan | None:
    """:func:`_new_child_in_steps` in one statement (PostgreSQL)."""
    row = _one_statement_scan_row(
        session, user, "child_scan", _one_statement_child_scan, parent_qr=parent_qr, child_qr=child_qr
    )
    if row is None:
        return None
    if row.child_id is None:
        # Inserted by another scanner after this statement's snapshot: give the place back.
        _set_child_count(session, row.id, row.child_count - 1)
        return None
    note_changed_tally(session, row.area_id)
    parent = OpenParent.from_row(row, parent_qr)
    return ChildScan(parent, NewChild(row.child_id, child_qr, row.id), created=True, duplicate=False)


def _open_parent_update(scoped_to_area: bool):
    """One statement that locks an open, unbilled, not yet full parent and counts one more child in it."""
    bag = Bag.__table__
    child_count = bag.c.child_count + 1
    statement = (
        update(bag)
        .where(
            bag.c.qr == bindparam("parent_qr"),
            bag.c.kind == "parent",
            bag.c.status == "open",
            bag.c.bill_id.is_(None),
            bag.c.child_count < bag.c.capacity,
        )
        .values(child_count=child_count, status=case((child_count >= bag.c.capacity, "complete"), else_="open"))
        .returning(*_parent_columns())
    )
    if scoped_to_area:
        statement = statement.where(bag.c.area_id == bindparam("scope"))
    return statement


_OPEN_PARENT_UPDATES = {False: _open_parent_update(False), True: _open_parent_update(True)}


def _count_a_child_in_open_parent(session, user: User, parent_qr: str) -> OpenParent | None:
    """Count one more child in ``parent_qr`` if it is open, on no bill and in the user's area.

    Returns the parent as it now is (locked until the transaction ends), or
    None when it is anything else: unknown, out of area, full, complete or
    billed. The statement waits for a concurrent scan of the same parent and
    then judges the row it left, so the capacity holds under any load.
    """
    scope = area_scope(user)
    row = (
        session.connection()
        .execute(_OPEN_PARENT_UPDATES[scope is not None], {"parent_qr": parent_qr, "scope": scope})
        .one_or_none()
    )
    if row is None:
        return None
    return OpenParent.from_row(row, parent_qr)


_PARENT_COUNT_UPDATE = (
    update(Bag.__table__)
    .where(Bag.__table__.c.id == bindparam("parent"))
    .values(
        child_count=bindparam("new_count"),
        status=case((bindparam("new_count") >= Bag.__table__.c.capacity, "complete"), else_="open"),
    )
)


def _set_child_count(session, parent_id: int, child_count: int) -> None:
    session.connection().execute(_PARENT_COUNT_UPDATE, {"parent": parent_id, "new_count": child_count})


def _count_child_in(session, user: User, parent: Bag, child: Bag, *, created: bool, moved: bool = False) -> None:
    """Count a newly linked child in its (locked) parent, completing it at capacity."""
    child_count = parent.child_count + 1
    _set_child_count(session, parent.id, child_count)
    set_committed_value(parent, "child_count", child_count)
    set_committed_value(parent, "status", "complete" if child_count >= parent.capacity else "open")
    _log_child_scan(session, user, parent, child, created=created, moved=moved)


def _log_child_scan(
    session, user: User, parent: Bag | OpenParent, child: Bag | NewChild, *, created: bool, moved: bool = False
) -> None:
    """Log the child scan; the parent's area counts the child when it is new there (created, or moved in)."""
    new_here, completed = int(created or moved), int(parent.status == "complete")
    count_scan(session, user, "child", parent=parent, bag=child, children=new_here, parents_complete=completed)


def _refuse_unless_parent_takes_children(parent: Bag, child_qr: str, *, check_full: bool = True) -> None:
    if parent.bill_id is not None:
        raise Refusal(
            "parent_on_bill",
            PARENT_ON_BILL.format(qr=parent.qr),
            qr=child_qr,
            parent=parent,
        )
    if check_full and (parent.status == "complete" or parent.child_count >= parent.capacity):
        raise Refusal(
            "parent_full",
            f"Parent bag {parent.qr} is complete ({parent.child_count}/{parent.capacity}).",
            qr=child_qr,
            parent=parent,
        )


def undo_last(session, user: User, raw_parent: str | None) -> Undo:
    """Take the user's most recent child out of a parent.

    Only a child this user linked within ``BAGTRACK_UNDO_WINDOW_S`` seconds
    qualifies (``nothing_to_undo`` otherwise). The child bag stays, unlinked;
    a complete parent becomes open again. A parent on a bill is frozen
    (``parent_on_bill``).
    """

    def work() -> Undo:
        parent_code = require_kind(raw_parent, "parent")
        parent = visible_parent(session, user, parent_code.value, lock=True)
        if parent.bill_id is not None:
            raise Refusal(
                "parent_on_bill",
                PARENT_ON_BILL.format(qr=parent.qr),
                qr=parent.qr,
                parent=parent,
            )
        since = utcnow() - timedelta(seconds=current_app.config["BAGTRACK_UNDO_WINDOW_S"])
        child = session.scalars(
            select(Bag)
            .where(Bag.parent_id == parent.id, Bag.linked_by_id == user.id, Bag.linked_at >= since)
            .order_by(Bag.linked_at.desc(), Bag.id.desc())
            .limit(1)
            .with_for_update(key_share=True, of=Bag)
            .execution_options(populate_existing=True)
        ).one_or_none()
        if child is None:
            raise Refusal(
                "nothing_to_undo",
                f"You scanned no child into {parent.qr} in the last "
                f"{current_app.config['BAGTRACK_UNDO_WINDOW_S']} seconds.",
                qr=parent.qr,
                parent=parent,
            )
        child.parent_id = None
        child.status = "loose"
        child.linked_by_id = None
        child.linked_at = None
        was_complete = parent.status == "complete"
        parent.child_count -= 1
        parent.status = "open"
        session.flush()
        count_scan(session, user, "undo", parent=parent, bag=child, parents_complete=-int(was_complete))
        return Undo(parent, child)

    return in_transaction(session, work, user=user, scan_kind="undo")


def close_parent(session, user: User, raw_qr: str | None) -> CloseShort:
    """Mark a parent complete before it is full (biller/admin).

    An already complete parent is a ``duplicate`` success; an empty one is
    ``parent_empty``. The action is written to the audit log.
    """

    def work() -> CloseShort:
        code = require_kind(raw_qr, "parent")
        parent = visible_parent(session, user, code.value, lock=True)
        if parent.status == "complete":
            return CloseShort(parent, duplicate=True)
        if parent.child_count == 0:
            raise Refusal(
                "parent_empty",
                PARENT_EMPTY_TO_CLOSE.format(qr=parent.qr),
                qr=parent.qr,
                parent=parent,
            )
        parent.status = "complete"
        session.flush()
        count_scan(session, user, "close", parent=parent, bill_id=parent.bill_id, parents_complete=1)
        record(
            session,
            user,
            "parent.close_short",
            parent.qr,
            before={"status": "open", "child_count": parent.child_count},
            after={"status": "complete", "child_count": parent.child_count},
        )
        return CloseShort(parent, duplicate=False)

    return in_transaction(session, work, user=user, scan_kind="close")
