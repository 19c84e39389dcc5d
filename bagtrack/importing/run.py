"""One import run: the rows read, checked and staged in chunks, applied in one transaction, and its report."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from sqlalchemy import select, text

from .. import figures
from ..audit import record
from ..models import DispatchArea, User
from .bags import BagLayout
from .bills import BillLayout
from .files import NO_LIMITS, FileLimits, check_file, open_table, row_estimate
from .layout import Layout

CHUNK_ROWS = 10_000
# Refusals an import keeps to show; every one of them goes to ``on_refusal``.
SHOWN_REFUSALS = 200


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


def import_bags(session, stream: BinaryIO, extension: str, *, user: User | None, source: str,
                on_refusal: Callable[[RowRefusal], None] | None = None,
                progress: Progress | None = None, limits: FileLimits = NO_LIMITS) -> ImportReport:  # fmt: skip
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
                 progress: Progress | None = None, limits: FileLimits = NO_LIMITS) -> ImportReport:  # fmt: skip
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


def _run(session, layout: Layout, stream, extension, user, source, on_refusal, progress, limits) -> ImportReport:
    report = ImportReport(kind=layout.kind)
    check_file(stream, extension, limits)
    estimate = row_estimate(stream, extension) if progress is not None else None
    rows = open_table(stream, extension, layout.columns, limits)
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
    figures.announce(None, changed_areas)
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
