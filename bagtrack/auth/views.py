"""Logging in and out."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user

from ..accounts import LoginRefused, authenticate, end_sessions
from ..extensions import db
from .forms import LoginForm

bp = Blueprint("auth", __name__)


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


@bp.route("/login", methods=["GET", "POST"])
def login():
    form = LoginForm()
    if request.method == "GET":
        form.next.data = request.args.get("next", "")
        return render_template("auth/login.html", form=form)
    if not form.validate_on_submit():
        return render_template("auth/login.html", form=form, error="Enter your username and password."), 400
    try:
        user = authenticate(db.session, form.username.data, form.password.data)
    except LoginRefused as refusal:
        return render_template("auth/login.html", form=form, error=str(refusal)), 401
    # A fresh session at login: nothing from before survives (no fixation).
    session.clear()
    login_user(user)
    session.permanent = True
    return redirect(safe_next(form.next.data), code=303)


@bp.post("/logout")
@login_required
def logout():
    end_sessions(db.session, current_user._get_current_object())
    logout_user()
    session.clear()
    flash("You have logged out.", "ok")
    return redirect(url_for("auth.login"), code=303)
