"""The site owner's pages: user accounts, dispatch areas, the audit log and the import of bags and bills.

Every change goes through :mod:`bagtrack.accounts` with the signed-in admin
as the actor, so it lands in the audit log with the rule it obeyed.
"""

from __future__ import annotations

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user

from .. import accounts, importing, queries
from ..access import role_required
from ..errors import Refusal
from ..extensions import db
from ..limits import accepts_upload
from ..models import ROLES, User
from ..shapes import user_json
from ..web import ONCE_HEADERS, before_arg, json_ok, refusal_answer, wants_json

bp = Blueprint("admin", __name__, url_prefix="/admin")

IMPORTERS = {"bags": importing.import_bags, "bills": importing.import_bills}
# An XLSX the page reads unpacks to at most this much (its rows are limited by BAGTRACK_IMPORT_PAGE_MAX_ROWS).
PAGE_UNPACKED_BYTES = 32 * 1024 * 1024


def render_index(refusal: Refusal | None = None, new_password: dict | None = None) -> str:
    entered = {name: request.form.get(name, "") for name in ("username", "role", "area", "code", "name")}
    return render_template(
        "admin/index.html",
        users=queries.all_users(db.session),
        areas=queries.areas_for(db.session, current_user),
        roles=ROLES,
        refusal=refusal,
        entered=entered if refusal else {},
        new_password=new_password,
    )


@bp.get("/")
@role_required("admin")
def index():
    return render_index()


@bp.post("/users")
@role_required("admin")
def create_user():
    password = request.form.get("password") or None
    try:
        user, password_set = accounts.create_user(
            db.session,
            current_user,
            request.form.get("username", ""),
            request.form.get("role", ""),
            area_code=request.form.get("area") or None,
            password=password,
        )
    except Refusal as refusal:
        return refusal_answer(refusal, render_index)
    message = f"Created {user.role} {user.username}."
    if password is None:
        return password_once(user, password_set, message, 201)
    if wants_json():
        return json_ok(201, user=user_json(user), password=None)
    flash(message, "ok")
    return redirect(url_for("admin.index"), code=303)


@bp.post("/users/<username>/reset-password")
@role_required("admin")
def reset_password(username: str):
    try:
        user, password = accounts.reset_password(db.session, current_user, username)
    except Refusal as refusal:
        return refusal_answer(refusal, render_index)
    return password_once(user, password, f"New password for {user.username}; their sessions have ended.", 200)


def password_once(user: User, password: str, message: str, status: int):
    """Answer with a generated password, the one time anyone sees it (it is stored only hashed)."""
    if wants_json():
        return (*json_ok(status, user=user_json(user), password=password), ONCE_HEADERS)
    shown = {"username": user.username, "password": password, "message": message}
    return render_index(new_password=shown), status, ONCE_HEADERS


def change_user(change, username: str, *args, done: str):
    """Apply one ``accounts`` change to ``username`` and answer it; ``done`` is the flash sentence."""
    try:
        user = change(db.session, current_user, username, *args)
    except Refusal as refusal:
        return refusal_answer(refusal, render_index)
    if wants_json():
        return json_ok(user=user_json(user))
    flash(done.format(user=user), "ok")
    return redirect(url_for("admin.index"), code=303)


@bp.post("/users/<username>/role")
@role_required("admin")
def set_role(username: str):
    role = request.form.get("role", "")
    return change_user(accounts.set_role, username, role, done="{user.username} is now {user.role}.")


@bp.post("/users/<username>/area")
@role_required("admin")
def set_area(username: str):
    return change_user(
        accounts.set_area, username, request.form.get("area", ""), done="{user.username} now works in {user.area.code}."
    )


@bp.post("/users/<username>/disable")
@role_required("admin")
def disable(username: str):
    return change_user(accounts.disable_user, username, done="{user.username} is disabled; their sessions have ended.")


@bp.post("/users/<username>/enable")
@role_required("admin")
def enable(username: str):
    return change_user(accounts.enable_user, username, done="{user.username} is enabled.")


@bp.post("/users/<username>/unlock")
@role_required("admin")
def unlock(username: str):
    return change_user(accounts.unlock_user, username, done="{user.username} is unlocked.")


@bp.post("/areas")
@role_required("admin")
def add_area():
    try:
        area = accounts.add_area(db.session, current_user, request.form.get("code", ""), request.form.get("name", ""))
    except Refusal as refusal:
        return refusal_answer(refusal, render_index)
    if wants_json():
        return json_ok(201, area={"code": area.code, "name": area.name})
    flash(f"Added dispatch area {area.code}.", "ok")
    return redirect(url_for("admin.index"), code=303)


@bp.get("/audit")
@role_required("admin")
def audit():
    entries, next_before = queries.audit_page(
        db.session, limit=current_app.config["BAGTRACK_PAGE_SIZE"], before=before_arg()
    )
    return render_template("admin/audit.html", entries=entries, next_before=next_before)


def page_limits() -> importing.FileLimits:
    """The files the page imports within one request; the command line takes any size."""
    return importing.FileLimits(
        rows=current_app.config["BAGTRACK_IMPORT_PAGE_MAX_ROWS"], unpacked_bytes=PAGE_UNPACKED_BYTES
    )


def render_import(refusal: Refusal | None = None, report: importing.ImportReport | None = None) -> str:
    return render_template(
        "admin/import.html",
        refusal=refusal,
        report=report,
        kind=request.form.get("kind", "bags"),
        shown=importing.SHOWN_REFUSALS,
        max_rows=current_app.config["BAGTRACK_IMPORT_PAGE_MAX_ROWS"],
    )


@bp.route("/import", methods=["GET", "POST"])
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
