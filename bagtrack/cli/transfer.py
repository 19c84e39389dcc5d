"""``flask import bags|bills FILE`` and ``flask export bags|scans|bills``: data in and out in bulk."""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from pathlib import Path

import click
from flask.cli import AppGroup, with_appcontext
from sqlalchemy.exc import SQLAlchemyError

from .. import exporting, importing
from ..errors import Refusal
from ..extensions import db
from .site import UPGRADE_HINT, first_line
from .users import fail

# Exit status when the import ran but refused some rows (the others are imported).
EXIT_REFUSED = 2
# Refusals printed on the terminal; the report file has them all.
PRINTED_REFUSALS = 20

import_group = AppGroup(
    "import",
    help=(
        "Import bags or bills from a CSV or XLSX file (the extension decides).\n\n"
        "Valid rows are imported together; each refused row is reported with its row number"
        " (the header is row 1), a code and a reason, on the terminal and in an error report.\n\n"
        f"Exit status: 0 when every row was imported, {EXIT_REFUSED} when some rows were refused"
        " (the others are imported), 1 when nothing was imported because the file, its extension"
        " or its header is wrong."
    ),
)
ERRORS_OPTION = click.option(
    "--errors", "errors_path", metavar="FILE", help="Error report CSV; default: FILE.errors.csv next to FILE."
)
IMPORTERS = {"bags": importing.import_bags, "bills": importing.import_bills}


def _run_import(kind: str, path: str, errors_path: str | None) -> None:
    source = Path(path)
    if not source.is_file():
        fail(f"{path}: no such file.")
    try:
        extension = importing.file_extension(source.name)
    except Refusal as refusal:
        fail(refusal.message)
    report_path = Path(errors_path) if errors_path else source.with_name(source.name + ".errors.csv")
    started = time.perf_counter()
    with ExitStack() as stack:
        report_writer = None

        def on_refusal(refusal: importing.RowRefusal) -> None:
            nonlocal report_writer
            if report_writer is None:
                report_file = stack.enter_context(report_path.open("w", newline="", encoding="utf-8"))
                report_writer = exporting.csv_writer(report_file)
                report_writer.writerow(("row", "code", "message"))
            report_writer.writerow((refusal.row, refusal.code, refusal.message))

        def progress(total: int | None):
            bar = stack.enter_context(click.progressbar(length=total or 0, label="Reading rows", file=sys.stdout))
            return bar.update

        stream = stack.enter_context(source.open("rb"))
        try:
            report = IMPORTERS[kind](
                db.session, stream, extension, user=None, source=str(source),
                on_refusal=on_refusal, progress=progress,
            )  # fmt: skip
        except (Refusal, SQLAlchemyError) as exc:
            # Nothing was imported: a half-written report would only mislead.
            stack.close()
            if report_writer is not None:
                report_path.unlink(missing_ok=True)
            if isinstance(exc, Refusal):
                fail(f"{path}: {exc.message} Nothing was imported.")
            fail(f"the database refused the import ({first_line(exc)}); if it is not migrated, {UPGRADE_HINT}")
    elapsed = time.perf_counter() - started
    for refusal in report.refusals[:PRINTED_REFUSALS]:
        click.echo(f"row {refusal.row}: {refusal.code}: {refusal.message}")
    if report.refused > PRINTED_REFUSALS:
        click.echo(f"... and {report.refused - PRINTED_REFUSALS} more refused rows.")
    where = f" (see {report_path})" if report.refused else ""
    click.echo(f"Imported {report.imported} {kind}, refused {report.refused}{where}, in {elapsed:.1f} s.")
    if report.refused:
        sys.exit(EXIT_REFUSED)


@import_group.command("bags")
@click.argument("path", metavar="FILE")
@ERRORS_OPTION
@with_appcontext
def import_bags(path: str, errors_path: str | None) -> None:
    """Import bags from FILE with the columns qr, kind, area, parent.

    kind is parent or child. A parent names its area; a child names its
    parent (in bagtrack or anywhere in the file) and takes its area, or is
    loose and names an area. Codes already in bagtrack are refused: an import
    only adds bags. Parents, links and the scan log are written as if scanned
    (by no user), with the dashboard figures.
    """
    _run_import("bags", path, errors_path)


@import_group.command("bills")
@click.argument("path", metavar="FILE")
@ERRORS_OPTION
@with_appcontext
def import_bills(path: str, errors_path: str | None) -> None:
    """Import bills from FILE (columns bill_no, capacity, destination, vehicle_no, description, status, parents).

    status is open (default) or closed; parents lists codes of parents in
    bagtrack (separated by spaces, commas or semicolons) to load onto the
    bill, with the same rules as loading one by one.
    """
    _run_import("bills", path, errors_path)


@click.command("export")
@click.argument("what", type=click.Choice(exporting.EXPORTS))
@click.option("--from", "first", metavar="YYYY-MM-DD", help="First day (UTC); default: 6 days before --to.")
@click.option("--to", "last", metavar="YYYY-MM-DD", help="Last day, included (UTC); default: today.")
@click.option("--format", "fmt", type=click.Choice(exporting.FORMATS), default="csv", show_default=True)
@click.option(
    "--output",
    "-o",
    metavar="FILE|DIR|-",
    help="File or directory to write to; - is standard output. Default: WHAT-FROM-TO.FORMAT in the current directory",
)
@with_appcontext
def export(what: str, first: str | None, last: str | None, fmt: str, output: str | None) -> None:
    """Export bags, scans or bills of a range of days (by creation time; scans by scan time).

    Rows come in id order and are streamed: memory stays flat whatever the
    range (at most 366 days). The export is written to the audit log.
    """
    try:
        days = exporting.parse_days(first, last)
        exporting.record_export(db.session, None, what, fmt, days)
    except Refusal as refusal:
        fail(refusal.message)
    except SQLAlchemyError as exc:
        fail(f"the database is not ready ({first_line(exc)}); {UPGRADE_HINT}")
    output = output or exporting.filename(what, fmt, days)
    if Path(output).is_dir():
        output = str(Path(output) / exporting.filename(what, fmt, days))
    counted = 0

    def rows():
        nonlocal counted
        for row in exporting.export_rows(db.session, what, days, None):
            counted += 1
            yield row

    with ExitStack() as stack:
        try:
            if fmt == "csv":
                target = (
                    sys.stdout
                    if output == "-"
                    else stack.enter_context(open(output, "w", newline="", encoding="utf-8"))
                )
            else:
                target = sys.stdout.buffer if output == "-" else stack.enter_context(open(output, "wb"))
        except OSError as exc:
            fail(f"cannot write {output}: {exc.strerror}")
        if fmt == "csv":
            for chunk in exporting.csv_chunks(what, rows()):
                target.write(chunk)
        else:
            exporting.write_xlsx(what, rows(), target)
    where = "standard output" if output == "-" else output
    click.echo(f"Exported {counted} {what} of {days.label} to {where}.", err=output == "-")
