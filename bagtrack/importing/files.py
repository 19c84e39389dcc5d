"""Reading an import file: its extension, the limits checked before it is read, its header and its rows.

CSV is read with the ``csv`` module, XLSX with openpyxl in read-only mode;
either streams, so memory stays flat whatever the size.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from ..codes import normalise
from ..errors import Refusal

EXTENSIONS = ("csv", "xlsx")
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


NO_LIMITS = FileLimits()


def file_extension(filename: str) -> str:
    """The lower-case extension of ``filename``; anything but csv or xlsx is ``invalid_input``."""
    extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if extension not in EXTENSIONS:
        raise Refusal("invalid_input", f"{filename[-100:]} is neither a .csv nor an .xlsx file.")
    return extension


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


def row_estimate(stream: BinaryIO, extension: str) -> int | None:
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


def open_table(
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


def shown(value: str) -> str:
    """A value quoted in a message: no control characters (messages are staged as COPY text), bounded."""
    return normalise(value)[:SHOWN_VALUE] or "(empty)"
