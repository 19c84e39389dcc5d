"""The bills file (columns ``bill_no, capacity, destination, vehicle_no, description, status, parents``).

Its row checks (the bill form's field rules), its staging tables, its
set-based checks (as loading a parent checks it) and its writes.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import NamedTuple

from sqlalchemy import text

from .. import billing
from ..codes import normalise, require_kind
from ..errors import PARENT_EMPTY_TO_LOAD, Refusal
from ..models import OFFICE_TALLY, User, utcnow
from .files import shown
from .layout import TOO_MANY_CELLS, VERDICT_TABLE, add_tallies, execute, judge, sql_message

PARENT_SEPARATORS = re.compile(r"[\s,;]+")


class BillRow(NamedTuple):
    """A staged row of a bills file with the parent codes it lists; a refused one has only its code."""

    row_no: int
    bill_no: str | None = None
    capacity: int | None = None
    destination: str | None = None
    vehicle_no: str | None = None
    description: str | None = None
    status: str | None = None
    code: str | None = None
    message: str | None = None
    parents: tuple[str, ...] = ()


class BillLayout:
    """The bills file: its row checks, its staging tables, its set-based checks and writes."""

    kind = "bills"
    columns = ("bill_no", "capacity", "destination", "vehicle_no", "description", "status", "parents")
    stage_table = "import_bill"

    def create_stage(self, connection) -> None:
        execute(
            connection,
            "CREATE TEMPORARY TABLE import_bill (row_no BIGINT PRIMARY KEY, bill_no VARCHAR(50), capacity INTEGER,"
            " destination VARCHAR(200), vehicle_no VARCHAR(50), description TEXT, status VARCHAR(10),"
            " code VARCHAR(32), message TEXT)",
        )
        execute(
            connection,
            "CREATE TEMPORARY TABLE import_bill_parent (row_no BIGINT, position INTEGER, parent_qr VARCHAR(64),"
            " PRIMARY KEY (row_no, position))",
        )
        execute(connection, VERDICT_TABLE)

    def drop_stage(self, connection) -> None:
        for table in ("import_bill", "import_bill_parent", "import_verdict"):
            execute(connection, f"DROP TABLE {table}")

    def settle(self) -> None:
        """Bills files are small: the planner's statistics still hold."""

    def check(self, row_no: int, cells: dict[str, str] | None, areas: dict[str, int]) -> BillRow:
        """One staged row: the bill it would create with its parent codes, or its refusal."""
        if cells is None:
            return BillRow(row_no, code="invalid_input", message=TOO_MANY_CELLS)
        try:
            return self._bill(row_no, cells)
        except Refusal as refusal:
            return BillRow(row_no, code=refusal.code, message=refusal.message)

    @staticmethod
    def _bill(row_no: int, cells: dict[str, str]) -> BillRow:
        # The same field rules as the bill form.
        details = billing.bill_details(cells)
        bill_no = details["bill_no"]
        status = normalise(cells["status"]).lower() or "open"
        if status not in ("open", "closed"):
            raise Refusal("invalid_input", f"Status must be open or closed, not {shown(cells['status'])}.")
        # A parent listed twice on one row is loaded once.
        parents: dict[str, None] = {}
        for raw in PARENT_SEPARATORS.split(cells["parents"]):
            if normalise(raw):
                parents[require_kind(raw, "parent").value] = None
        if status == "closed" and not parents:
            raise Refusal("bill_empty", f"Bill {bill_no} is closed but lists no parent bags.")
        return BillRow(
            row_no,
            bill_no,
            details["capacity"],
            details["destination"],
            details["vehicle_no"],
            details["description"],
            status,
            parents=tuple(parents),
        )

    def stage(self, connection, rows: list[BillRow]) -> None:
        # Bills carry free text (line breaks, tabs): bound parameters, not COPY text. Files of bills are small.
        bills = [{column: getattr(row, column) for column in BILL_STAGE_COLUMNS} for row in rows]
        parents = [
            {"row_no": row.row_no, "position": position, "parent_qr": qr}
            for row in rows
            for position, qr in enumerate(row.parents)
        ]
        connection.execute(text(STAGE_BILL), bills)
        if parents:
            connection.execute(text(STAGE_BILL_PARENT), parents)

    def apply(self, session, connection, user: User | None) -> list[int]:
        """Check the staged bills against the file and bagtrack, then write bills, loads, scans and tally."""
        if connection.dialect.name == "postgresql":
            execute(connection, "LOCK TABLE bill, bag IN SHARE ROW EXCLUSIVE MODE")
        execute(connection, "CREATE INDEX import_bill_no ON import_bill (bill_no)")
        execute(connection, "CREATE INDEX import_bill_parent_qr ON import_bill_parent (parent_qr)")
        execute(connection, "ANALYZE import_bill")
        execute(connection, "ANALYZE import_bill_parent")
        for verdicts in BILL_CHECKS:
            judge(connection, "import_bill", verdicts)
        deltas: dict[int, Counter] = defaultdict(Counter)
        for area_id, loaded in execute(connection, LOADS_BY_AREA):
            deltas[area_id].update(parents_billed=loaded, scans_ok=loaded)
        for status, bills in execute(
            connection, "SELECT status, count(*) FROM import_bill WHERE code IS NULL GROUP BY status"
        ):
            deltas[OFFICE_TALLY].update({f"bills_{status}": bills})
        params = {"user_id": user.id if user is not None else None, "now": utcnow()}
        for statement in BILL_WRITES:
            execute(connection, statement, **params)
        return add_tallies(session, deltas, params)


BILL_STAGE_COLUMNS = tuple(column for column in BillRow._fields if column != "parents")
STAGE_BILL = (
    f"INSERT INTO import_bill ({', '.join(BILL_STAGE_COLUMNS)})"
    f" VALUES ({', '.join(':' + column for column in BILL_STAGE_COLUMNS)})"
)
STAGE_BILL_PARENT = (
    "INSERT INTO import_bill_parent (row_no, position, parent_qr) VALUES (:row_no, :position, :parent_qr)"
)

# The first listed parent (by position) that fails a check names the row's refusal.
BILL_CHECKS = (
    """SELECT s.row_no, 'duplicate_in_file',
           'Bill ' || s.bill_no || ' is already on row ' || f.first_row || ' of this file.'
    FROM import_bill s
    JOIN (SELECT bill_no, min(row_no) AS first_row FROM import_bill WHERE code IS NULL GROUP BY bill_no) f
      ON f.bill_no = s.bill_no
    WHERE s.code IS NULL AND s.row_no > f.first_row""",
    """SELECT s.row_no, 'bill_exists', 'Bill ' || s.bill_no || ' already exists.'
    FROM import_bill s JOIN bill b ON b.bill_no = s.bill_no
    WHERE s.code IS NULL""",
    """SELECT row_no, 'parent_not_found', 'Parent bag ' || parent_qr || ' was not found.'
    FROM (SELECT bp.row_no, bp.parent_qr, row_number() OVER (PARTITION BY bp.row_no ORDER BY bp.position) AS place
          FROM import_bill_parent bp
          WHERE NOT EXISTS (SELECT 1 FROM bag p WHERE p.qr = bp.parent_qr AND p.kind = 'parent')) missing
    WHERE place = 1""",
    """SELECT row_no, 'parent_on_other_bill', 'Parent bag ' || parent_qr || ' is already on bill ' || bill_no || '.'
    FROM (SELECT bp.row_no, bp.parent_qr, b.bill_no,
                 row_number() OVER (PARTITION BY bp.row_no ORDER BY bp.position) AS place
          FROM import_bill_parent bp JOIN bag p ON p.qr = bp.parent_qr JOIN bill b ON b.id = p.bill_id) billed
    WHERE place = 1""",
    f"""SELECT row_no, 'parent_empty', {sql_message(PARENT_EMPTY_TO_LOAD, qr="parent_qr")}
    FROM (SELECT bp.row_no, bp.parent_qr, row_number() OVER (PARTITION BY bp.row_no ORDER BY bp.position) AS place
          FROM import_bill_parent bp JOIN bag p ON p.qr = bp.parent_qr
          WHERE p.child_count = 0) empty
    WHERE place = 1""",
    """SELECT s.row_no, 'bill_full',
           'Bill ' || s.bill_no || ' takes ' || s.capacity || ' parent bags but the row lists ' || n.parents || '.'
    FROM import_bill s JOIN (SELECT row_no, count(*) AS parents FROM import_bill_parent GROUP BY row_no) n
      ON n.row_no = s.row_no
    WHERE s.code IS NULL AND n.parents > s.capacity""",
    # A parent listed by two imported rows goes onto the first one's bill.
    """SELECT row_no, 'parent_on_other_bill',
           'Parent bag ' || parent_qr || ' is already loaded onto bill ' || bill_no || ' by row ' || first_row
           || ' of this file.'
    FROM (SELECT bp.row_no, bp.parent_qr, first.bill_no, first.row_no AS first_row,
                 row_number() OVER (PARTITION BY bp.row_no ORDER BY bp.position, first.row_no) AS place
          FROM import_bill_parent bp
          JOIN import_bill mine ON mine.row_no = bp.row_no AND mine.code IS NULL
          JOIN import_bill_parent other ON other.parent_qr = bp.parent_qr AND other.row_no < bp.row_no
          JOIN import_bill first ON first.row_no = other.row_no AND first.code IS NULL) claimed
    WHERE place = 1""",
)

LOADS_BY_AREA = """
SELECT p.area_id, count(*)
FROM import_bill_parent bp
JOIN import_bill s ON s.row_no = bp.row_no AND s.code IS NULL
JOIN bag p ON p.qr = bp.parent_qr
GROUP BY p.area_id
"""

BILL_WRITES = (
    """INSERT INTO bill (bill_no, status, capacity, destination, vehicle_no, description, parent_count, child_count,
                      created_by_id, created_at, closed_at)
    SELECT s.bill_no, s.status, s.capacity, s.destination, s.vehicle_no, s.description, coalesce(n.parents, 0),
           coalesce(n.children, 0), CAST(:user_id AS INTEGER), :now, CASE WHEN s.status = 'closed' THEN :now END
    FROM import_bill s
    LEFT JOIN (SELECT bp.row_no, count(*) AS parents, sum(p.child_count) AS children
               FROM import_bill_parent bp JOIN bag p ON p.qr = bp.parent_qr GROUP BY bp.row_no) n
      ON n.row_no = s.row_no
    WHERE s.code IS NULL
    ORDER BY s.row_no""",
    """UPDATE bag SET bill_id = b.id
    FROM import_bill_parent bp
    JOIN import_bill s ON s.row_no = bp.row_no AND s.code IS NULL
    JOIN bill b ON b.bill_no = s.bill_no
    WHERE bag.qr = bp.parent_qr""",
    """INSERT INTO scan (at, kind, outcome, qr, bag_id, parent_id, bill_id, user_id, area_id)
    SELECT :now, 'load', 'ok', p.qr, p.id, p.id, b.id, CAST(:user_id AS INTEGER), p.area_id
    FROM import_bill_parent bp
    JOIN import_bill s ON s.row_no = bp.row_no AND s.code IS NULL
    JOIN bill b ON b.bill_no = s.bill_no
    JOIN bag p ON p.qr = bp.parent_qr
    ORDER BY bp.row_no, bp.position""",
)
