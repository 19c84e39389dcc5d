"""Looking bags up: the filtered bag list and one bag with its contents and history."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from .. import queries, scanning
from ..access import may_see_area, role_required
from ..codes import QR_MAX_LENGTH, normalise
from ..errors import Refusal
from ..extensions import db
from ..models import Bag, Bill
from ..replica import reads, reads_from_replica
from ..shapes import parent_json
from ..web import before_arg, json_ok, page_after_refusal, refusal_answer, wants_json

bp = Blueprint("bags", __name__)

SCAN_HISTORY_ROWS = 50


def filters_from_args() -> queries.BagFilters:
    """The list filters as the user typed them, normalised; unknown kinds and statuses are ignored."""
    kind = request.args.get("kind", "")
    status = request.args.get("status", "")
    return queries.BagFilters(
        kind=kind if kind in queries.KINDS else None,
        status=status if status in queries.STATUSES else None,
        area=normalise(request.args.get("area"))[:20] or None,
        bill=normalise(request.args.get("bill"))[:50] or None,
        q=normalise(request.args.get("q"))[:QR_MAX_LENGTH] or None,
    )


@bp.get("/bags")
@login_required
@reads_from_replica
def index():
    filters = filters_from_args()
    bags, next_before = queries.bag_page(
        reads(), current_user, filters, limit=current_app.config["BAGTRACK_PAGE_SIZE"], before=before_arg()
    )
    chosen = {name: value for name, value in vars(filters).items() if value}
    return render_template(
        "bags/index.html",
        bags=bags,
        filters=filters,
        chosen=chosen,
        next_before=next_before,
        paged=request.args.get("before") is not None,
        areas=queries.areas_for(reads(), current_user),
        kinds=queries.KINDS,
        statuses=queries.STATUSES,
    )


def find_visible_bag(raw_qr: str) -> Bag | None:
    """The bag ``raw_qr`` names, or None when it is unknown or outside the user's area."""
    code = normalise(raw_qr)
    if not 0 < len(code) <= QR_MAX_LENGTH:
        return None
    bag = scanning.find_bag(db.session, code)
    if bag is None or not may_see_area(current_user, bag.area_id):
        return None
    return bag


def render_bag(bag: Bag, refusal: Refusal | None = None) -> str:
    parent_qr = db.session.get(Bag, bag.parent_id).qr if bag.parent_id is not None else None
    bill_no = db.session.get(Bill, bag.bill_id).bill_no if bag.bill_id is not None else None
    return render_template(
        "bags/detail.html",
        bag=bag,
        parent_qr=parent_qr,
        bill_no=bill_no,
        children=queries.children_of(db.session, bag) if bag.is_parent else [],
        scans=queries.scan_rows(db.session, current_user, limit=SCAN_HISTORY_ROWS, bag=bag),
        refusal=refusal,
    )


@bp.get("/bags/<qr>")
@login_required
def detail(qr: str):
    bag = find_visible_bag(qr)
    if bag is None:
        abort(404, f"Bag {normalise(qr)[:QR_MAX_LENGTH]} was not found.")
    return render_bag(bag)


@bp.post("/bags/<qr>/close")
@role_required("biller")
def close(qr: str):
    try:
        result = scanning.close_parent(db.session, current_user, qr)
    except Refusal as refusal:
        return refusal_answer(refusal, page_after_refusal(lambda: find_visible_bag(qr), render_bag))
    parent = result.parent
    if wants_json():
        return json_ok(duplicate=result.duplicate, parent=parent_json(parent))
    if result.duplicate:
        flash(f"Parent bag {parent.qr} is already complete.", "ok")
    else:
        flash(f"Parent bag {parent.qr} closed short at {parent.child_count}/{parent.capacity}.", "ok")
    return redirect(url_for("bags.detail", qr=parent.qr), code=303)
