"""The JSON API for dashboards, monitoring and scripts."""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from flask_login import current_user, login_required

from .. import queries
from ..access import area_scope, visible_figures
from ..codes import QR_MAX_LENGTH, normalise
from ..database import reads_only
from ..errors import Refusal
from ..extensions import db
from ..figures import dashboard_figures
from ..replica import reads, reads_from_replica
from ..shapes import iso, scan_json
from ..web import before_arg, json_error, positive_int_arg

bp = Blueprint("api", __name__, url_prefix="/api")

SCAN_PAGE = 50
MAX_SCAN_PAGE = 200
BAG_SCANS = 20


@bp.get("/stats")
@login_required
@reads_only
def stats():
    return jsonify(visible_figures(current_user, dashboard_figures(db.session, area_scope(current_user))))


@bp.get("/scans")
@login_required
@reads_from_replica
@reads_only
def scans():
    try:
        limit = positive_int_arg("limit", SCAN_PAGE, MAX_SCAN_PAGE)
        before = before_arg()
        filters = queries.ScanFilters.from_args(request.args)
    except Refusal as refusal:
        return json_error(refusal.code, refusal.message)
    rows, next_before = queries.scan_page(reads(), current_user, limit=limit, before=before, filters=filters)
    return jsonify(scans=[scan_json(row) for row in rows], next_before=next_before)


@bp.get("/bags/<path:qr>")
@login_required
@reads_only
def bag(qr: str):
    bag = queries.visible_bag(db.session, current_user, qr)
    if bag is None:
        return json_error("not_found", f"Bag {normalise(qr)[:QR_MAX_LENGTH]} was not found.", 404)
    record = queries.bag_record(db.session, current_user, bag, scans=BAG_SCANS)
    return jsonify(
        qr=bag.qr,
        kind=bag.kind,
        status=bag.status,
        area=bag.area.code,
        created_at=iso(bag.created_at),
        parent=record.parent_qr,
        bill_no=record.bill.bill_no if record.bill is not None else None,
        child_count=bag.child_count,
        capacity=bag.capacity if bag.kind == "parent" else None,
        children=record.children,
        scans=[scan_json(row) for row in record.scans],
    )
