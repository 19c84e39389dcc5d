"""The handheld scanner: start or resume a parent bag, scan its children, undo a slip.

The page works with a keyboard-wedge scanner and plain form posts; ``static/scan.js``
sends the same forms with ``fetch`` and updates the page from the JSON answers.

Switching parent from the child box: the child form carries ``switch=1``. When
its scanned code is a parent code by format, ``/scan/child`` treats the scan as
a parent scan (start or resume that parent) and answers like ``/scan/parent``
with ``switched: true``. Without ``switch`` a parent code in the child field
is ``wrong_kind``, as the HTTP contract says.
"""

from __future__ import annotations

from flask import Blueprint, current_app, flash, redirect, render_template, request, send_from_directory, url_for
from flask_login import current_user, login_required

from .. import queries, scanning
from ..codes import AREA_CODE_MAX_LENGTH, QR_MAX_LENGTH, classify, normalise
from ..errors import Refusal
from ..extensions import db
from ..models import Bag
from ..shapes import parent_json
from ..web import json_ok, refusal_answer, wants_json

bp = Blueprint("scan", __name__)


def visible_parent_or_none(raw_qr: str | None) -> Bag | None:
    """The parent the page is about, or None when no code is given; refusals propagate."""
    code = normalise(raw_qr)
    if not code:
        return None
    return scanning.visible_parent(db.session, current_user, code[:QR_MAX_LENGTH])


def render_scanner(parent: Bag | None, refusal: Refusal | None = None) -> str:
    figures = parent_json(parent, queries.bill_no_of(db.session, parent)) if parent is not None else None
    may_choose_area = current_user.has_role("biller")
    chosen_area = normalise(request.values.get("area"))[:AREA_CODE_MAX_LENGTH]
    return render_template(
        "scan/page.html",
        parent=figures,
        children=queries.children_of(db.session, parent) if parent is not None else [],
        capacity=current_app.config["BAGTRACK_PARENT_CAPACITY"],
        areas=queries.areas_for(db.session, current_user) if may_choose_area else [],
        chosen_area=chosen_area,
        refusal=refusal,
    )


def render_after_refusal(refusal: Refusal) -> str:
    """The scanner page again, on the parent the form was about when the user may still see it."""
    try:
        parent = visible_parent_or_none(request.form.get("parent"))
    except Refusal:
        parent = None
    return render_scanner(parent, refusal)


def parent_scanned_message(scan: scanning.ParentScan) -> str:
    parent = scan.parent
    if scan.created:
        return f"New parent bag {parent.qr} started in area {parent.area.code}."
    return f"Parent bag {parent.qr}: {parent.child_count}/{parent.capacity}, {parent.status}."


def child_scanned_message(scan: scanning.ChildScan) -> str:
    parent, child = scan.parent, scan.child
    if scan.duplicate:
        return f"{child.qr} is already in this parent ({parent.child_count}/{parent.capacity})."
    if parent.status == "complete":
        return f"{child.qr} added. Parent bag {parent.qr} is complete ({parent.child_count}/{parent.capacity})."
    return f"{child.qr} added: {parent.child_count}/{parent.capacity}."


def is_parent_code(raw_qr: str | None) -> bool:
    try:
        return classify(raw_qr).kind == "parent"
    except Refusal:
        return False


@bp.get("/sw.js")
def service_worker():
    """The service worker that keeps an offline copy of the scanner pages; served from / so its scope is the site."""
    response = send_from_directory(current_app.static_folder, "sw.js", mimetype="text/javascript", max_age=0)
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/scan")
@login_required
def page():
    try:
        parent = visible_parent_or_none(request.args.get("parent"))
    except Refusal as refusal:
        return render_scanner(None, refusal), refusal.status
    return render_scanner(parent)


def answer_parent_scan(*, switched: bool = False):
    try:
        scan = scanning.scan_parent(db.session, current_user, request.form.get("qr"), request.form.get("area"))
    except Refusal as refusal:
        return refusal_answer(refusal, render_after_refusal)
    message = parent_scanned_message(scan)
    if wants_json():
        body = {
            "created": scan.created,
            "parent": parent_json(scan.parent, queries.bill_no_of(db.session, scan.parent)),
            "children": scan.children,
            "message": message,
        }
        if switched:
            body["switched"] = True
        return json_ok(201 if scan.created else 200, **body)
    flash(message, "ok")
    return redirect(url_for("scan.page", parent=scan.parent.qr), code=303)


@bp.post("/scan/parent")
@login_required
def parent():
    return answer_parent_scan()


@bp.post("/scan/child")
@login_required
def child():
    if request.form.get("switch") == "1" and is_parent_code(request.form.get("qr")):
        return answer_parent_scan(switched=True)
    try:
        scan = scanning.scan_child(db.session, current_user, request.form.get("parent"), request.form.get("qr"))
    except Refusal as refusal:
        return refusal_answer(refusal, render_after_refusal)
    message = child_scanned_message(scan)
    if wants_json():
        return json_ok(
            201 if scan.created else 200,
            created=scan.created,
            duplicate=scan.duplicate,
            child={"qr": scan.child.qr, "status": scan.child.status},
            parent=parent_json(scan.parent, queries.bill_no_of(db.session, scan.parent)),
            message=message,
        )
    flash(message, "ok")
    return redirect(url_for("scan.page", parent=scan.parent.qr), code=303)


@bp.post("/scan/undo")
@login_required
def undo():
    try:
        result = scanning.undo_last(db.session, current_user, request.form.get("parent"))
    except Refusal as refusal:
        return refusal_answer(refusal, render_after_refusal)
    parent = result.parent
    message = f"Took {result.child.qr} out of {parent.qr}: {parent.child_count}/{parent.capacity}."
    if wants_json():
        return json_ok(
            child={"qr": result.child.qr, "status": result.child.status},
            parent=parent_json(parent, queries.bill_no_of(db.session, parent)),
            message=message,
        )
    flash(message, "ok")
    return redirect(url_for("scan.page", parent=parent.qr), code=303)
