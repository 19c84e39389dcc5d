"""Data in and out in bulk: export downloads for every signed-in user (scoped like the pages)
and the admin's import page."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, render_template, request, stream_with_context, url_for
from flask_login import current_user, login_required

from .. import exporting, importing
from ..access import role_required
from ..errors import Refusal
from ..extensions import db
from ..limits import accepts_upload
from ..replica import reads, reads_from_replica
from ..web import json_ok, refusal_answer, wants_json

bp = Blueprint("exports", __name__)

IMPORTERS = {"bags": importing.import_bags, "bills": importing.import_bills}
PRIVATE = {"Cache-Control": "no-store"}
# An XLSX the page reads unpacks to at most this much (its rows are limited by BAGTRACK_IMPORT_PAGE_MAX_ROWS).
PAGE_UNPACKED_BYTES = 32 * 1024 * 1024


@bp.get("/exports/")
@login_required
def index():
    """Download links for a range of days (a week to today by default)."""
    days = exporting.parse_days(request.args.get("from"), request.args.get("to"))
    allowed = [what for what in exporting.EXPORTS if what != "bills" or current_user.has_role("biller")]
    links = [
        (what, fmt, url_for("exports.download", what=what, fmt=fmt, **{"from": days.first, "to": days.last}))
        for what in allowed
        for fmt in exporting.FORMATS
    ]
    return render_template("exports/index.html", days=days, links=links, max_days=exporting.MAX_DAYS)


@bp.get("/exports/<any(bags, scans, bills):what>.<any(csv, xlsx):fmt>")
@login_required
@reads_from_replica
def download(what: str, fmt: str):
    """The export as a streamed download; bad dates are a 400, bills for a dispatcher a 403."""
    days = exporting.parse_days(request.args.get("from"), request.args.get("to"))
    area_id = exporting.scope_for(current_user, what)
    # Chosen before the audit entry is written: the export never includes what that write changes.
    source = reads()
    exporting.record_export(db.session, current_user, what, fmt, days)
    rows = exporting.export_rows(source, what, days, area_id)
    headers = {**PRIVATE, "Content-Disposition": f'attachment; filename="{exporting.filename(what, fmt, days)}"'}
    chunks = exporting.csv_chunks(what, rows) if fmt == "csv" else exporting.xlsx_chunks(what, rows)
    return Response(stream_with_context(chunks), mimetype=exporting.MEDIA_TYPES[fmt], headers=headers)


def page_limits() -> importing.FileLimits:
    """The files the page imports within one request; the command line takes any size."""
    return importing.FileLimits(
        rows=current_app.config["BAGTRACK_IMPORT_PAGE_MAX_ROWS"], unpacked_bytes=PAGE_UNPACKED_BYTES
    )


def render_import(refusal: Refusal | None = None, report: importing.ImportReport | None = None) -> str:
    return render_template(
        "exports/import.html",
        refusal=refusal,
        report=report,
        kind=request.form.get("kind", "bags"),
        shown=importing.SHOWN_REFUSALS,
        max_rows=current_app.config["BAGTRACK_IMPORT_PAGE_MAX_ROWS"],
    )


@bp.route("/admin/import", methods=["GET", "POST"])
@accepts_upload
@role_required("admin")
def import_page():
    """Upload a CSV or XLSX of bags or bills; the answer is the import's per-row report.

    The report is the answer, so a successful upload renders it (200) rather
    than redirecting; JSON clients get 201 when rows were imported.
    """
    if request.method == "GET":
        return render_import()
    try:
        kind = request.form.get("kind", "")
        if kind not in IMPORTERS:
            raise Refusal("invalid_input", "Choose what the file holds: bags or bills.")
        upload = request.files.get("file")
        if upload is None or not upload.filename:
            raise Refusal("invalid_input", "Choose a CSV or XLSX file to import.")
        extension = importing.file_extension(upload.filename)
        report = IMPORTERS[kind](
            db.session,
            upload.stream,
            extension,
            user=current_user._get_current_object(),
            source=upload.filename,
            limits=page_limits(),
        )
    except Refusal as refusal:
        return refusal_answer(refusal, render_import)
    if wants_json():
        return json_ok(
            201 if report.imported else 200,
            rows=report.rows,
            imported=report.imported,
            refused=report.refused,
            refusals=[{"row": item.row, "code": item.code, "message": item.message} for item in report.refusals],
        )
    return render_import(report=report)
