"""Logging in (with a second step for two-factor users) and out, and a person's own account."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user, login_required, login_user, logout_user

from .. import accounts, signin, twofactor
from ..codes import normalise_username
from ..errors import Refusal
from ..extensions import db
from ..models import User
from ..signin import LoginRefused
from ..web import ONCE_HEADERS, json_error, json_ok, refusal_answer, wants_json
from .forms import CodeForm, LoginForm, PasswordForm

bp = Blueprint("auth", __name__)

PENDING = signin.PENDING_2FA_KEY
PENDING_FOR_S = 300
# The secret being enrolled, encrypted, until the first code proves the app holds it.
ENROLLING = "_bagtrack_2fa_enrolling"
DEVICE_COOKIE = signin.DEVICE_COOKIE
DEVICE_COOKIE_DAYS = 90
# Pages a user whose role requires two-factor login may see before enrolling.
BEFORE_ENROLMENT = {"auth.two_factor", "auth.logout", "auth.login", "auth.login_code", "static"}


def safe_next(target: str | None) -> str:
    """Only a path on this site; anything with a scheme, host or ``//`` goes home."""
    if not target:
        return url_for("dashboard.index")
    target = target.strip()
    parts = urlsplit(target)
    if (
        parts.scheme
        or parts.netloc
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or any(ord(ch) < 32 for ch in target)
    ):
        return url_for("dashboard.index")
    return target


def device_knows(username: str | None) -> bool:
    return normalise_username(username) in signin.known_usernames(request.cookies.get(DEVICE_COOKIE))


def start_device_session(user: User) -> None:
    """Log ``user`` in on this device with a session of its own."""
    # A fresh session at login: nothing from before survives (no fixation).
    session.clear()
    login_session = signin.start_session(db.session, user)
    login_user(user)
    session[signin.LOGIN_SESSION_KEY] = login_session
    session.permanent = True


def finish_login(user: User, next_page: str | None):
    """Start this device's session for ``user`` and remember the device for the lockout."""
    start_device_session(user)
    if signin.needs_2fa_enrolment(user):
        flash("Your role needs two-factor login: set it up to go on.", "error")
        next_page = url_for("auth.two_factor")
    response = redirect(safe_next(next_page), code=303)
    response.set_cookie(
        DEVICE_COOKIE,
        signin.remember_username(request.cookies.get(DEVICE_COOKIE), user.username),
        max_age=DEVICE_COOKIE_DAYS * 86400,
        secure=bool(current_app.config["SESSION_COOKIE_SECURE"] or request.is_secure),
        httponly=True,
        samesite="Lax",
    )
    return response


@bp.route("/login", methods=["GET", "POST"])
def login():
    form = LoginForm()
    if request.method == "GET":
        form.next.data = request.args.get("next", "")
        return render_template("auth/login.html", form=form)
    if not form.validate_on_submit():
        return render_template("auth/login.html", form=form, error="Enter your username and password."), 400
    try:
        user = signin.authenticate(
            db.session, form.username.data, form.password.data, known_device=device_knows(form.username.data)
        )
    except LoginRefused as refusal:
        return render_template("auth/login.html", form=form, error=str(refusal)), 401
    if user.has_2fa:
        session.clear()
        session[PENDING] = {
            "user": user.id,
            "version": user.session_version,
            "at": int(time.time()),
            "next": form.next.data or "",
        }
        return redirect(url_for("auth.login_code"), code=303)
    return finish_login(user, form.next.data)


def pending_login() -> dict | None:
    pending = session.get(PENDING)
    if not isinstance(pending, dict) or int(time.time()) - pending.get("at", 0) > PENDING_FOR_S:
        return None
    return pending


@bp.route("/login/code", methods=["GET", "POST"])
def login_code():
    """The second step of a two-factor login: the code from the app, or a recovery code."""
    pending = pending_login()
    if pending is None:
        session.pop(PENDING, None)
        flash("Log in with your username and password first.", "error")
        return redirect(url_for("auth.login"), code=303)
    form = CodeForm()
    if request.method == "GET":
        return render_template("auth/code.html", form=form)
    if not form.validate_on_submit():
        return render_template("auth/code.html", form=form, error="Enter the code from your app."), 400
    try:
        user = signin.check_second_factor(db.session, pending["user"], form.code.data)
    except LoginRefused as refusal:
        return render_template("auth/code.html", form=form, error=str(refusal)), 401
    if user.session_version != pending["version"]:
        session.pop(PENDING, None)
        flash("Your account changed meanwhile: log in again.", "error")
        return redirect(url_for("auth.login"), code=303)
    return finish_login(user, pending.get("next"))


@bp.post("/logout")
@login_required
def logout():
    signin.end_session(db.session, current_user, session.get(signin.LOGIN_SESSION_KEY, 0))
    logout_user()
    session.clear()
    flash("You have logged out on this device.", "ok")
    return redirect(url_for("auth.login"), code=303)


@bp.post("/account/logout-everywhere")
@login_required
def logout_everywhere():
    signin.end_all_sessions(db.session, current_user)
    logout_user()
    session.clear()
    if wants_json():
        return json_ok()
    flash("You have logged out on every device.", "ok")
    return redirect(url_for("auth.login"), code=303)


@bp.route("/account/password", methods=["GET", "POST"])
@login_required
def password():
    form = PasswordForm()
    if request.method == "GET":
        return render_template("auth/password.html", form=form)
    if not form.validate_on_submit():
        return refusal_answer(
            Refusal("invalid_input", "Fill in your current password and the new one twice."),
            lambda refusal: render_template("auth/password.html", form=form, error=refusal.message),
        )
    try:
        user = accounts.change_password(
            db.session, current_user.id, form.current.data, form.new.data, form.repeated.data
        )
    except Refusal as refusal:
        return refusal_answer(
            refusal, lambda refusal: render_template("auth/password.html", form=form, error=refusal.message)
        )
    # Every session ended with the change; this device goes on with a new one.
    start_device_session(user)
    if wants_json():
        return json_ok()
    flash("Your password is changed; you were logged out on every other device.", "ok")
    return redirect(url_for("auth.password"), code=303)


@bp.route("/account/2fa", methods=["GET", "POST"])
@login_required
def two_factor():
    """Two-factor login: its state when on; else a QR code to scan and the first code to confirm it."""
    if current_user.has_2fa:
        session.pop(ENROLLING, None)
        if request.method == "POST":
            return refusal_answer(Refusal("invalid_input", "Two-factor login is already on."), _render_two_factor)
        return _render_two_factor()
    secret = twofactor.decrypt(session.get(ENROLLING))
    if secret is None:
        secret = twofactor.new_secret()
        session[ENROLLING] = twofactor.encrypt(secret)
    if request.method == "GET":
        return _render_two_factor(secret=secret)
    form = CodeForm()
    if not form.validate_on_submit():
        return refusal_answer(
            Refusal("invalid_input", "Enter the 6 digits your app shows."),
            lambda refusal: _render_two_factor(refusal, secret=secret),
        )
    try:
        codes = signin.enrol_2fa(db.session, current_user.id, secret, form.code.data)
    except Refusal as refusal:
        return refusal_answer(refusal, lambda refusal: _render_two_factor(refusal, secret=secret))
    session.pop(ENROLLING, None)
    if wants_json():
        return (*json_ok(recovery_codes=codes), ONCE_HEADERS)
    return render_template("auth/recovery_codes.html", codes=codes), 200, ONCE_HEADERS


def _render_two_factor(refusal: Refusal | None = None, secret: str | None = None) -> str:
    if secret is None:
        return render_template(
            "auth/two_factor.html",
            enrolled=True,
            codes_left=signin.recovery_codes_left(db.session, current_user.id),
            error=refusal.message if refusal else None,
        )
    return render_template(
        "auth/two_factor.html",
        enrolled=False,
        form=CodeForm(formdata=None),
        secret=secret,
        qr=twofactor.qr_svg(twofactor.provisioning_uri(secret, current_user.username)),
        error=refusal.message if refusal else None,
    )


@bp.before_app_request
def enrol_before_anything_else():
    """Users of a role in ``BAGTRACK_2FA_REQUIRED_ROLES`` set up two-factor login before using the site."""
    if not current_app.config["BAGTRACK_2FA_REQUIRED_ROLES"] or "_user_id" not in session:
        return None
    if request.endpoint in BEFORE_ENROLMENT or not current_user.is_authenticated:
        return None
    if not signin.needs_2fa_enrolment(current_user):
        return None
    if wants_json():
        return json_error("forbidden", "Set up two-factor login at /account/2fa first.", 403)
    return redirect(url_for("auth.two_factor"), code=303)
