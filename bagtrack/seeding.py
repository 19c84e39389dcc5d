"""Demo and benchmark data: areas, users, parents full of children, bills and a scan log.

Rows are generated in Python and streamed to the database in chunks
(PostgreSQL ``COPY``, or multi-row inserts where ``COPY`` cannot run, see
:func:`bagtrack.bulk.writer_for`; SQLite batched inserts), so memory stays flat whatever
the size. Bag ids are reserved up front, so parents, children and scans
reference one another without round trips; every counter is written already
consistent with the rows, and the dashboard tally is then added to with one
set-based statement. The result passes :func:`bagtrack.invariants.find_violations`.
"""

from __future__ import annotations

import contextlib
import math
import random
import re
import threading
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from queue import Empty, Queue
from typing import TypeVar

from flask import current_app
from sqlalchemy import insert, select, text

from . import accounts, ledger, timeline
from .bulk import writer_for
from .errors import Refusal
from .extensions import db
from .figures import announce as announce_changed_figures
from .models import OFFICE_TALLY, TALLY_FIELDS, Bill, DispatchArea, User, utcnow

T = TypeVar("T")

PARENT_PREFIX = "SB"
CHILD_PREFIX = "C"
CHILD_DIGITS = 9
DEFAULT_PARENT_PATTERN = r"^SB\d{5}$"
WIDER_PARENT_PATTERN = r"^SB\d{5,7}$"
SEED_DAYS = 30
SHARE_FULL = 0.96  # the rest are partly filled and still open
SHARE_BILLED = 0.6  # of the complete parents, the oldest first
SHARE_BILLS_CLOSED = 0.85  # the oldest bills; the newest stay open
PARENTS_PER_BILL = 250
MAX_BILL_CAPACITY = 500
DUPLICATE_RATE = 0.22  # scanners double-fire
REJECTED_RATE = 0.10
CHUNK_ROWS = 20_000
DESTINATIONS = ("Hamburg", "Rotterdam", "Antwerp", "Gdansk", "Lyon", "Milan", "Vienna", "Prague")

BAG_COLUMNS = (
    "id", "qr", "kind", "status", "area_id", "parent_id", "bill_id", "child_count", "capacity",
    "linked_by_id", "linked_at", "created_by_id", "created_at",
)  # fmt: skip
SCAN_COLUMNS = ("at", "kind", "outcome", "reason", "qr", "bag_id", "parent_id", "bill_id", "user_id", "area_id")


@dataclass
class SeedUser:
    username: str
    role: str
    area: str | None
    created: bool


@dataclass
class SeedReport:
    areas: list[str]
    users: list[SeedUser]
    password: str
    parents: int
    children: int
    bills: int
    scans: int


@dataclass
class BillPlan:
    bill_no: str
    size: int
    closed: bool
    first_parent: int = -1
    last_parent: int = -1


@dataclass
class SeedPlan:
    """What one seed writes, decided before anything is written."""

    capacity: int
    fills: array
    bills: list[BillPlan]
    billed: int
    first_parent_number: int
    parent_width: int
    first_child_number: int
    start: datetime
    gap_s: float
    children: int = field(init=False)
    scans: int = field(init=False)

    def __post_init__(self) -> None:
        self.children = sum(self.fills)
        self.scans = sum(scan_rows(fill, self.capacity) for fill in self.fills) + self.billed

    @property
    def parents(self) -> int:
        return len(self.fills)

    def bill_indexes(self) -> Iterator[int | None]:
        """For each parent in order, the bill it is loaded on (the oldest complete parents fill the bills)."""
        bill_index = 0
        used = 0
        for fill in self.fills:
            if fill == self.capacity and bill_index < len(self.bills):
                yield bill_index
                used += 1
                if used == self.bills[bill_index].size:
                    bill_index += 1
                    used = 0
            else:
                yield None

    def moments(self, index: int, fill: int) -> tuple[float, float]:
        """A parent's first moment (seconds after ``start``) and the step between its scans.

        Each parent's scans fit inside its own slot, so scan ids follow time.
        """
        return index * self.gap_s, self.gap_s * 0.8 / (fill + 3)


def scan_rows(fill: int, capacity: int) -> int:
    """Scan rows written for one parent, apart from its load: the same formula the stream follows."""
    return 2 + fill + round(DUPLICATE_RATE * fill) + round(REJECTED_RATE * fill) + int(fill == capacity)


def seed(
    session,
    *,
    parents: int,
    areas: int = 4,
    bills: int | None = None,
    seed_value: int = 1,
    progress: Callable[[int], Callable[[int], None]] | None = None,
) -> SeedReport:
    """Add ``parents`` parents (most full, some open), bills and a scan log to the database.

    Adds to what is there: areas A1..AK and the demo users are reused when
    they exist, QR codes and bill numbers continue after the highest existing
    ones. Parent codes must match ``BAGTRACK_PARENT_QR``; when the default
    pattern has no room left the refusal says how to widen it. On PostgreSQL
    the bag and scan tables are locked, reads included, until the seed
    commits (see :meth:`bagtrack.bulk.PostgresWriter.lock`), so run it while the floor is
    quiet. The session's own transaction is ended first. ``progress`` is
    called with the number of rows about to be written and returns the
    function that is then told each chunk's row count.
    """
    if parents < 1:
        raise Refusal("invalid_input", "--parents must be at least 1.")
    if not 1 <= areas <= 99:
        raise Refusal("invalid_input", "--areas must be from 1 to 99.")
    if bills is not None and bills < 0:
        raise Refusal("invalid_input", "--bills must not be negative.")
    # The rows are written on a connection of their own: the session must not hold SQLite's write lock.
    session.rollback()
    # A plan that would be refused must be refused before demo users exist whose password was never shown.
    with db.engine.connect() as connection:
        _plan(connection, parents=parents, bills=bills, rng=random.Random(seed_value))

    area_rows = _ensure_areas(session, areas)
    password = accounts.generate_password()
    seed_users = _ensure_users(session, area_rows, password)
    user_ids = dict(session.execute(select(User.username, User.id).where(User.username.like("demo-%"))).all())
    dispatchers = [user_ids[_dispatcher_name(area.code)] for area in area_rows]
    biller_id = user_ids["demo-biller"]
    area_ids = [area.id for area in area_rows]
    area_codes = [area.code for area in area_rows]
    session.rollback()

    with db.engine.begin() as connection:
        writer = writer_for(connection)
        writer.lock()
        plan = _plan(connection, parents=parents, bills=bills, rng=random.Random(seed_value))
        advance = progress(plan.parents + plan.children + plan.scans) if progress is not None else None
        bill_ids = _insert_bills(connection, plan, biller_id)
        scan_floor = connection.execute(text("SELECT coalesce(max(id), 0) FROM scan")).scalar_one()
        first_bag_id = writer.reserve_bag_ids(plan.parents + plan.children)
        stream = Stream(plan, area_ids, dispatchers, biller_id, bill_ids, first_bag_id, random.Random(seed_value + 1))
        for table, columns, count, payload in ahead(writer.encode(chunk) for chunk in stream.chunks()):
            writer.write(table, columns, payload)
            if advance is not None:
                advance(count)
        writer.finish()
        _add_to_tally(connection, first_bag_id, first_bag_id + plan.parents + plan.children - 1, bill_ids, scan_floor)
    announce_changed_figures(None, [*area_ids, OFFICE_TALLY])
    writer.analyze()
    return SeedReport(
        areas=area_codes,
        users=seed_users,
        password=password,
        parents=plan.parents,
        children=plan.children,
        bills=len(plan.bills),
        scans=plan.scans,
    )


def _ensure_areas(session, count: int) -> list[DispatchArea]:
    found = []
    for number in range(1, count + 1):
        code = f"A{number}"
        area = session.scalar(select(DispatchArea).where(DispatchArea.code == code))
        found.append(area or accounts.add_area(session, None, code, f"Area {number}"))
    return found


def _dispatcher_name(area_code: str) -> str:
    return f"demo-{area_code.lower()}"


def _ensure_users(session, areas: list[DispatchArea], password: str) -> list[SeedUser]:
    """One admin, one biller and one dispatcher per area; existing ones keep their password."""
    wanted = [("demo-admin", "admin", None), ("demo-biller", "biller", None)]
    wanted += [(_dispatcher_name(area.code), "dispatcher", area.code) for area in areas]
    users = []
    for username, role, area_code in wanted:
        exists = session.scalar(select(User.id).where(User.username == username)) is not None
        if not exists:
            accounts.create_user(session, None, username, role, area_code=area_code, password=password)
        users.append(SeedUser(username, role, area_code, created=not exists))
    return users


def _plan(connection, *, parents: int, bills: int | None, rng: random.Random) -> SeedPlan:
    capacity = current_app.config["BAGTRACK_PARENT_CAPACITY"]
    first_parent, width = _parent_numbers(connection, parents)
    first_child = _next_child_number(connection)
    fills = array("H", (capacity if rng.random() < SHARE_FULL else rng.randrange(capacity) for _ in range(parents)))
    complete = sum(1 for fill in fills if fill == capacity)
    billed = round(SHARE_BILLED * complete)
    if bills is None:
        bills = math.ceil(billed / PARENTS_PER_BILL)
    elif bills > complete:
        raise Refusal("invalid_input", f"--bills {bills} needs as many complete parents; this seed has {complete}.")
    else:
        billed = min(max(billed, bills), bills * MAX_BILL_CAPACITY)
    bill_plans = _plan_bills(connection, billed, bills)
    span_s = SEED_DAYS * 86_400
    plan = SeedPlan(
        capacity=capacity,
        fills=fills,
        bills=bill_plans,
        billed=billed,
        first_parent_number=first_parent,
        parent_width=width,
        first_child_number=first_child,
        start=utcnow() - timedelta(seconds=span_s),
        gap_s=span_s / parents,
    )
    _check_child_codes(plan)
    for index, bill_index in enumerate(plan.bill_indexes()):
        if bill_index is not None:
            bill = plan.bills[bill_index]
            bill.first_parent = index if bill.first_parent < 0 else bill.first_parent
            bill.last_parent = index
    return plan


def _plan_bills(connection, billed: int, count: int) -> list[BillPlan]:
    if count == 0:
        return []
    existing = connection.execute(text("SELECT bill_no FROM bill WHERE bill_no LIKE 'BL-%'")).scalars()
    numbers = [int(match.group(1)) for bill_no in existing if (match := re.fullmatch(r"BL-(\d+)", bill_no))]
    first_number = max(numbers, default=0) + 1
    sizes = [billed // count + (1 if index < billed % count else 0) for index in range(count)]
    closed = max(1, round(SHARE_BILLS_CLOSED * count))
    return [
        BillPlan(bill_no=f"BL-{first_number + index:06d}", size=size, closed=index < closed)
        for index, size in enumerate(sizes)
    ]


def _parent_numbers(connection, count: int) -> tuple[int, int]:
    """The first parent number and the digit width that keeps SB codes within ``BAGTRACK_PARENT_QR``."""
    pattern = current_app.config["BAGTRACK_PARENT_QR"]
    if connection.dialect.name == "postgresql":
        highest = "SELECT max(substr(qr, 3)::bigint) FROM bag WHERE kind = 'parent' AND qr ~ '^SB[0-9]{1,18}$'"
    else:
        highest = (
            "SELECT max(CAST(substr(qr, 3) AS INTEGER)) FROM bag"
            " WHERE kind = 'parent' AND qr GLOB 'SB[0-9]*' AND substr(qr, 3) NOT GLOB '*[^0-9]*'"
        )
    first = (connection.execute(text(highest)).scalar() or 0) + 1
    last = first + count - 1
    for width in range(5, 19):
        if last < 10**width and all(
            pattern.fullmatch(f"{PARENT_PREFIX}{number:0{width}d}") for number in (first, last)
        ):
            return first, width
    codes = f"{PARENT_PREFIX}{first:05d}..{PARENT_PREFIX}{last:05d}"
    if pattern.pattern == DEFAULT_PARENT_PATTERN:
        raise Refusal(
            "invalid_input",
            f"{count} new parents need codes {codes}, beyond the default BAGTRACK_PARENT_QR {DEFAULT_PARENT_PATTERN}"
            f" (99,999 parents); set e.g. BAGTRACK_PARENT_QR='{WIDER_PARENT_PATTERN}' for the app and the seed.",
        )
    raise Refusal("invalid_input", f"Parent codes {codes} do not match BAGTRACK_PARENT_QR {pattern.pattern}.")


def _next_child_number(connection) -> int:
    if connection.dialect.name == "postgresql":
        highest = "SELECT max(qr) FROM bag WHERE kind = 'child' AND qr ~ '^C[0-9]{9}$'"
    else:
        highest = f"SELECT max(qr) FROM bag WHERE kind = 'child' AND qr GLOB 'C{'[0-9]' * CHILD_DIGITS}'"
    qr = connection.execute(text(highest)).scalar()
    return int(qr[1:]) + 1 if qr else 1


def _check_child_codes(plan: SeedPlan) -> None:
    parent_pattern = current_app.config["BAGTRACK_PARENT_QR"]
    child_pattern = current_app.config["BAGTRACK_CHILD_QR"]
    last = plan.first_child_number + plan.children - 1
    if last >= 10**CHILD_DIGITS:
        raise Refusal("invalid_input", f"Child codes would pass {CHILD_PREFIX}{'9' * CHILD_DIGITS}.")
    for number in (plan.first_child_number, last):
        code = f"{CHILD_PREFIX}{number:0{CHILD_DIGITS}d}"
        if not child_pattern.fullmatch(code) or parent_pattern.fullmatch(code):
            raise Refusal(
                "invalid_input",
                f"Child code {code} must match BAGTRACK_CHILD_QR {child_pattern.pattern}"
                f" and not BAGTRACK_PARENT_QR {parent_pattern.pattern}.",
            )


def _insert_bills(connection, plan: SeedPlan, biller_id: int) -> list[int]:
    """Write the bills with their final counts; returns their ids in plan order."""
    if not plan.bills:
        return []
    rng = random.Random(len(plan.bills))
    rows = []
    for bill in plan.bills:
        first_at, _ = plan.moments(bill.first_parent, plan.capacity)
        last_at, step = plan.moments(bill.last_parent, plan.capacity)
        load_at = last_at + (plan.capacity + 2) * step
        spare = 0 if bill.closed else rng.randrange(1, 50)
        rows.append(
            {
                "bill_no": bill.bill_no,
                "status": "closed" if bill.closed else "open",
                "capacity": min(MAX_BILL_CAPACITY, bill.size + spare),
                "destination": rng.choice(DESTINATIONS),
                "vehicle_no": f"TRK-{rng.randrange(1000, 10000)}",
                "description": "",
                "parent_count": bill.size,
                "child_count": bill.size * plan.capacity,
                "created_by_id": biller_id,
                "created_at": plan.start + timedelta(seconds=first_at),
                "closed_at": plan.start + timedelta(seconds=load_at + step) if bill.closed else None,
            }
        )
    statement = insert(Bill.__table__).returning(Bill.__table__.c.id, sort_by_parameter_order=True)
    return list(connection.execute(statement, rows).scalars())


class Stream:
    """The bag and scan rows of a plan, in chunks of at most ``CHUNK_ROWS``.

    Per parent, in time order: a misread rejected parent scan, the accepted
    parent scan, then each child's accepted scan (some preceded by a rejected
    one, some followed by a double-fired duplicate), a ``parent_full``
    rejection once it is complete, and its load onto a bill when it has one.
    """

    def __init__(self, plan, area_ids, dispatcher_ids, biller_id, bill_ids, first_bag_id, rng):
        self.plan = plan
        self.area_ids = area_ids
        self.dispatcher_ids = dispatcher_ids
        self.biller_id = biller_id
        self.bill_ids = bill_ids
        self.first_bag_id = first_bag_id
        self.rng = rng

    def chunks(self) -> Iterator[tuple[str, tuple[str, ...], list[tuple]]]:
        bags: list[tuple] = []
        scans: list[tuple] = []
        for parent_bags, parent_scans in self._parents():
            bags += parent_bags
            scans += parent_scans
            if len(bags) >= CHUNK_ROWS or len(scans) >= CHUNK_ROWS:
                # Scans reference bags: the bags go first.
                yield "bag", BAG_COLUMNS, bags
                yield "scan", SCAN_COLUMNS, scans
                bags, scans = [], []
        if bags:
            yield "bag", BAG_COLUMNS, bags
        if scans:
            yield "scan", SCAN_COLUMNS, scans

    def _parents(self) -> Iterator[tuple[list[tuple], list[tuple]]]:
        """Each parent's bag rows (itself, then its children) and scan rows."""
        plan, rng = self.plan, self.rng
        capacity = plan.capacity
        bag_id = self.first_bag_id
        child_number = plan.first_child_number
        previous_child_qr = None
        for index, (fill, bill_index) in enumerate(zip(plan.fills, plan.bill_indexes(), strict=True)):
            bags: list[tuple] = []
            scans: list[tuple] = []
            area_id = self.area_ids[index % len(self.area_ids)]
            user_id = self.dispatcher_ids[index % len(self.dispatcher_ids)]
            bill_id = self.bill_ids[bill_index] if bill_index is not None else None
            begin, step = plan.moments(index, fill)
            parent_id = bag_id
            parent_qr = f"{PARENT_PREFIX}{plan.first_parent_number + index:0{plan.parent_width}d}"
            parent_at = self._at(begin + 0.3 * step)
            status = "complete" if fill == capacity else "open"
            bags.append(
                (parent_id, parent_qr, "parent", status, area_id, None, bill_id, fill, capacity,
                 None, None, user_id, parent_at)
            )  # fmt: skip
            scans.append(
                (self._at(begin), "parent", "rejected", "invalid_qr", f"{parent_qr[:2]}-{parent_qr[2:]}",
                 None, None, None, user_id, area_id)
            )  # fmt: skip
            scans.append((parent_at, "parent", "ok", None, parent_qr, parent_id, parent_id, None, user_id, area_id))
            bag_id += 1
            duplicates = set(rng.sample(range(fill), round(DUPLICATE_RATE * fill)))
            rejected = set(rng.sample(range(fill), round(REJECTED_RATE * fill)))
            first_child_qr = None
            for position in range(fill):
                moment = begin + (position + 1) * step
                child_qr = f"{CHILD_PREFIX}{child_number:0{CHILD_DIGITS}d}"
                if position in rejected:
                    scans.append(
                        self._rejected_child(
                            moment - 0.4 * step, parent_qr, parent_id, child_qr, previous_child_qr, user_id, area_id
                        )
                    )
                linked_at = self._at(moment)
                bags.append(
                    (bag_id, child_qr, "child", "packed", area_id, parent_id, None, 0, 0,
                     user_id, linked_at, user_id, linked_at)
                )  # fmt: skip
                scans.append((linked_at, "child", "ok", None, child_qr, bag_id, parent_id, None, user_id, area_id))
                if position in duplicates:
                    scans.append(
                        (self._at(moment + 0.2 * step), "child", "ok", "duplicate", child_qr, bag_id, parent_id,
                         None, user_id, area_id)
                    )  # fmt: skip
                first_child_qr = first_child_qr or child_qr
                bag_id += 1
                child_number += 1
            if fill == capacity:
                spare_qr = f"{CHILD_PREFIX}{rng.randrange(10**CHILD_DIGITS):0{CHILD_DIGITS}d}"
                scans.append(
                    (self._at(begin + (fill + 1) * step), "child", "rejected", "parent_full", spare_qr, None,
                     parent_id, None, user_id, area_id)
                )  # fmt: skip
            if bill_id is not None:
                scans.append(
                    (self._at(begin + (fill + 2) * step), "load", "ok", None, parent_qr, parent_id, parent_id,
                     bill_id, self.biller_id, area_id)
                )  # fmt: skip
            previous_child_qr = first_child_qr or previous_child_qr
            yield bags, scans

    def _rejected_child(self, moment, parent_qr, parent_id, child_qr, previous_child_qr, user_id, area_id) -> tuple:
        """A refused child scan as the scanner would log it: a misread, a parent code, a child packed elsewhere."""
        reason = self.rng.choice(("invalid_qr", "wrong_kind", "child_in_other_parent"))
        if reason == "child_in_other_parent" and previous_child_qr is None:
            reason = "wrong_kind"
        if reason == "invalid_qr":
            return (self._at(moment), "child", "rejected", reason, f"{child_qr[:4]}-{child_qr[4:]}", None, None,
                    None, user_id, area_id)  # fmt: skip
        if reason == "wrong_kind":
            return (self._at(moment), "child", "rejected", reason, parent_qr, None, None, None, user_id, area_id)
        return (self._at(moment), "child", "rejected", reason, previous_child_qr, None, parent_id, None, user_id,
                area_id)  # fmt: skip

    def _at(self, seconds: float) -> str:
        return str(self.plan.start + timedelta(seconds=seconds))


def ahead(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Produce ``items`` in a thread of its own, up to ``depth`` ahead of the consumer.

    The database works on one chunk while Python builds the next: the
    driver waits for the server without holding the GIL.
    """
    queue: Queue = Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                queue.put(item)
            queue.put(done)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            queue.put(exc)

    producer = threading.Thread(target=produce, name="seed-rows", daemon=True)
    producer.start()
    try:
        while (item := queue.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while producer.is_alive():
            with contextlib.suppress(Empty):
                queue.get(timeout=0.1)
        producer.join()


# The new rows' tally figures per area and UTC quarter hour; Python turns quarters into local days and hours.
TALLY_FROM_NEW_ROWS = """
SELECT area_id, quarter, sum(parents), sum(children), sum(parents_complete), sum(parents_billed),
       sum(bills_open), sum(bills_closed), sum(scans_ok), sum(scans_rejected)
FROM (
    SELECT area_id, {bag_quarter} AS quarter,
           sum(CASE WHEN kind = 'parent' THEN 1 ELSE 0 END) AS parents,
           sum(CASE WHEN kind = 'child' THEN 1 ELSE 0 END) AS children,
           sum(CASE WHEN kind = 'parent' AND status = 'complete' THEN 1 ELSE 0 END) AS parents_complete,
           sum(CASE WHEN kind = 'parent' AND bill_id IS NOT NULL THEN 1 ELSE 0 END) AS parents_billed,
           0 AS bills_open, 0 AS bills_closed, 0 AS scans_ok, 0 AS scans_rejected
    FROM bag WHERE id BETWEEN :first_bag AND :last_bag
    GROUP BY area_id, {bag_quarter}
    UNION ALL
    SELECT {office}, {bag_quarter}, 0, 0, 0, 0,
           sum(CASE WHEN status = 'open' THEN 1 ELSE 0 END), sum(CASE WHEN status = 'closed' THEN 1 ELSE 0 END), 0, 0
    FROM bill WHERE id BETWEEN :first_bill AND :last_bill
    GROUP BY {bag_quarter}
    UNION ALL
    SELECT coalesce(area_id, {office}), {scan_quarter}, 0, 0, 0, 0, 0, 0,
           sum(CASE WHEN outcome = 'ok' THEN 1 ELSE 0 END), sum(CASE WHEN outcome = 'rejected' THEN 1 ELSE 0 END)
    FROM scan WHERE id > :scan_floor
    GROUP BY coalesce(area_id, {office}), {scan_quarter}
) AS seeded
GROUP BY area_id, quarter
"""


def _add_to_tally(connection, first_bag: int, last_bag: int, bill_ids: list[int], scan_floor: int) -> None:
    """Add the new rows to the tally: per area and local day, and per local hour, user and reason.

    A seeded parent counts as completed in the hour it was created, by no user.
    """
    dialect = connection.dialect.name
    sql = TALLY_FROM_NEW_ROWS.format(
        bag_quarter=timeline.quarter_sql(dialect, "created_at"),
        scan_quarter=timeline.quarter_sql(dialect, "at"),
        office=OFFICE_TALLY,
    )
    rows = connection.execute(
        text(sql),
        {
            "first_bag": first_bag,
            "last_bag": last_bag,
            "first_bill": min(bill_ids, default=0),
            "last_bill": max(bill_ids, default=-1),
            "scan_floor": scan_floor,
        },
    )
    days: dict[tuple, list[int]] = {}
    new_scans = ledger.scans_by_hour(connection, "id > :floor", floor=scan_floor)
    hours = {key: [found.scans, 0, found.first_at, found.last_at] for key, found in new_scans.items()}
    for area_id, quarter_no, *figures in rows:
        moment = timeline.quarter_moment(quarter_no)
        day = days.setdefault((area_id, timeline.local_day(moment)), [0] * len(TALLY_FIELDS))
        for index, value in enumerate(figures):
            day[index] += int(value or 0)
        complete = int(figures[TALLY_FIELDS.index("parents_complete")] or 0)
        if complete:
            hours.setdefault((timeline.hour_start(moment), area_id, 0, ""), [0, 0, None, None])[1] += complete
    if days:
        connection.execute(
            ledger.tally_statement(dialect, hourly=False),
            [
                {"tally_area_id": area_id, "day": day, "shard": 0, **dict(zip(TALLY_FIELDS, figures, strict=True))}
                for (area_id, day), figures in days.items()
            ],
        )
    ledger.add_hours(connection, hours)
