"""Exports of bags, scans and bills for a range of days, as CSV or XLSX.

A range is whole local days (``BAGTRACK_TIMEZONE``), both ends included, at most ``MAX_DAYS`` long:
bags and bills by the time they were created, scans by the time they were
made. Rows come in id order, read in keyset batches that each end their
transaction, so an export holds no connection while its rows travel and
memory stays flat whatever the size: CSV is produced batch by batch, XLSX is
written row by row (openpyxl's write-only mode) into a temporary file. The
range is found as an id range (see :mod:`bagtrack.timeline`), so the cost
follows the rows exported, not the size of the tables.

Exports are scoped like the pages: a dispatcher exports only the bags and
scans of their own area, and bills not at all. Every export is written to the
audit log (who, what, which days).

Every CSV bagtrack writes goes through :func:`csv_writer`, so no cell can run
as a formula in a spreadsheet, whatever list separator it splits on.
"""

from __future__ import annotations

import csv
import io
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import aliased

from . import timeline
from .access import area_scope
from .audit import record
from .errors import Refusal
from .models import Bag, Bill, DispatchArea, Scan, User
from .shapes import bill_json, iso
from .timeline import id_window

EXPORTS = ("bags", "scans", "bills")
FORMATS = ("csv", "xlsx")
MAX_DAYS = 366
DEFAULT_DAYS = 7
BATCH_ROWS = 2000
DAY_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$", re.ASCII)
COLUMNS = {
    "bags": ("qr", "kind", "status", "area", "parent", "bill_no", "child_count", "capacity", "created_at"),
    "scans": ("id", "at", "kind", "outcome", "reason", "qr", "parent", "bill_no", "user", "area"),
    "bills": (
        "bill_no", "status", "parent_count", "capacity", "child_count", "weight_kg", "expected_weight_kg",
        "destination", "vehicle_no", "description", "created_at", "closed_at",
    ),
    # The supervisors' reports, written by the same CSV and XLSX writers.
    "operators": (
        "user", "area", "accepted", "rejected", "rejected_by_reason", "parents_completed", "first_at", "last_at",
        "active_hours", "per_active_hour",
    ),
    "daily": ("bill_no", "closed_at", "parents", "children", "weight_kg", "destination", "vehicle", "closed_by"),
}  # fmt: skip
MEDIA_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
# A spreadsheet runs a cell that starts like a formula; such text is exported with a leading apostrophe.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
NEGATIVE_NUMBER = re.compile(r"^-[0-9]+(\.[0-9]+)?$", re.ASCII)
# A spreadsheet that splits CSV lines on ';' or tabs (the list separator of many locales) starts a
# new cell after one of them, or after a line break, even inside a quoted field: guard there too.
FORMULA_AFTER_SEPARATOR = re.compile(r"(?<=[;\t\r\n])(?=[=+\-@\t\r])")
# Days an export may name: wide enough for any real range, far from the calendar's ends.
FIRST_DAY = date(1970, 1, 1)
LAST_DAY = date(2999, 12, 31)


@dataclass(frozen=True)
class Days:
    """Whole local days (``BAGTRACK_TIMEZONE``), ``first`` to ``last`` included."""

    first: date
    last: date

    @property
    def start(self) -> datetime:
        return timeline.day_range(self.first)[0]

    @property
    def end(self) -> datetime:
        return timeline.day_range(self.last)[1]

    @property
    def label(self) -> str:
        return f"{self.first.isoformat()}..{self.last.isoformat()}"


def parse_days(raw_from: str | None, raw_to: str | None, today: date | None = None) -> Days:
    """The days from ``raw_from`` to ``raw_to`` (YYYY-MM-DD), both included.

    ``to`` defaults to today (local) and ``from`` to ``DEFAULT_DAYS`` days
    ending on ``to``. A malformed date, ``from`` after ``to`` or more than
    ``MAX_DAYS`` days is ``invalid_input``.
    """
    today = today or timeline.today()
    last = parse_day(raw_to, "to") or today
    first = parse_day(raw_from, "from") or max(last - timedelta(days=DEFAULT_DAYS - 1), FIRST_DAY)
    if first > last:
        raise Refusal("invalid_input", f"'from' ({first.isoformat()}) is after 'to' ({last.isoformat()}).")
    if (last - first).days + 1 > MAX_DAYS:
        raise Refusal("invalid_input", f"An export covers at most {MAX_DAYS} days; choose a shorter range.")
    return Days(first, last)


def parse_day(raw: str | None, name: str) -> date | None:
    raw = (raw or "").strip()
    if not raw:
        return None
    try:
        if not DAY_PATTERN.fullmatch(raw):
            raise ValueError
        day = date.fromisoformat(raw)
    except ValueError:
        raise Refusal("invalid_input", f"'{name}' must be a date written YYYY-MM-DD, not {raw[:20]!r}.") from None
    if not FIRST_DAY <= day <= LAST_DAY:
        # Times around the calendar's ends cannot be computed (the range is widened a little to find rows).
        raise Refusal(
            "invalid_input",
            f"'{name}' must be a day from {FIRST_DAY.isoformat()} to {LAST_DAY.isoformat()}, not {raw}.",
        )
    return day


def scope_for(user: User | None, what: str) -> int | None:
    """The area ``user`` may export ``what`` of (None: all); bills are the office's (``forbidden``)."""
    if user is None:
        return None
    if what == "bills" and not user.has_role("biller"):
        raise Refusal("forbidden", "Bills are the dispatch office's; a dispatcher cannot export them.")
    return area_scope(user)


def record_export(session, user: User | None, what: str, fmt: str, days: Days) -> None:
    """Write who exported what, of which days, to the audit log, and commit it."""
    record(session, user, f"export.{what}", days.label, after={"format": fmt, "area": scope_for(user, what)})
    session.commit()


def filename(what: str, fmt: str, days: Days) -> str:
    return f"{what}-{days.first.isoformat()}-{days.last.isoformat()}.{fmt}"


def export_rows(session, what: str, days: Days, area_id: int | None) -> Iterator[tuple]:
    """The rows of an export (``COLUMNS[what]``), in id order, read in keyset batches."""
    if what == "bags":
        return _bag_rows(session, days, area_id)
    if what == "scans":
        return _scan_rows(session, days, area_id)
    return _bill_rows(session, days)


def _batches(session, statement, id_column, time_column, days: Days) -> Iterator:
    """Rows of ``statement`` made within ``days``, id after id, a short read per block of ``BATCH_ROWS`` ids.

    Each read covers a fixed block of ids rather than "the next N rows": a
    primary-key range scan whatever the planner believes about the table
    (fresh from a bulk load, its statistics may be far off).
    """
    first, stop = id_window(session, id_column, time_column, days.start, days.end)
    # Each read ends its transaction: no connection is held while the rows travel to the client.
    session.commit()
    statement = statement.where(time_column >= days.start, time_column < days.end).order_by(id_column)
    for after in range(first - 1, stop - 1, BATCH_ROWS):
        rows = session.execute(statement.where(id_column > after, id_column <= min(after + BATCH_ROWS, stop - 1))).all()
        session.commit()
        yield from rows


def _bag_rows(session, days: Days, area_id: int | None) -> Iterator[tuple]:
    parent = aliased(Bag)
    statement = (
        select(
            Bag.id, Bag.qr, Bag.kind, Bag.status, DispatchArea.code, parent.qr, Bill.bill_no, Bag.child_count,
            Bag.capacity, Bag.created_at,
        )
        .join(DispatchArea, DispatchArea.id == Bag.area_id)
        .outerjoin(parent, parent.id == Bag.parent_id)
        .outerjoin(Bill, Bill.id == Bag.bill_id)
    )  # fmt: skip
    if area_id is not None:
        statement = statement.where(Bag.area_id == area_id)
    for _, qr, kind, status, area, parent_qr, bill_no, child_count, capacity, created_at in _batches(
        session, statement, Bag.id, Bag.created_at, days
    ):
        # As in the JSON API: a child has no capacity of its own.
        yield (qr, kind, status, area, parent_qr, bill_no, child_count, capacity if kind == "parent" else None,
               created_at)  # fmt: skip


def _scan_rows(session, days: Days, area_id: int | None) -> Iterator[tuple]:
    parent = aliased(Bag)
    statement = (
        select(
            Scan.id, Scan.at, Scan.kind, Scan.outcome, Scan.reason, Scan.qr, parent.qr, Bill.bill_no, User.username,
            DispatchArea.code,
        )
        .outerjoin(parent, parent.id == Scan.parent_id)
        .outerjoin(Bill, Bill.id == Scan.bill_id)
        .outerjoin(User, User.id == Scan.user_id)
        .outerjoin(DispatchArea, DispatchArea.id == Scan.area_id)
    )  # fmt: skip
    if area_id is not None:
        statement = statement.where(Scan.area_id == area_id)
    for row in _batches(session, statement, Scan.id, Scan.at, days):
        yield tuple(row)


def _bill_rows(session, days: Days) -> Iterator[tuple]:
    columns = COLUMNS["bills"]
    for _, bill in _batches(session, select(Bill.id, Bill), Bill.id, Bill.created_at, days):
        # The JSON shape's figures, with the times kept as times for the spreadsheet.
        shape = bill_json(bill) | {"description": bill.description, "created_at": bill.created_at,
                                   "closed_at": bill.closed_at}  # fmt: skip
        yield tuple(shape[column] for column in columns)


def _guarded(value):
    """Text a spreadsheet would run as a formula gets a leading apostrophe; numbers stay as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not NEGATIVE_NUMBER.fullmatch(value):
        return "'" + value
    return value


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, str):
        return _guarded(FORMULA_AFTER_SEPARATOR.sub("'", value))
    return value


class _SpreadsheetSafeWriter:
    """A ``csv.writer`` whose text cells are quoted and guarded (see :func:`csv_writer`)."""

    def __init__(self, target):
        self._writer = csv.writer(target, quoting=csv.QUOTE_NONNUMERIC)

    def writerow(self, row) -> None:
        self._writer.writerow([_csv_value(value) for value in row])


def csv_writer(target) -> _SpreadsheetSafeWriter:
    """A CSV writer for files people open in a spreadsheet.

    Every text cell is quoted, and text that would start like a formula
    (``= + - @``, tab, carriage return) gets an apostrophe in front: at the
    start of a cell, and after a ``;``, a tab or a line break inside it, where
    a spreadsheet splitting lines on ``;`` or tabs (not ``,``) would start a
    new cell. Numbers are written bare; None is an empty cell; times are
    ISO 8601 UTC.
    """
    return _SpreadsheetSafeWriter(target)


def csv_chunks(what: str, rows: Iterator[tuple]) -> Iterator[str]:
    """The export as CSV text, a chunk per batch of rows; times are ISO 8601 UTC."""
    buffer = io.StringIO()
    writer = csv_writer(buffer)
    writer.writerow(COLUMNS[what])
    for written, row in enumerate(rows, start=1):
        writer.writerow(row)
        if written % BATCH_ROWS == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def write_xlsx(what: str, rows: Iterator[tuple], target: BinaryIO) -> None:
    """Write the export as an XLSX workbook (one sheet, times as UTC date-times) to ``target``."""
    from openpyxl import Workbook

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet(what)
    sheet.append(COLUMNS[what])
    for row in rows:
        sheet.append([_guarded(value) for value in row])
    workbook.save(target)


def xlsx_chunks(what: str, rows: Iterator[tuple], size: int = 64 * 1024) -> Iterator[bytes]:
    """The export as an XLSX workbook, in blocks.

    A workbook is a zip archive, finished only by its last row: it is written
    into a temporary file first, then read out.
    """
    with tempfile.TemporaryFile() as workbook:
        write_xlsx(what, rows, workbook)
        workbook.seek(0)
        while block := workbook.read(size):
            yield block
