"""The bags file (columns ``qr, kind, area, parent``): its row checks, its staging table, its checks and writes."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import NamedTuple

from flask import current_app

from ..bulk import writer_for
from ..codes import classify, normalise, require_kind
from ..errors import PARENT_ON_BILL, Refusal
from ..models import User, utcnow
from .files import shown
from .layout import TOO_MANY_CELLS, VERDICT_TABLE, RowProblem, add_tallies, execute, judge, sql_message

# From this many bags on, foreign keys are set aside while the rows are written and checked once
# at the end, as the seed does (see ``PostgresWriter.lock``): per row, they double the time of the load.
BULK_ROWS = 50_000
REMEMBERED_PARENTS = 4096


class BagRow(NamedTuple):
    """A staged row of a bags file, in the staging table's column order; a refused one has only its code."""

    row_no: int
    qr: str | None = None
    kind: str | None = None
    area_id: int | None = None
    parent_qr: str | None = None
    code: str | None = None
    message: str | None = None


class BagLayout:
    """The bags file: its row checks, its staging table, its set-based checks and writes."""

    kind = "bags"
    columns = ("qr", "kind", "area", "parent")
    stage_table = "import_bag"

    def __init__(self):
        self.parent_codes: dict[str, str] = {}
        self.bulk = False

    def create_stage(self, connection) -> None:
        execute(
            connection,
            "CREATE TEMPORARY TABLE import_bag (row_no BIGINT PRIMARY KEY, qr VARCHAR(64), kind VARCHAR(6),"
            " area_id INTEGER, parent_qr VARCHAR(64), code VARCHAR(32), message TEXT)",
        )
        execute(connection, "CREATE TEMPORARY TABLE import_fill (parent_qr VARCHAR(64) PRIMARY KEY, children BIGINT)")
        execute(connection, VERDICT_TABLE)
        self.writer = writer_for(connection)

    def drop_stage(self, connection) -> None:
        for table in ("import_bag", "import_fill", "import_verdict"):
            execute(connection, f"DROP TABLE {table}")

    def check(self, row_no: int, cells: dict[str, str] | None, areas: dict[str, int]) -> BagRow:
        """One staged row: the bag it would create, or its refusal."""
        if cells is None:
            return BagRow(row_no, code="invalid_input", message=TOO_MANY_CELLS)
        try:
            return self._bag(row_no, cells, areas)
        except (Refusal, RowProblem) as problem:
            return BagRow(row_no, code=problem.code, message=problem.message)

    def _bag(self, row_no: int, cells: dict[str, str], areas: dict[str, int]) -> BagRow:
        code = classify(cells["qr"])
        kind = normalise(cells["kind"]).lower()
        if kind not in ("parent", "child"):
            raise Refusal("invalid_input", f"Kind must be parent or child, not {shown(cells['kind'])}.")
        if code.kind != kind:
            raise Refusal("wrong_kind", f"{code.value} is a {code.kind} bag code, but the row says {kind}.")
        parent_qr = self.parent_codes.get(cells["parent"])
        if parent_qr is None and normalise(cells["parent"]):
            try:
                parent_qr = require_kind(cells["parent"], "parent").value
            except Refusal as refusal:
                raise Refusal(refusal.code, f"Parent: {refusal.message}") from None
            self._remember_parent(cells["parent"], parent_qr)
        if parent_qr is not None and kind == "parent":
            raise Refusal("invalid_input", f"Parent bag {code.value} cannot be in a parent; leave 'parent' empty.")
        area_code = normalise(cells["area"])
        area_id = areas.get(area_code)
        if area_code and area_id is None:
            raise RowProblem("unknown_area", f"There is no dispatch area {shown(area_code)}.")
        if area_id is None and parent_qr is None:
            raise Refusal("invalid_input", f"Bag {code.value} needs an area (a child in a parent takes the parent's).")
        return BagRow(row_no, code.value, kind, area_id, parent_qr)

    def settle(self) -> None:
        """After a bulk import, refresh the planner's statistics, as the seed does: the tables have changed size."""
        if self.bulk:
            self.writer.analyze()

    def _remember_parent(self, raw: str, parent_qr: str) -> None:
        """Children of one parent come in runs: its code is classified once per run, not once per child."""
        if len(self.parent_codes) >= REMEMBERED_PARENTS:
            self.parent_codes.clear()
        self.parent_codes[raw] = parent_qr

    def stage(self, connection, rows: list[BagRow]) -> None:
        _, columns, _, payload = self.writer.encode((self.stage_table, BagRow._fields, rows))
        self.writer.write(self.stage_table, columns, payload)

    def apply(self, session, connection, user: User | None) -> list[int]:
        """Check the staged rows against the file and bagtrack, then write the bags, scans and tally."""
        capacity = current_app.config["BAGTRACK_PARENT_CAPACITY"]
        if connection.dialect.name == "postgresql":
            execute(connection, "LOCK TABLE bag IN SHARE ROW EXCLUSIVE MODE")
        execute(connection, "CREATE INDEX import_bag_qr ON import_bag (qr)")
        execute(connection, "CREATE INDEX import_bag_parent_qr ON import_bag (parent_qr)")
        execute(connection, "ANALYZE import_bag")
        for verdicts in BAG_CHECKS:
            judge(connection, "import_bag", verdicts, capacity=capacity)
        execute(
            connection,
            "INSERT INTO import_fill (parent_qr, children) SELECT parent_qr, count(*) FROM import_bag"
            " WHERE code IS NULL AND parent_qr IS NOT NULL GROUP BY parent_qr",
        )
        deltas: dict[int, Counter] = defaultdict(Counter)
        for area_id, parents, complete in execute(connection, NEW_PARENTS_BY_AREA, capacity=capacity):
            deltas[area_id].update(parents=parents, parents_complete=complete, scans_ok=parents)
        for area_id, completed in execute(connection, FILLED_PARENTS_BY_AREA):
            deltas[area_id].update(parents_complete=completed)
        params = {"capacity": capacity, "user_id": user.id if user is not None else None, "now": utcnow()}
        self.bulk = execute(connection, "SELECT count(*) FROM import_bag WHERE code IS NULL").scalar_one() >= BULK_ROWS
        if self.bulk:
            self.writer.lock()
        for statement in BAG_WRITES:
            execute(connection, statement, **params)
        if self.bulk:
            self.writer.finish()
        for area_id, children, linked in execute(connection, NEW_CHILDREN_BY_AREA):
            deltas[area_id].update(children=children, scans_ok=linked)
        return add_tallies(session, deltas, params)


BAG_CHECKS = (
    # An earlier row of the file has the code.
    """SELECT s.row_no, 'duplicate_in_file', 'Bag ' || s.qr || ' is already on row ' || f.first_row || ' of this file.'
    FROM import_bag s JOIN (SELECT qr, min(row_no) AS first_row FROM import_bag WHERE code IS NULL GROUP BY qr) f
      ON f.qr = s.qr
    WHERE s.code IS NULL AND s.row_no > f.first_row""",
    # The code is in bagtrack already.
    """SELECT s.row_no,
           CASE WHEN b.kind <> s.kind THEN 'wrong_kind'
                WHEN s.parent_qr IS NOT NULL AND holder.qr <> s.parent_qr THEN 'child_in_other_parent'
                ELSE 'bag_exists' END,
           CASE WHEN b.kind <> s.kind THEN s.qr || ' is a ' || b.kind || ' bag in bagtrack, not a ' || s.kind || ' bag.'
                WHEN s.parent_qr IS NOT NULL AND holder.qr <> s.parent_qr
                     THEN 'Child bag ' || s.qr || ' is already in parent bag ' || holder.qr || '.'
                ELSE 'Bag ' || s.qr || ' is already in bagtrack; an import only adds new bags.' END
    FROM import_bag s JOIN bag b ON b.qr = s.qr LEFT JOIN bag holder ON holder.id = b.parent_id
    WHERE s.code IS NULL""",
    # The child's parent is in bagtrack but takes no children.
    f"""SELECT s.row_no,
           CASE WHEN p.kind <> 'parent' THEN 'wrong_kind' ELSE 'parent_on_bill' END,
           CASE WHEN p.kind <> 'parent' THEN p.qr || ' is a child bag, not a parent bag.'
                ELSE {sql_message(PARENT_ON_BILL, qr="p.qr")} END
    FROM import_bag s JOIN bag p ON p.qr = s.parent_qr
    WHERE s.code IS NULL AND (p.kind <> 'parent' OR p.bill_id IS NOT NULL)""",
    # The child's parent is nowhere.
    """SELECT s.row_no, 'parent_not_found',
           'Parent bag ' || s.parent_qr || ' is neither in bagtrack nor imported from this file.'
    FROM import_bag s
    WHERE s.code IS NULL AND s.parent_qr IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM bag p WHERE p.qr = s.parent_qr)
      AND NOT EXISTS (SELECT 1 FROM import_bag f WHERE f.qr = s.parent_qr AND f.kind = 'parent' AND f.code IS NULL)""",
    # A child takes its parent's area; naming another one is a mistake in the file.
    """SELECT s.row_no, 'invalid_input',
           'Child bag ' || s.qr || ' names another area than its parent bag ' || s.parent_qr || ', which is in '
           || a.code || '.'
    FROM import_bag s
    LEFT JOIN bag p ON p.qr = s.parent_qr
    LEFT JOIN import_bag f ON f.qr = s.parent_qr AND f.kind = 'parent' AND f.code IS NULL
    JOIN dispatch_area a ON a.id = coalesce(p.area_id, f.area_id)
    WHERE s.code IS NULL AND s.parent_qr IS NOT NULL AND s.area_id IS NOT NULL AND a.id <> s.area_id""",
    # The children past a parent's room, in file order.
    """SELECT row_no, 'parent_full', 'Parent bag ' || parent_qr || ' is full (' || capacity || ' children).'
    FROM (SELECT s.row_no, s.parent_qr, coalesce(p.capacity, :capacity) AS capacity,
                 row_number() OVER (PARTITION BY s.parent_qr ORDER BY s.row_no) AS place,
                 CASE WHEN p.id IS NULL THEN :capacity WHEN p.status = 'complete' THEN 0
                      ELSE p.capacity - p.child_count END AS room
          FROM import_bag s LEFT JOIN bag p ON p.qr = s.parent_qr
          WHERE s.code IS NULL AND s.parent_qr IS NOT NULL) ranked
    WHERE place > room""",
)

NEW_PARENTS_BY_AREA = """
SELECT s.area_id, count(*), sum(CASE WHEN coalesce(n.children, 0) >= :capacity THEN 1 ELSE 0 END)
FROM import_bag s LEFT JOIN import_fill n ON n.parent_qr = s.qr
WHERE s.kind = 'parent' AND s.code IS NULL
GROUP BY s.area_id
"""

FILLED_PARENTS_BY_AREA = """
SELECT p.area_id, count(*)
FROM bag p JOIN import_fill n ON n.parent_qr = p.qr
WHERE p.status = 'open' AND p.child_count + n.children >= p.capacity
GROUP BY p.area_id
"""

NEW_CHILDREN_BY_AREA = """
SELECT b.area_id, count(*), sum(CASE WHEN b.parent_id IS NOT NULL THEN 1 ELSE 0 END)
FROM import_bag s JOIN bag b ON b.qr = s.qr
WHERE s.kind = 'child' AND s.code IS NULL
GROUP BY b.area_id
"""

BAG_WRITES = (
    # Parents already in bagtrack take their new children (before the new parents exist).
    """UPDATE bag SET
        child_count = bag.child_count + n.children,
        status = CASE WHEN bag.child_count + n.children >= bag.capacity THEN 'complete' ELSE bag.status END
    FROM import_fill n WHERE bag.qr = n.parent_qr""",
    """INSERT INTO bag (qr, kind, status, area_id, child_count, capacity, created_by_id, created_at)
    SELECT s.qr, 'parent', CASE WHEN coalesce(n.children, 0) >= :capacity THEN 'complete' ELSE 'open' END,
           s.area_id, coalesce(n.children, 0), :capacity, CAST(:user_id AS INTEGER), :now
    FROM import_bag s LEFT JOIN import_fill n ON n.parent_qr = s.qr
    WHERE s.kind = 'parent' AND s.code IS NULL
    ORDER BY s.row_no""",
    """INSERT INTO bag (qr, kind, status, area_id, parent_id, child_count, capacity, linked_by_id, linked_at,
                     created_by_id, created_at)
    SELECT s.qr, 'child', CASE WHEN p.id IS NULL THEN 'loose' ELSE 'packed' END, coalesce(p.area_id, s.area_id),
           p.id, 0, 0, CASE WHEN p.id IS NOT NULL THEN CAST(:user_id AS INTEGER) END,
           CASE WHEN p.id IS NOT NULL THEN :now END, CAST(:user_id AS INTEGER), :now
    FROM import_bag s LEFT JOIN bag p ON p.qr = s.parent_qr
    WHERE s.kind = 'child' AND s.code IS NULL
    ORDER BY s.row_no""",
    # The scan log tells the story a scanner would have: each parent started, each child put in.
    """INSERT INTO scan (at, kind, outcome, qr, bag_id, parent_id, user_id, area_id)
    SELECT :now, 'parent', 'ok', b.qr, b.id, b.id, CAST(:user_id AS INTEGER), b.area_id
    FROM import_bag s JOIN bag b ON b.qr = s.qr
    WHERE s.kind = 'parent' AND s.code IS NULL
    ORDER BY s.row_no""",
    """INSERT INTO scan (at, kind, outcome, qr, bag_id, parent_id, user_id, area_id)
    SELECT :now, 'child', 'ok', b.qr, b.id, b.parent_id, CAST(:user_id AS INTEGER), b.area_id
    FROM import_bag s JOIN bag b ON b.qr = s.qr
    WHERE s.kind = 'child' AND s.code IS NULL AND b.parent_id IS NOT NULL
    ORDER BY s.row_no""",
)
