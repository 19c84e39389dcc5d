"""The supervisors' reports: operators per day and the daily dispatch summary, as pages, CSV, XLSX and JSON."""

from __future__ import annotations

from flask import Blueprint, Response, abort, jsonify, render_template, request
from flask_login import current_user, login_required
from sqlalchemy import select

from .. import exporting, floor
from ..access import area_scope, role_required
from ..database import reads_only
from ..errors import Refusal
from ..extensions import db
from ..models import DispatchArea
from ..shapes import iso

bp = Blueprint("reports", __name__)

PRIVATE = {"Cache-Control": "private, no-store"}


def _report_area() -> int | None:
    """The ``area`` asked for (a code), within what the user may see; a dispatcher always gets their own."""
    raw = (request.args.get("area") or "").strip().upper()
    scope = area_scope(current_user)
    if not raw:
        return scope
    area_id = db.session.scalar(select(DispatchArea.id).where(DispatchArea.code == raw[:32]))
    if area_id is None:
        raise Refusal("invalid_input", f"There is no area {raw[:32]!r}.")
    if scope is not None and area_id != scope:
        abort(404)
    return area_id


def _download(what: str, fmt: str, day, report) -> Response:
    headers = {**PRIVATE, "Content-Disposition": f'attachment; filename="{what}-{day.isoformat()}.{fmt}"'}
    return Response(floor.report_file(what, fmt, report), mimetype=exporting.MEDIA_TYPES[fmt], headers=headers)


def _format() -> str | None:
    fmt = request.args.get("format") or None
    if fmt not in (None, *exporting.FORMATS):
        raise Refusal("invalid_input", "'format' must be csv or xlsx.")
    return fmt


def _operators_json(day, operators) -> dict:
    return {
        "day": day.isoformat(),
        "operators": [{**row, "first_at": iso(row["first_at"]), "last_at": iso(row["last_at"])} for row in operators],
    }


@bp.get("/reports/operators")
@login_required
@reads_only
def operators():
    """Each operator's day: accepted and refused scans, parents completed, first and last scan."""
    day, fmt, area_id = floor.parse_day(request.args.get("day")), _format(), _report_area()
    rows = floor.operators_report(db.session, day, area_id)
    if fmt:
        return _download("operators", fmt, day, rows)
    areas = db.session.scalars(select(DispatchArea.code).order_by(DispatchArea.code)).all()
    area = request.args.get("area", "")
    return render_template("reports/operators.html", day=day, operators=rows, areas=areas, area=area)


@bp.get("/api/reports/operators")
@login_required
@reads_only
def operators_json():
    day, area_id = floor.parse_day(request.args.get("day")), _report_area()
    return jsonify(_operators_json(day, floor.operators_report(db.session, day, area_id)))


@bp.get("/reports/daily")
@role_required("biller")
@reads_only
def daily():
    """The bills closed on one day, with their totals: a printable page, CSV or XLSX."""
    day, fmt = floor.parse_day(request.args.get("day")), _format()
    report = floor.daily_report(db.session, day)
    if fmt:
        return _download("daily", fmt, day, report)
    return render_template("reports/daily.html", report=report)


@bp.get("/api/reports/daily")
@role_required("biller")
@reads_only
def daily_json():
    report = floor.daily_report(db.session, floor.parse_day(request.args.get("day")))
    return jsonify(
        {
            "day": report["day"].isoformat(),
            "bills": [{**row, "closed_at": iso(row["closed_at"])} for row in report["bills"]],
            "totals": report["totals"],
        }
    )
