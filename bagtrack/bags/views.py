"""Looking bags up: the filtered bag list and one bag with its contents and history."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from .. import corrections, paper, queries, scanning
from ..access import role_required
from ..codes import AREA_CODE_MAX_LENGTH, BILL_NO_MAX_LENGTH, QR_MAX_LENGTH, normalise
from ..database import reads_only
from ..errors import Refusal
from ..extensions import db
from ..models import Bag
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
        area=normalise(request.args.get("area"))[:AREA_CODE_MAX_LENGTH] or None,
        bill=normalise(request.args.get("bill"))[:BILL_NO_MAX_LENGTH] or None,
        q=normalise(request.args.get("q"))[:QR_MAX_LENGTH] or None,
    )


@bp.get("/bags")
@login_required
@reads_from_replica
@reads_only
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
    return queries.visible_bag(db.session, current_user, raw_qr)


def render_bag(bag: Bag, refusal: Refusal | None = None) -> str:
    record = queries.bag_record(db.session, current_user, bag, scans=SCAN_HISTORY_ROWS)
    return render_template(
        "bags/detail.html",
        bag=bag,
        parent_qr=record.parent_qr,
        bill_no=record.bill.bill_no if record.bill is not None else None,
        bill_closed=record.bill is not None and record.bill.status != "open",
        children=record.children,
        scans=record.scans,
        refusal=refusal,
    )


@bp.get("/bags/<qr>")
@login_required
@reads_only
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
        return bag_refusal(refusal, qr)
    parent = result.parent
    return parent_changed(result, "is already complete.", f"closed short at {parent.child_count}/{parent.capacity}.")


def bag_refusal(refusal: Refusal, qr: str):
    """A refused action on a bag: JSON, or the bag's page (when it may be seen) with the refusal."""
    return refusal_answer(refusal, page_after_refusal(lambda: find_visible_bag(qr), render_bag))


def parent_changed(result, already: str, changed: str):
    """The answer to closing or reopening a parent: JSON, or back to its page with what happened."""
    parent = result.parent
    if wants_json():
        return json_ok(duplicate=result.duplicate, parent=parent_json(parent, queries.bill_no_of(db.session, parent)))
    flash(f"Parent bag {parent.qr} {already if result.duplicate else changed}", "ok")
    return redirect(url_for("bags.detail", qr=parent.qr), code=303)


@bp.post("/bags/<parent>/children/<child>/remove")
@role_required("biller")
def remove_child(parent: str, child: str):
    try:
        result = corrections.remove_child(db.session, current_user, parent, child, request.form.get("reason"))
    except Refusal as refusal:
        return bag_refusal(refusal, parent)
    if wants_json():
        bill_no = result.bill.bill_no if result.bill is not None else None
        return json_ok(parent=parent_json(result.parent, bill_no), child=result.child.qr)
    flash(f"Child bag {result.child.qr} taken out of parent bag {result.parent.qr}; it is loose now.", "ok")
    return redirect(url_for("bags.detail", qr=result.parent.qr), code=303)


@bp.post("/bags/<qr>/reopen")
@role_required("biller")
def reopen(qr: str):
    try:
        result = corrections.reopen_parent(db.session, current_user, qr, request.form.get("reason"))
    except Refusal as refusal:
        return bag_refusal(refusal, qr)
    parent = result.parent
    return parent_changed(result, "is already open.", f"is open again at {parent.child_count}/{parent.capacity}.")


@bp.post("/bags/<qr>/delete")
@role_required("admin")
def delete(qr: str):
    try:
        deleted = corrections.delete_bag(db.session, current_user, qr, request.form.get("reason"))
    except Refusal as refusal:
        return bag_refusal(refusal, qr)
    if wants_json():
        return json_ok(deleted=deleted)
    flash(f"Bag {deleted} deleted; its scan history stays in the scan log.", "ok")
    return redirect(url_for("bags.index"), code=303)


@bp.get("/labels")
@role_required("biller")
def labels():
    codes = paper.label_codes(request.args.get("start"), request.args.get("count"))
    return render_template("bags/labels.html", codes=codes, labels=[(code, paper.qr_svg(code)) for code in codes])


@bp.get("/lookup")
@login_required
def lookup():
    """Go to whatever a scanned or typed code names: a bag, a bill, or the bag list searching for it."""
    code = normalise(request.args.get("q"))[:QR_MAX_LENGTH]
    if find_visible_bag(code) is not None:
        return redirect(url_for("bags.detail", qr=code), code=303)
    if code and current_user.has_role("biller") and queries.bill_exists(db.session, code):
        return redirect(url_for("bills.detail", bill_no=code), code=303)
    flash(
        f"No bag or bill {code} was found; bags starting with it are listed." if code else "Type or scan a code.",
        "error",
    )
    return redirect(url_for("bags.index", q=code or None), code=303)
