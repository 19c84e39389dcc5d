"""The dispatch office's bills: create them, load parent bags onto them, close and reopen them."""

from __future__ import annotations

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select

from .. import billing, paper, queries
from ..access import role_required
from ..codes import normalise
from ..database import reads_only
from ..errors import Refusal
from ..extensions import db
from ..models import Bill
from ..replica import reads, reads_from_replica
from ..shapes import bill_json, parent_json
from ..web import before_arg, json_ok, page_after_refusal, refusal_answer, wants_json

bp = Blueprint("bills", __name__)

SCAN_HISTORY_ROWS = 20
BILL_FIELDS = ("bill_no", "capacity", "destination", "vehicle_no", "description")


def render_list(refusal: Refusal | None = None) -> str:
    filters = queries.BillFilters.from_args(request.args)
    bills, next_before = queries.bill_page(
        reads(), limit=current_app.config["BAGTRACK_PAGE_SIZE"], before=before_arg(), filters=filters
    )
    chosen = {"q": filters.q, "status": filters.status, **queries.days_chosen(request.args)}
    entered = {name: request.form.get(name, "") for name in BILL_FIELDS} if refusal else {}
    return render_template(
        "bills/index.html",
        bills=[(bill, bill_json(bill)) for bill in bills],
        next_before=next_before,
        status=filters.status,
        filters=filters,
        chosen={name: value for name, value in chosen.items() if value},
        entered=entered,
        refusal=refusal,
    )


def render_bill(bill: Bill, refusal: Refusal | None = None) -> str:
    return render_template(
        "bills/detail.html",
        bill=bill,
        figures=bill_json(bill),
        parents=queries.parents_on_bill(db.session, bill),
        scans=queries.scan_rows(db.session, current_user, limit=SCAN_HISTORY_ROWS, bill=bill),
        refusal=refusal,
    )


def render_bill_or_error(bill_no: str):
    """The bill page after a refusal, or the error page when the bill itself does not exist."""
    return page_after_refusal(
        lambda: db.session.scalar(select(Bill).where(Bill.bill_no == normalise(bill_no))), render_bill
    )


@bp.get("/bills")
@role_required("biller")
@reads_from_replica
@reads_only
def index():
    return render_list()


@bp.post("/bills")
@role_required("biller")
def create():
    try:
        bill = billing.create_bill(db.session, current_user, request.form)
    except Refusal as refusal:
        return refusal_answer(refusal, render_list)
    if wants_json():
        return json_ok(201, bill=bill_json(bill))
    flash(f"Bill {bill.bill_no} created.", "ok")
    return redirect(url_for("bills.detail", bill_no=bill.bill_no), code=303)


@bp.get("/bills/<bill_no>")
@role_required("biller")
@reads_only
def detail(bill_no: str):
    return render_bill(billing.find_bill(db.session, bill_no))


@bp.post("/bills/<bill_no>/parents")
@role_required("biller")
def load(bill_no: str):
    try:
        change = billing.load_parent(
            db.session, current_user, bill_no, request.form.get("qr"), confirmed=request.form.get("confirm") == "1"
        )
    except Refusal as refusal:
        return refusal_answer(refusal, render_bill_or_error(bill_no))
    bill, parent = change.bill, change.parent
    if wants_json():
        return json_ok(duplicate=change.duplicate, bill=bill_json(bill), parent=parent_json(parent, bill.bill_no))
    if change.duplicate:
        flash(f"Parent bag {parent.qr} is already on bill {bill.bill_no}.", "ok")
    else:
        flash(f"Loaded parent bag {parent.qr}: {bill.parent_count}/{bill.capacity} on bill {bill.bill_no}.", "ok")
    return redirect(url_for("bills.detail", bill_no=bill.bill_no), code=303)


@bp.post("/bills/<bill_no>/parents/<qr>/remove")
@role_required("biller")
def remove(bill_no: str, qr: str):
    try:
        change = billing.remove_parent(db.session, current_user, bill_no, qr)
    except Refusal as refusal:
        return refusal_answer(refusal, render_bill_or_error(bill_no))
    bill, parent = change.bill, change.parent
    if wants_json():
        return json_ok(bill=bill_json(bill), parent=parent_json(parent, queries.bill_no_of(db.session, parent)))
    flash(f"Removed parent bag {parent.qr} from bill {bill.bill_no}.", "ok")
    return redirect(url_for("bills.detail", bill_no=bill.bill_no), code=303)


@bp.post("/bills/<bill_no>/close")
@role_required("biller")
def close(bill_no: str):
    try:
        change = billing.close_bill(db.session, current_user, bill_no)
    except Refusal as refusal:
        return refusal_answer(refusal, render_bill_or_error(bill_no))
    return state_changed(change, "closed")


@bp.post("/bills/<bill_no>/reopen")
@role_required("biller")
def reopen(bill_no: str):
    try:
        change = billing.reopen_bill(db.session, current_user, bill_no)
    except Refusal as refusal:
        return refusal_answer(refusal, render_bill_or_error(bill_no))
    return state_changed(change, "reopened")


def state_changed(change: billing.BillChange, verb: str):
    bill = change.bill
    if wants_json():
        return json_ok(duplicate=change.duplicate, bill=bill_json(bill))
    if change.duplicate:
        flash(f"Bill {bill.bill_no} is already {bill.status}.", "ok")
    else:
        flash(f"Bill {bill.bill_no} {verb}.", "ok")
    return redirect(url_for("bills.detail", bill_no=bill.bill_no), code=303)


@bp.post("/bills/<bill_no>/edit")
@role_required("biller")
def edit(bill_no: str):
    try:
        change = billing.edit_bill(db.session, current_user, bill_no, request.form)
    except Refusal as refusal:
        return refusal_answer(refusal, render_bill_or_error(bill_no))
    bill = change.bill
    if wants_json():
        return json_ok(duplicate=change.duplicate, bill=bill_json(bill))
    flash(f"Bill {bill.bill_no} {'unchanged' if change.duplicate else 'updated'}.", "ok")
    return redirect(url_for("bills.detail", bill_no=bill.bill_no), code=303)


@bp.post("/bills/<bill_no>/cancel")
@role_required("biller")
def cancel(bill_no: str):
    try:
        change = billing.cancel_bill(db.session, current_user, bill_no, request.form.get("reason"))
    except Refusal as refusal:
        return refusal_answer(refusal, render_bill_or_error(bill_no))
    return state_changed(change, "cancelled")


@bp.get("/bills/<bill_no>/print")
@role_required("biller")
@reads_only
def print_note(bill_no: str):
    bill = billing.find_bill(db.session, bill_no)
    return render_template(
        "bills/print.html",
        bill=bill,
        figures=bill_json(bill),
        parents=queries.parents_on_bill(db.session, bill),
        people=queries.bill_people(db.session, bill),
        qr=paper.qr_svg(bill.bill_no),
        child_weight=current_app.config["BAGTRACK_CHILD_WEIGHT_KG"],
    )
