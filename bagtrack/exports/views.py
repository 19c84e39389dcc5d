"""Export downloads for every signed-in user, scoped like the pages."""

from __future__ import annotations

from flask import Blueprint, Response, render_template, request, stream_with_context, url_for
from flask_login import current_user, login_required

from .. import exporting
from ..extensions import db
from ..replica import reads, reads_from_replica

bp = Blueprint("exports", __name__)

PRIVATE = {"Cache-Control": "no-store"}


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
