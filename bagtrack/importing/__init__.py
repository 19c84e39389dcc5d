"""Bulk import of bags and bills from CSV or XLSX files.

A file is read as a stream (CSV with the ``csv`` module, XLSX with openpyxl
in read-only mode) and its first row names the columns, in any order:

- bags: ``qr, kind, area, parent``. ``kind`` is ``parent`` or ``child``. A
  parent names its dispatch area. A child may name its parent (a parent
  already in bagtrack, or one on any row of the same file, before or after
  it) and then takes the parent's area; a child without a parent is loose
  and names its area.
- bills: ``bill_no, capacity, destination, vehicle_no, description, status,
  parents``. ``status`` is ``open`` (the default) or ``closed``; ``parents``
  lists parent codes already in bagtrack, separated by spaces, commas or
  semicolons, to load onto the bill.

Every value is normalised exactly as a scan or a form is (``bagtrack.codes``,
the bill form's field rules) and each row obeys the rules of the scanner and
of the bill office. A row that breaks one is not imported: it is reported
with its row number (the header is row 1, as a spreadsheet counts), a code
and a sentence. The other rows are imported together, in one transaction.

Rows are checked in Python one by one as they stream in, staged in a
temporary table in chunks (through the seed's writers: ``COPY`` on
PostgreSQL from the command line, multi-row ``INSERT`` under gevent), then
checked against the file and the database with set-based SQL, so memory
stays flat whatever the size. What an import creates is
written already consistent: counters, the scan rows of the parents created,
the children linked and the parents loaded (by the importing admin, or by
no user from the command line), and the dashboard tally. While the checks
and writes run, bags (and bills) are locked against other writers: big
imports belong to a quiet moment on the floor.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from flask import current_app
from sqlalchemy import DateTime, bindparam, select, text

from . import billing, cache
from .audit import record
from .codes import classify, normalise, require_kind
from .errors import Refusal
from .ledger import add_to_tally
from .models import DispatchArea, User, utcnow
from .seeding import writer_for

EXTENSIONS = ("csv", "xlsx")
CHUNK_ROWS = 10_000
# From this many bags on, foreign keys are set aside while the rows are written and checked once
# at the end, as the seed does (see ``PostgresWriter.lock``): per row, they double the time of the load.
BULK_ROWS = 50_000
REMEMBERED_PARENTS = 4096
# Refusals an import keeps to show; every one of them goes to ``on_refusal``.
SHOWN_REFUSALS = 200
OFFICE_TALLY = 0  # bills belong to no dispatch area
PARENT_SEPARATORS = re.compile(r"[\s,;]+")
SHOWN_VALUE = 64  # characters of a refused value quoted in a message
# What an XLSX workbook may hold, checked on its zip members before it is read (a hostile one is small
# packed but huge unpacked, or claims rows far down the sheet that a reader would walk through).
XLSX_LAST_ROW = 1_048_576  # a spreadsheet's last row
XLSX_LAST_COLUMN = 64  # bagtrack's files have at most 7 columns; a reader pads every row to its last cell
XLSX_MAX_MEMBERS = 1_000
# No text or attribute in the workbook's XML longer than this (a spreadsheet cell holds 32,767 characters).
XLSX_MAX_TEXT_BYTES = 256 * 1024
XLSX_BLOCK_BYTES = 1 << 20
XLSX_ROW_NUMBER = re.compile(rb"<row\b[^>]*?\sr=\"([0-9]+)\"")
XLSX_CELL_COLUMN = re.compile(rb"<c\b[^>]*?\sr=\"([A-Z]+)[0-9]")


@dataclass(frozen=True)
class FileLimits:
    """How big a file an import reads: data rows (None: any number) and an XLSX's unpacked bytes."""

    rows: int | None = None
    unpacked_bytes: int | None = None


class RowProblem(Exception):
    """A row breaks a rule that only an import has (its code is not an HTTP refusal)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RowRefusal:
    row: int
    code: str
    message: str


@dataclass
class ImportReport:
    """What an import did: data rows read, imported and refused, and the first refusals."""

    kind: str
    rows: int = 0
    imported: int = 0
    refused: int = 0
    refusals: list[RowRefusal] = field(default_factory=list)


Progress = Callable[[int | None], Callable[[int], None]]


def file_extension(filename: str) -> str:
    """The lower-case extension of ``filename``; anything but csv or xlsx is ``invalid_input``."""
    extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if extension not in EXTENSIONS:
        raise Refusal("invalid_input", f"{filename[-100:]} is neither a .csv nor an .xlsx file.")
    return extension


def import_bags(session, stream: BinaryIO, extension: str, *, user: User | None, source: str,
                on_refusal: Callable[[RowRefusal], None] | None = None,
                progress: Progress | None = None, limits: FileLimits = FileLimits()) -> ImportReport:  # fmt: skip
    """Import the bags of a file (columns ``qr, kind, area, parent``).

    A row is refused, checks in this order, with ``invalid_qr`` or
    ``wrong_kind`` (either code; or ``kind`` not matching the code's
    format), ``invalid_input`` (bad ``kind``; no area for a parent or a loose
    child; a parent naming a parent), ``unknown_area``,
    ``duplicate_in_file`` (an earlier row has the code), ``wrong_kind`` /
    ``child_in_other_parent`` / ``bag_exists`` (the code is in bagtrack
    already: an import only adds bags), then for a child's parent
    ``wrong_kind``, ``parent_on_bill``, ``parent_not_found`` (neither in
    bagtrack nor imported from this file), ``invalid_input`` (the child
    names another area than its parent's) and ``parent_full`` (the rows
    past the parent's capacity, in file order). A parent filled to capacity
    is complete. A file or header that cannot be read, or a file beyond
    ``limits`` (see :func:`check_file`), is ``invalid_input`` and imports
    nothing.
    """
    return _run(session, BagLayout(), stream, extension, user, source, on_refusal, progress, limits)


def import_bills(session, stream: BinaryIO, extension: str, *, user: User | None, source: str,
                 on_refusal: Callable[[RowRefusal], None] | None = None,
                 progress: Progress | None = None, limits: FileLimits = FileLimits()) -> ImportReport:  # fmt: skip
    """Import bills (columns ``bill_no, capacity, destination, vehicle_no, description, status, parents``).

    A row is refused with ``invalid_bill_no``, ``invalid_input`` (capacity
    not a whole number from 1 to 500, text too long, status not open or
    closed), ``invalid_qr`` / ``wrong_kind`` for a listed parent code,
    ``bill_empty`` (closed without parents), ``duplicate_in_file``,
    ``bill_exists``, then for its parents, as loading one checks them:
    ``parent_not_found``, ``parent_on_other_bill`` (on a bill in bagtrack),
    ``parent_empty``, ``bill_full``, and ``parent_on_other_bill`` again
    when an earlier imported row of the file loads the parent. A refused row
    loads none of its parents; a closed bill gets its closing time. Files
    are limited as for bags.
    """
    return _run(session, BillLayout(), stream, extension, user, source, on_refusal, progress, limits)


def _run(session, layout, stream, extension, user, source, on_refusal, progress, limits) -> ImportReport:
    report = ImportReport(kind=layout.kind)
    check_file(stream, extension, limits)
    estimate = _row_estimate(stream, extension) if progress is not None else None
    rows = _open_table(stream, extension, layout.columns, limits)
    advance = progress(estimate) if progress is not None else None
    # One transaction from the first staged row to the commit; nothing of the caller's is left in it.
    session.rollback()
    try:
        connection = session.connection()
        layout.create_stage(connection)
        areas = dict(session.execute(select(DispatchArea.code, DispatchArea.id)).all())
        for chunk in _chunks(layout.check(row_no, cells, areas) for row_no, cells in rows):
            layout.stage(connection, chunk)
            report.rows += len(chunk)
            if advance is not None:
                advance(len(chunk))
        changed_areas = layout.apply(session, connection, user)
        report.imported = connection.execute(
            text(f"SELECT count(*) FROM {layout.stage_table} WHERE code IS NULL")
        ).scalar_one()
        # Streamed (a server-side cursor on PostgreSQL): a file may be refused row after row.
        refused = connection.execute(
            text(
                f"SELECT row_no, code, message FROM {layout.stage_table} WHERE code IS NOT NULL ORDER BY row_no"
            ).execution_options(yield_per=CHUNK_ROWS)
        )
        for row_no, code, message in refused:
            refusal = RowRefusal(row_no, code, message)
            report.refused += 1
            if len(report.refusals) < SHOWN_REFUSALS:
                report.refusals.append(refusal)
            if on_refusal is not None:
                on_refusal(refusal)
        record(session, user, f"import.{layout.kind}", source[-128:],
               after={"rows": report.rows, "imported": report.imported, "refused": report.refused})  # fmt: skip
        layout.drop_stage(connection)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    cache.announce(None, changed_areas)
    layout.settle()
    return report


def _chunks(rows: Iterator[tuple]) -> Iterator[list[tuple]]:
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= CHUNK_ROWS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def check_file(stream: BinaryIO, extension: str, limits: FileLimits) -> None:
    """Refuse an XLSX workbook that would cost far more to read than its size says, before reading it.

    Only the zip directory and the XML text are looked at, a block at a
    time: the members unpacked must stay within ``limits.unpacked_bytes``,
    no text or attribute may exceed ``XLSX_MAX_TEXT_BYTES``, no sheet row may
    lie past ``limits.rows`` data rows (or the spreadsheet's last row), no
    cell past column ``XLSX_LAST_COLUMN``, and no XML may declare entities.
    Each is ``invalid_input``. CSV files need no such check: their rows are
    counted as they are read, and the ``csv`` module bounds a field.
    """
    if extension != "xlsx":
        return
    start = stream.tell()
    try:
        try:
            archive = zipfile.ZipFile(stream)
            members = archive.infolist()
        except (zipfile.BadZipFile, OSError, ValueError):
            raise Refusal("invalid_input", "The file is not a readable XLSX workbook.") from None
        if len(members) > XLSX_MAX_MEMBERS:
            raise Refusal("invalid_input", f"The XLSX workbook holds more than {XLSX_MAX_MEMBERS} parts.")
        unpacked = sum(member.file_size for member in members)
        if limits.unpacked_bytes is not None and unpacked > limits.unpacked_bytes:
            raise Refusal(
                "invalid_input",
                f"The XLSX workbook unpacks to {unpacked / 2**20:.0f} MiB; at most"
                f" {limits.unpacked_bytes / 2**20:.0f} MiB are read here.{_LARGER_FILES}",
            )
        for member in members:
            if member.filename.endswith((".xml", ".rels")):
                _check_xml(archive, member, limits)
    finally:
        stream.seek(start)


_LARGER_FILES = " Import larger files on the server with: flask --app bagtrack import bags|bills FILE"


def _check_xml(archive: zipfile.ZipFile, member: zipfile.ZipInfo, limits: FileLimits) -> None:
    sheet = member.filename.startswith("xl/worksheets/")
    # The unfinished tag at the end of a block is read again with the next one.
    carried = b""
    try:
        with archive.open(member) as part:
            while block := part.read(XLSX_BLOCK_BYTES):
                text = carried + block
                if b"<!DOCTYPE" in text or b"<!ENTITY" in text:
                    raise Refusal("invalid_input", "The XLSX workbook declares XML entities; it is not read.")
                if max(map(len, text.split(b"<"))) > XLSX_MAX_TEXT_BYTES:
                    raise Refusal(
                        "invalid_input",
                        f"A cell of the XLSX workbook holds more than {XLSX_MAX_TEXT_BYTES // 1024} KiB of text.",
                    )
                if sheet:
                    _check_sheet_text(text, limits)
                carried = text[text.rfind(b"<") :] if b"<" in text else b""
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError):
        raise Refusal("invalid_input", "The XLSX workbook is damaged.") from None


def _check_sheet_text(text: bytes, limits: FileLimits) -> None:
    last_row = max(map(int, XLSX_ROW_NUMBER.findall(text)), default=0)
    if limits.rows is not None and last_row > limits.rows + 1:
        raise Refusal("invalid_input", _too_many_rows(limits.rows))
    if last_row > XLSX_LAST_ROW:
        raise Refusal("invalid_input", f"The XLSX sheet has rows past row {XLSX_LAST_ROW:,}.")
    for letters in set(XLSX_CELL_COLUMN.findall(text)):
        if len(letters) > 2 or _column_index(letters) > XLSX_LAST_COLUMN:
            raise Refusal("invalid_input", f"The XLSX sheet has cells past column {XLSX_LAST_COLUMN}.")


def _column_index(letters: bytes) -> int:
    index = 0
    for letter in letters:
        index = index * 26 + letter - ord("A") + 1
    return index


def _too_many_rows(rows: int) -> str:
    return f"The file has more than {rows:,} rows, more than are imported here.{_LARGER_FILES}"


def _row_estimate(stream: BinaryIO, extension: str) -> int | None:
    """Data rows for a progress bar: a CSV's lines (counted in blocks), an XLSX's recorded dimension."""
    start = stream.tell()
    try:
        if extension == "xlsx":
            from openpyxl import load_workbook

            workbook = load_workbook(stream, read_only=True)
            last = workbook.active.max_row
            workbook.close()
            return max(last - 1, 0) if last else None
        return max(sum(block.count(b"\n") for block in iter(lambda: stream.read(1 << 20), b"")) - 1, 0)
    except Exception:
        # Only an estimate: reading the rows will say what is wrong with the file.
        return None
    finally:
        stream.seek(start)


def _cell_text(value) -> str:
    """A spreadsheet cell as the text a scanner or a form would send (12345.0 is 12345)."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _open_table(
    stream: BinaryIO, extension: str, columns: tuple[str, ...], limits: FileLimits
) -> Iterator[tuple[int, dict | None]]:
    """Check the header now; then each non-blank data row as (row number, {column: text}).

    A row with more cells than the header has columns comes as (row number, None).
    A row past ``limits.rows`` data rows (blank ones included) refuses the file.
    """
    rows = _xlsx_rows(stream) if extension == "xlsx" else _csv_rows(stream)
    try:
        names = _header(next(rows, None), columns)
    except BaseException:
        rows.close()
        raise
    return _data_rows(rows, names, limits.rows)


def _header(header: list[str] | None, columns: tuple[str, ...]) -> list[str]:
    expected = ", ".join(columns)
    if header is None:
        raise Refusal("invalid_input", f"The file is empty; its first row must name the columns {expected}.")
    names = [normalise(cell).lower() for cell in header]
    while names and names[-1] == "":
        names.pop()
    if sorted(names) != sorted(columns):
        found = ", ".join(name[:SHOWN_VALUE] or "(empty)" for name in names)[:300] or "nothing"
        raise Refusal(
            "invalid_input",
            f"Wrong header: the first row must name the columns {expected} (in any order), not {found}.",
        )
    return names


def _data_rows(rows: Iterator[list[str]], names: list[str], most: int | None) -> Iterator[tuple[int, dict | None]]:
    width = len(names)
    try:
        for row_no, cells in enumerate(rows, start=2):
            if most is not None and row_no > most + 1:
                raise Refusal("invalid_input", _too_many_rows(most))
            if not any(cell.strip() for cell in cells):
                continue
            if any(cell.strip() for cell in cells[width:]):
                yield row_no, None
                continue
            yield row_no, dict(zip(names, cells + [""] * (width - len(cells)), strict=False))
    finally:
        rows.close()


def _csv_rows(stream: BinaryIO) -> Iterator[list[str]]:
    text_stream = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    try:
        yield from csv.reader(text_stream)
    except UnicodeDecodeError:
        raise Refusal("invalid_input", "The file is not UTF-8 text; save the CSV as UTF-8.") from None
    except csv.Error as exc:
        raise Refusal("invalid_input", f"The CSV file is malformed: {exc}.") from None
    finally:
        # The caller owns the binary stream; closing the wrapper would close it.
        text_stream.detach()


def _xlsx_rows(stream: BinaryIO) -> Iterator[list[str]]:
    from openpyxl import load_workbook

    try:
        workbook = load_workbook(stream, read_only=True, data_only=True)
    except Exception:
        raise Refusal("invalid_input", "The file is not a readable XLSX workbook.") from None
    try:
        sheet = workbook.active
        # The recorded size is the file's claim, not its content: rows are read as they come.
        sheet.reset_dimensions()
        for values in sheet.iter_rows(values_only=True):
            yield [_cell_text(value) for value in values]
    except (zipfile.BadZipFile, KeyError, ValueError):
        raise Refusal("invalid_input", "The XLSX workbook is damaged.") from None
    finally:
        workbook.close()


def _shown(value: str) -> str:
    """A value quoted in a message: no control characters (messages are staged as COPY text), bounded."""
    return normalise(value)[:SHOWN_VALUE] or "(empty)"


TOO_MANY_CELLS = "The row has more cells than the header names columns."


def _execute(connection, sql: str, **params):
    """Run a statement of an import; ``now`` is bound as a timestamp on every database."""
    statement = text(sql)
    if ":now" in sql:
        statement = statement.bindparams(bindparam("now", type_=DateTime()))
    return connection.execute(statement, params)


def _judge(connection, table: str, verdicts: str, **params) -> None:
    """Refuse the rows a check's SELECT (row_no, code, message) names, unless already refused.

    Verdicts are gathered first and applied after, so a check never sees its
    own refusals half-way (SQLite would otherwise update row by row).
    """
    _execute(connection, f"INSERT INTO import_verdict (row_no, code, message) {verdicts}", **params)
    _execute(
        connection,
        f"UPDATE {table} SET code = v.code, message = v.message FROM import_verdict v"
        f" WHERE v.row_no = {table}.row_no AND {table}.code IS NULL",
    )
    _execute(connection, "DELETE FROM import_verdict")


def _add_tallies(session, deltas: dict[int, Counter], params: dict) -> list[int]:
    """Add each area's deltas to the tally, in the hour the import stamped on its scans."""
    for area_id, counts in deltas.items():
        changed = {name: value for name, value in counts.items() if value}
        if changed:
            add_to_tally(session, area_id, user_id=params["user_id"], at=params["now"], **changed)
    return sorted(deltas)


VERDICT_TABLE = "CREATE TEMPORARY TABLE import_verdict (row_no BIGINT PRIMARY KEY, code VARCHAR(32), message TEXT)"


class BagLayout:
    """The bags file: its row checks, its staging table, its set-based checks and writes."""

    kind = "bags"
    columns = ("qr", "kind", "area", "parent")
    stage_table = "import_bag"

    def __init__(self):
        self.parent_codes: dict[str, str] = {}
        self.bulk = False

    stage_columns = ("row_no", "qr", "kind", "area_id", "parent_qr", "code", "message")

    def create_stage(self, connection) -> None:
        _execute(
            connection,
            "CREATE TEMPORARY TABLE import_bag (row_no BIGINT PRIMARY KEY, qr VARCHAR(64), kind VARCHAR(6),"
            " area_id INTEGER, parent_qr VARCHAR(64), code VARCHAR(32), message TEXT)",
        )
        _execute(connection, "CREATE TEMPORARY TABLE import_fill (parent_qr VARCHAR(64) PRIMARY KEY, children BIGINT)")
        _execute(connection, VERDICT_TABLE)
        self.writer = writer_for(connection)

    def drop_stage(self, connection) -> None:
        for table in ("import_bag", "import_fill", "import_verdict"):
            _execute(connection, f"DROP TABLE {table}")

    def check(self, row_no: int, cells: dict | None, areas: dict[str, int]) -> tuple:
        """One staged row: the bag it would create, or its refusal."""
        if cells is None:
            return (row_no, None, None, None, None, "invalid_input", TOO_MANY_CELLS)
        try:
            return (row_no, *self._bag(cells, areas), None, None)
        except (Refusal, RowProblem) as problem:
            return (row_no, None, None, None, None, problem.code, problem.message)

    def _bag(self, cells: dict, areas: dict[str, int]) -> tuple:
        code = classify(cells["qr"])
        kind = normalise(cells["kind"]).lower()
        if kind not in ("parent", "child"):
            raise Refusal("invalid_input", f"Kind must be parent or child, not {_shown(cells['kind'])}.")
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
            raise RowProblem("unknown_area", f"There is no dispatch area {_shown(area_code)}.")
        if area_id is None and parent_qr is None:
            raise Refusal("invalid_input", f"Bag {code.value} needs an area (a child in a parent takes the parent's).")
        return code.value, kind, area_id, parent_qr

    def settle(self) -> None:
        """After a bulk import, refresh the planner's statistics, as the seed does: the tables have changed size."""
        if self.bulk:
            self.writer.analyze()

    def _remember_parent(self, raw: str, parent_qr: str) -> None:
        """Children of one parent come in runs: its code is classified once per run, not once per child."""
        if len(self.parent_codes) >= REMEMBERED_PARENTS:
            self.parent_codes.clear()
        self.parent_codes[raw] = parent_qr

    def stage(self, connection, rows: list[tuple]) -> None:
        _, columns, _, payload = self.writer.encode((self.stage_table, self.stage_columns, rows))
        self.writer.write(self.stage_table, columns, payload)

    def apply(self, session, connection, user: User | None) -> list[int]:
        """Check the staged rows against the file and bagtrack, then write the bags, scans and tally."""
        capacity = current_app.config["BAGTRACK_PARENT_CAPACITY"]
        if connection.dialect.name == "postgresql":
            _execute(connection, "LOCK TABLE bag IN SHARE ROW EXCLUSIVE MODE")
        _execute(connection, "CREATE INDEX import_bag_qr ON import_bag (qr)")
        _execute(connection, "CREATE INDEX import_bag_parent_qr ON import_bag (parent_qr)")
        _execute(connection, "ANALYZE import_bag")
        for verdicts in BAG_CHECKS:
            _judge(connection, "import_bag", verdicts, capacity=capacity)
        _execute(
            connection,
            "INSERT INTO import_fill (parent_qr, children) SELECT parent_qr, count(*) FROM import_bag"
            " WHERE code IS NULL AND parent_qr IS NOT NULL GROUP BY parent_qr",
        )
        deltas: dict[int, Counter] = defaultdict(Counter)
        for area_id, parents, complete in _execute(connection, NEW_PARENTS_BY_AREA, capacity=capacity):
            deltas[area_id].update(parents=parents, parents_complete=complete, scans_ok=parents)
        for area_id, completed in _execute(connection, FILLED_PARENTS_BY_AREA):
            deltas[area_id].update(parents_complete=completed)
        params = {"capacity": capacity, "user_id": user.id if user is not None else None, "now": utcnow()}
        self.bulk = _execute(connection, "SELECT count(*) FROM import_bag WHERE code IS NULL").scalar_one() >= BULK_ROWS
        if self.bulk:
            self.writer.lock()
        for statement in BAG_WRITES:
            _execute(connection, statement, **params)
        if self.bulk:
            self.writer.finish()
        for area_id, children, linked in _execute(connection, NEW_CHILDREN_BY_AREA):
            deltas[area_id].update(children=children, scans_ok=linked)
        return _add_tallies(session, deltas, params)


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
    """SELECT s.row_no,
           CASE WHEN p.kind <> 'parent' THEN 'wrong_kind' ELSE 'parent_on_bill' END,
           CASE WHEN p.kind <> 'parent' THEN p.qr || ' is a child bag, not a parent bag.'
                ELSE 'Parent bag ' || p.qr || ' is loaded on a bill; its contents cannot change.' END
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


class BillLayout:
    """The bills file: its row checks, its staging tables, its set-based checks and writes."""

    kind = "bills"
    columns = ("bill_no", "capacity", "destination", "vehicle_no", "description", "status", "parents")
    stage_table = "import_bill"

    def create_stage(self, connection) -> None:
        _execute(
            connection,
            "CREATE TEMPORARY TABLE import_bill (row_no BIGINT PRIMARY KEY, bill_no VARCHAR(50), capacity INTEGER,"
            " destination VARCHAR(200), vehicle_no VARCHAR(50), description TEXT, status VARCHAR(10),"
            " code VARCHAR(32), message TEXT)",
        )
        _execute(
            connection,
            "CREATE TEMPORARY TABLE import_bill_parent (row_no BIGINT, position INTEGER, parent_qr VARCHAR(64),"
            " PRIMARY KEY (row_no, position))",
        )
        _execute(connection, VERDICT_TABLE)

    def drop_stage(self, connection) -> None:
        for table in ("import_bill", "import_bill_parent", "import_verdict"):
            _execute(connection, f"DROP TABLE {table}")

    def settle(self) -> None:
        """Bills files are small: the planner's statistics still hold."""

    def check(self, row_no: int, cells: dict | None, areas: dict[str, int]) -> tuple:
        """One staged row: the bill it would create with its parent codes, or its refusal."""
        if cells is None:
            return (row_no, None, None, None, None, None, None, "invalid_input", TOO_MANY_CELLS, ())
        try:
            return (row_no, *self._bill(cells))
        except Refusal as refusal:
            return (row_no, None, None, None, None, None, None, refusal.code, refusal.message, ())

    @staticmethod
    def _bill(cells: dict) -> tuple:
        # The same field rules as the bill form.
        details = billing.bill_details(cells)
        bill_no = details["bill_no"]
        status = normalise(cells["status"]).lower() or "open"
        if status not in ("open", "closed"):
            raise Refusal("invalid_input", f"Status must be open or closed, not {_shown(cells['status'])}.")
        # A parent listed twice on one row is loaded once.
        parents: dict[str, None] = {}
        for raw in PARENT_SEPARATORS.split(cells["parents"]):
            if normalise(raw):
                parents[require_kind(raw, "parent").value] = None
        if status == "closed" and not parents:
            raise Refusal("bill_empty", f"Bill {bill_no} is closed but lists no parent bags.")
        return (
            bill_no,
            details["capacity"],
            details["destination"],
            details["vehicle_no"],
            details["description"],
            status,
            None,
            None,
            tuple(parents),
        )

    def stage(self, connection, rows: list[tuple]) -> None:
        # Bills carry free text (line breaks, tabs): bound parameters, not COPY text. Files of bills are small.
        bills = [dict(zip(BILL_STAGE_COLUMNS, row[:9], strict=True)) for row in rows]
        parents = [
            {"row_no": row[0], "position": position, "parent_qr": qr}
            for row in rows
            for position, qr in enumerate(row[9])
        ]
        connection.execute(text(STAGE_BILL), bills)
        if parents:
            connection.execute(text(STAGE_BILL_PARENT), parents)

    def apply(self, session, connection, user: User | None) -> list[int]:
        """Check the staged bills against the file and bagtrack, then write bills, loads, scans and tally."""
        if connection.dialect.name == "postgresql":
            _execute(connection, "LOCK TABLE bill, bag IN SHARE ROW EXCLUSIVE MODE")
        _execute(connection, "CREATE INDEX import_bill_no ON import_bill (bill_no)")
        _execute(connection, "CREATE INDEX import_bill_parent_qr ON import_bill_parent (parent_qr)")
        _execute(connection, "ANALYZE import_bill")
        _execute(connection, "ANALYZE import_bill_parent")
        for verdicts in BILL_CHECKS:
            _judge(connection, "import_bill", verdicts)
        deltas: dict[int, Counter] = defaultdict(Counter)
        for area_id, loaded in _execute(connection, LOADS_BY_AREA):
            deltas[area_id].update(parents_billed=loaded, scans_ok=loaded)
        for status, bills in _execute(
            connection, "SELECT status, count(*) FROM import_bill WHERE code IS NULL GROUP BY status"
        ):
            deltas[OFFICE_TALLY].update({f"bills_{status}": bills})
        params = {"user_id": user.id if user is not None else None, "now": utcnow()}
        for statement in BILL_WRITES:
            _execute(connection, statement, **params)
        return _add_tallies(session, deltas, params)


BILL_STAGE_COLUMNS = (
    "row_no", "bill_no", "capacity", "destination", "vehicle_no", "description", "status", "code", "message",
)  # fmt: skip
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
    """SELECT row_no, 'parent_empty', 'Parent bag ' || parent_qr || ' is empty; fill it before loading.'
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
