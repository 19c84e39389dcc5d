"""What must hold in the data, checked on the real rows with set-based SQL.

Each check is one statement that returns the offending rows (at most
``EXAMPLES`` of them), so the whole check stays a few table scans even on
800,000 bags. The same SQL runs on PostgreSQL and SQLite.
"""

from __future__ import annotations

from sqlalchemy import func, select, text

from . import ledger
from .models import TallyHour
from .stats import tally_figures

EXAMPLES = 10

CHILD_COUNTS = """
SELECT p.qr, p.child_count, coalesce(c.children, 0)
FROM bag p
LEFT JOIN (SELECT parent_id, count(*) AS children FROM bag WHERE parent_id IS NOT NULL GROUP BY parent_id) c
       ON c.parent_id = p.id
WHERE p.kind = 'parent' AND p.child_count <> coalesce(c.children, 0)
ORDER BY p.id LIMIT :limit
"""

OVER_CAPACITY = """
SELECT p.qr, p.capacity,
       CASE WHEN p.child_count > coalesce(c.children, 0) THEN p.child_count ELSE coalesce(c.children, 0) END
FROM bag p
LEFT JOIN (SELECT parent_id, count(*) AS children FROM bag WHERE parent_id IS NOT NULL GROUP BY parent_id) c
       ON c.parent_id = p.id
WHERE p.kind = 'parent' AND (p.child_count > p.capacity OR coalesce(c.children, 0) > p.capacity)
ORDER BY p.id LIMIT :limit
"""

BILL_COUNTS = """
SELECT b.bill_no, b.parent_count, coalesce(p.parents, 0), b.child_count, coalesce(c.children, 0)
FROM bill b
LEFT JOIN (SELECT bill_id, count(*) AS parents FROM bag WHERE bill_id IS NOT NULL GROUP BY bill_id) p
       ON p.bill_id = b.id
LEFT JOIN (SELECT parent.bill_id, count(*) AS children
           FROM bag child JOIN bag parent ON parent.id = child.parent_id
           WHERE parent.bill_id IS NOT NULL GROUP BY parent.bill_id) c
       ON c.bill_id = b.id
WHERE b.parent_count <> coalesce(p.parents, 0) OR b.child_count <> coalesce(c.children, 0)
ORDER BY b.id LIMIT :limit
"""

CHILDREN_ON_BILLS = "SELECT qr FROM bag WHERE kind = 'child' AND bill_id IS NOT NULL ORDER BY id LIMIT :limit"

NESTED_PARENTS = """
SELECT b.qr, b.kind, p.qr, p.kind
FROM bag b JOIN bag p ON p.id = b.parent_id
WHERE b.kind <> 'child' OR p.kind <> 'parent'
ORDER BY b.id LIMIT :limit
"""

PARENT_STATUS = """
SELECT qr, status, child_count, capacity FROM bag
WHERE kind = 'parent' AND (status NOT IN ('open', 'complete') OR (child_count >= capacity AND status <> 'complete'))
ORDER BY id LIMIT :limit
"""

CHILD_STATUS = """
SELECT qr, status, parent_id IS NOT NULL FROM bag
WHERE kind = 'child'
  AND NOT ((parent_id IS NOT NULL AND status = 'packed') OR (parent_id IS NULL AND status = 'loose'))
ORDER BY id LIMIT :limit
"""

EMPTY_CLOSED_BILLS = """
SELECT b.bill_no FROM bill b
WHERE b.status = 'closed' AND NOT EXISTS (SELECT 1 FROM bag p WHERE p.bill_id = b.id)
ORDER BY b.id LIMIT :limit
"""

# The latest accepted child/undo row of each linked child must be its scan into its current parent.
UNLOGGED_LINKS = """
SELECT c.qr, p.qr
FROM bag c
JOIN bag p ON p.id = c.parent_id
LEFT JOIN (SELECT bag_id, max(id) AS scan_id FROM scan
           WHERE kind IN ('child', 'undo') AND outcome = 'ok' AND bag_id IS NOT NULL GROUP BY bag_id) latest
       ON latest.bag_id = c.id
LEFT JOIN scan s ON s.id = latest.scan_id
WHERE c.kind = 'child' AND (s.id IS NULL OR s.kind <> 'child' OR s.parent_id IS NULL OR s.parent_id <> c.parent_id)
ORDER BY c.id LIMIT :limit
"""

BAGS_BY_AREA = """
SELECT area_id,
       sum(CASE WHEN kind = 'parent' THEN 1 ELSE 0 END),
       sum(CASE WHEN kind = 'child' THEN 1 ELSE 0 END),
       sum(CASE WHEN kind = 'parent' AND status = 'complete' THEN 1 ELSE 0 END),
       sum(CASE WHEN kind = 'parent' AND bill_id IS NOT NULL THEN 1 ELSE 0 END)
FROM bag GROUP BY area_id
"""

ACCEPTED_SCANS_BY_AREA = "SELECT area_id, count(*) FROM scan WHERE outcome = 'ok' GROUP BY area_id"

BILLS_BY_STATUS = "SELECT status, count(*) FROM bill GROUP BY status"


def find_violations(session) -> list[str]:
    """Every broken rule in the data, one sentence each (empty when all holds).

    A parent's ``child_count`` equals its children and never passes its
    capacity; a bill's ``parent_count`` and ``child_count`` equal what is on
    it; children never sit on a bill and only parents hold bags; a full
    parent is complete, a child is ``packed`` exactly when it has a parent;
    a closed bill is not empty; the dashboard tally (all areas and each area)
    equals a recount; and every linked child's latest accepted child/undo
    scan is its scan into its current parent.
    """
    connection = session.connection()
    violations: list[str] = []

    def check(sql: str, describe, what: str) -> None:
        rows = connection.execute(text(sql), {"limit": EXAMPLES + 1}).all()
        violations.extend(describe(*row) for row in rows[:EXAMPLES])
        if len(rows) > EXAMPLES:
            violations.append(f"... and more {what} (only the first {EXAMPLES} are listed).")

    check(
        CHILD_COUNTS,
        lambda qr, kept, counted: f"Parent {qr} has child_count {kept} but holds {counted} children.",
        "parents with a wrong child_count",
    )
    check(
        OVER_CAPACITY,
        lambda qr, capacity, held: f"Parent {qr} is over capacity: {held} children, capacity {capacity}.",
        "parents over capacity",
    )
    check(
        BILL_COUNTS,
        lambda bill_no, parents_kept, parents, children_kept, children: (
            f"Bill {bill_no} has parent_count {parents_kept} / child_count {children_kept}"
            f" but carries {parents} parents with {children} children."
        ),
        "bills with wrong counts",
    )
    check(CHILDREN_ON_BILLS, lambda qr: f"Child {qr} is on a bill; only parents are loaded.", "children on bills")
    check(
        NESTED_PARENTS,
        lambda qr, kind, holder, holder_kind: f"{kind.capitalize()} {qr} is inside {holder_kind} {holder}.",
        "bags inside something other than a parent",
    )
    check(
        PARENT_STATUS,
        lambda qr, status, count, capacity: f"Parent {qr} is {status} with {count}/{capacity} children.",
        "parents with an inconsistent status",
    )
    check(
        CHILD_STATUS,
        lambda qr, status, linked: f"Child {qr} is {status} but {'has' if linked else 'has no'} parent.",
        "children with an inconsistent status",
    )
    check(EMPTY_CLOSED_BILLS, lambda bill_no: f"Bill {bill_no} is closed but empty.", "empty closed bills")
    check(
        UNLOGGED_LINKS,
        lambda child, parent: f"Child {child} is in parent {parent}, but its latest accepted scan is not into it.",
        "linked children without their scan",
    )
    violations.extend(_tally_violations(session, connection))
    violations.extend(_hourly_violations(connection))
    return violations


HOURLY_SCANS = select(
    TallyHour.hour,
    TallyHour.area_id,
    TallyHour.user_id,
    TallyHour.reason,
    TallyHour.scans,
    TallyHour.first_at,
    TallyHour.last_at,
).where((TallyHour.scans != 0) | TallyHour.first_at.is_not(None) | TallyHour.last_at.is_not(None))
HOURLY_COMPLETE = select(TallyHour.area_id, func.sum(TallyHour.parents_complete)).group_by(TallyHour.area_id)
COMPLETE_BY_AREA = "SELECT area_id, count(*) FROM bag WHERE kind = 'parent' AND status = 'complete' GROUP BY area_id"


def _hourly_violations(connection) -> list[str]:
    """The per-hour tally the charts and reports read, against the scan log and the bags.

    Each hour, area, user and reason counts the scan-log rows it stands for
    and keeps the time of the first and the last of them; the parents
    completed over all hours of an area are its complete parents.
    """
    counted = {
        key: (found.scans, found.first_at, found.last_at) for key, found in ledger.scans_by_hour(connection).items()
    }
    kept = {tuple(row[:4]): (int(row[4]), row[5], row[6]) for row in connection.execute(HOURLY_SCANS)}
    nothing = (0, None, None)
    areas = dict(connection.execute(text("SELECT id, code FROM dispatch_area")).all())
    users = dict(connection.execute(text("SELECT id, username FROM app_user")).all())
    violations = []
    for key in sorted(set(counted) | set(kept), key=str):
        (scans, first_at, last_at), (found, found_first, found_last) = kept.get(key, nothing), counted.get(key, nothing)
        hour, area_id, user_id, reason = key
        row = (
            f"Hourly tally of {hour:%Y-%m-%d %H:%M} UTC, area {areas.get(area_id, 'none')},"
            f" user {users.get(user_id, 'none')}, {'refusals ' + reason if reason else 'accepted scans'}"
        )
        if scans != found:
            violations.append(f"{row}: {scans} but the scan log holds {found}.")
        elif (first_at, last_at) != (found_first, found_last):
            violations.append(
                f"{row}: first and last scan {_moment(first_at)} and {_moment(last_at)}"
                f" but the scan log's are {_moment(found_first)} and {_moment(found_last)}."
            )
    complete = {area_id: int(count) for area_id, count in connection.execute(text(COMPLETE_BY_AREA))}
    shown = {area_id: int(total or 0) for area_id, total in connection.execute(HOURLY_COMPLETE)}
    for area_id in sorted(set(complete) | set(shown)):
        if shown.get(area_id, 0) != complete.get(area_id, 0):
            violations.append(
                f"Hourly tally of area {areas.get(area_id, 'none')} shows {shown.get(area_id, 0)} parents completed"
                f" but {complete.get(area_id, 0)} parents are complete."
            )
    return violations[: EXAMPLES + 1]


def _moment(at) -> str:
    return "none" if at is None else f"{at:%Y-%m-%d %H:%M:%S.%f}"


def _tally_violations(session, connection) -> list[str]:
    """The dashboard figures, all areas and per area, against a recount of the rows."""
    bags = {row[0]: [int(value or 0) for value in row[1:]] for row in connection.execute(text(BAGS_BY_AREA))}
    scans = {area_id: int(count) for area_id, count in connection.execute(text(ACCEPTED_SCANS_BY_AREA))}
    bills = {status: int(count) for status, count in connection.execute(text(BILLS_BY_STATUS))}
    area_codes = dict(connection.execute(text("SELECT id, code FROM dispatch_area")).all())

    def recount(area_id: int | None) -> dict:
        rows = list(bags.values()) if area_id is None else [bags.get(area_id, [0, 0, 0, 0])]
        parents, children, complete, billed = (sum(row[column] for row in rows) for column in range(4))
        accepted = sum(scans.values()) if area_id is None else scans.get(area_id, 0)
        return {
            "parents": parents,
            "children": children,
            "complete parents": complete,
            "billed parents": billed,
            "open bills": bills.get("open", 0),
            "closed bills": bills.get("closed", 0),
            "accepted scans": accepted,
        }

    violations = []
    for area_id in [None, *sorted(area_codes)]:
        figures = tally_figures(session, area_id)
        shown = {
            "parents": figures["bags"]["parents"],
            "children": figures["bags"]["children"],
            "complete parents": figures["parents"]["complete"],
            "billed parents": figures["parents"]["billed"],
            "open bills": figures["bills"]["open"],
            "closed bills": figures["bills"]["closed"],
            "accepted scans": figures["scans"]["total"],
        }
        where = "all areas" if area_id is None else f"area {area_codes[area_id]}"
        for name, counted in recount(area_id).items():
            if shown[name] != counted:
                violations.append(f"Dashboard ({where}) shows {shown[name]} {name} but the rows count {counted}.")
    return violations
