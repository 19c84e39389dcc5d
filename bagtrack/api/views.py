"""The JSON API for dashboards, monitoring and scripts."""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from flask_login import current_user, login_required

from .. import queries
from ..access import area_scope, may_see_area, visible_figures
from ..cache import dashboard_figures
from ..codes import normalise
from ..errors import Refusal
from ..extensions import db
from ..replica import reads, reads_from_replica
from ..scanning import find_bag
from ..shapes import iso, scan_json
from ..web import json_error

bp = Blueprint("api", __name__, url_prefix="/api")

MAX_SCAN_PAGE = 200


@bp.get("/stats")
@login_required
def stats():
    return jsonify(visible_figures(current_user, dashboard_figures(db.session, area_scope(current_user))))


def _positive_int(name: str, default: int | None, maximum: int | None = None) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18 or int(raw) < 1:
        raise ValueError(f"{name} must be a positive whole number")
    value = int(raw)
    return min(value, maximum) if maximum else value


@bp.get("/scans")
@login_required
@reads_from_replica
def scans():
    try:
        limit = _positive_int("limit", 50, MAX_SCAN_PAGE)
        before = _positive_int("before", None)
    except ValueError as exc:
        return json_error("invalid_input", f"{exc}.")
    try:
        filters = queries.ScanFilters.from_args(request.args)
    except Refusal as refusal:
        return json_error(refusal.code, refusal.message)
    rows = queries.scan_rows(reads(), current_user, limit=limit, before=before, filters=filters)
    next_before = rows[-1].id if len(rows) == limit else None
    return jsonify(scans=[scan_json(row) for row in rows], next_before=next_before)


@bp.get("/bags/<path:qr>")
@login_required
def bag(qr: str):
    code = normalise(qr)
    bag = find_bag(db.session, code[:64]) if 0 < len(code) <= 64 else None
    if bag is None or not may_see_area(current_user, bag.area_id):
        return json_error("not_found", f"Bag {code[:64]} was not found.", 404)
    parent_qr, bill = queries.holders_of(db.session, bag)
    children = queries.children_of(db.session, bag) if bag.kind == "parent" else []
    history = queries.scan_rows(db.session, current_user, limit=20, bag=bag)
    return jsonify(
        qr=bag.qr,
        kind=bag.kind,
        status=bag.status,
        area=bag.area.code,
        created_at=iso(bag.created_at),
        parent=parent_qr,
        bill_no=bill.bill_no if bill is not None else None,
        child_count=bag.child_count,
        capacity=bag.capacity if bag.kind == "parent" else None,
        children=children,
        scans=[scan_json(row) for row in history],
    )
