"""Sessions, cookies, response headers, static file caching and the reverse proxy.

A login lasts at most ``PERMANENT_SESSION_LIFETIME`` (a shift, 12 h) and ends
after ``BAGTRACK_SESSION_IDLE_MINUTES`` (30) without a request; either way the
user is logged out and told so. The session records its last use at most once
a minute, so a scanner does not get a new cookie with every scan.
"""

from __future__ import annotations

import hashlib
import os
import time

from flask import Flask, current_app, flash, redirect, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from flask_login import logout_user, user_logged_in
from itsdangerous import BadSignature
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.security import safe_join

from .web import json_error, page_to_return_to, wants_json

LOGIN_AT = "_bagtrack_login_at"
SEEN_AT = "_bagtrack_seen_at"
SEEN_EVERY_S = 60
EXPIRED_MESSAGE = "Your session expired — log in again."

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "frame-ancestors 'none'",
        "form-action 'self'",
        "base-uri 'self'",
        "object-src 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
HSTS = "max-age=31536000; includeSubDomains"
# A fingerprinted URL names one version of the file forever.
IMMUTABLE = "public, max-age=31536000, immutable"


# Session cookies this worker has verified, remembered so that the same cookie is not checked again.
VERIFIED_COOKIES_MAX = 10_000
VERIFIED_COOKIE_BYTES_MAX = 4096
# Values that cannot be changed in place: a remembered session made only of these is copied safely.
PLAIN_VALUES = (str, int, float, bool, type(None))


class SessionCookies(SecureCookieSessionInterface):
    """The session cookie is ``Secure`` when configured, and on every HTTPS request.

    A handheld sends the same cookie with every scan (the session notes its
    use once a minute), so a cookie whose signature this worker has checked
    once is remembered with its contents and timestamp: the next request
    with exactly that cookie skips the HMAC and the decoding, while its age
    is still checked against the session's lifetime. The signer, built per
    request by Flask, is built once per secret.
    """

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"] or request.is_secure)

    def _signing(self, app: Flask) -> dict | None:
        if not app.secret_key:
            return None
        secrets = (app.secret_key, tuple(app.config["SECRET_KEY_FALLBACKS"] or ()))
        signing = app.extensions.get("bagtrack.session_signing")
        if signing is None or signing["secrets"] != secrets:
            signing = {"secrets": secrets, "serializer": super().get_signing_serializer(app), "verified": {}}
            app.extensions["bagtrack.session_signing"] = signing
        return signing

    def get_signing_serializer(self, app: Flask):
        signing = self._signing(app)
        return None if signing is None else signing["serializer"]

    def open_session(self, app: Flask, request):
        signing = self._signing(app)
        if signing is None:
            return None
        value = request.cookies.get(self.get_cookie_name(app))
        if not value:
            return self.session_class()
        max_age = int(app.permanent_session_lifetime.total_seconds())
        verified = signing["verified"]
        known = verified.get(value)
        if known is not None and 0 <= int(time.time()) - known[0] <= max_age:
            return self.session_class(known[1])
        try:
            data, signed_at = signing["serializer"].loads(value, max_age=max_age, return_timestamp=True)
        except BadSignature:
            return self.session_class()
        if (
            len(value) <= VERIFIED_COOKIE_BYTES_MAX
            and isinstance(data, dict)
            and all(isinstance(item, PLAIN_VALUES) for item in data.values())
        ):
            if len(verified) >= VERIFIED_COOKIES_MAX:
                verified.clear()
            verified[value] = (int(signed_at.timestamp()), data)
        return self.session_class(data)


def init_app(app: Flask) -> None:
    if app.config["BAGTRACK_PROXY_FIX"]:
        app.wsgi_app = ProxyFix(app.wsgi_app, **app.config["BAGTRACK_PROXY_FIX"])
    app.session_interface = SessionCookies()
    user_logged_in.connect(stamp_login, app)
    app.before_request(enforce_session_lifetime)
    app.after_request(add_headers)
    app.url_defaults(fingerprint_static_url)


def stamp_login(sender: Flask, user, **_) -> None:
    """A login starts both clocks of the session."""
    now = int(time.time())
    session[LOGIN_AT] = now
    session[SEEN_AT] = now


def enforce_session_lifetime():
    """Log out a session past its lifetime or idle too long; note its use once a minute."""
    # The session and config are read through their proxies once.
    current = session._get_current_object()
    if "_user_id" not in current or request.endpoint in ("static", "auth.login"):
        return None
    now = int(time.time())
    login_at, seen_at = current.get(LOGIN_AT), current.get(SEEN_AT)
    if login_at is None or seen_at is None:
        # A session from before these clocks existed: they start now.
        stamp_login(current_app, None)
        return None
    config = current_app.config
    lifetime = config["PERMANENT_SESSION_LIFETIME"].total_seconds()
    idle = config["BAGTRACK_SESSION_IDLE_MINUTES"] * 60
    if now - login_at >= lifetime or now - seen_at >= idle:
        return session_expired()
    if now - seen_at >= SEEN_EVERY_S:
        current[SEEN_AT] = now
    return None


def session_expired():
    logout_user()
    session.clear()
    if wants_json():
        return json_error("session_expired", EXPIRED_MESSAGE, 401)
    flash(EXPIRED_MESSAGE, "error")
    return redirect(url_for("auth.login", next=page_to_return_to()), code=303)


def add_headers(response):
    headers = response.headers
    # One pass over the response's headers, not one per header added.
    present = {name.lower() for name, _ in headers}
    for name, value in SECURITY_HEADERS.items():
        if name.lower() not in present:
            headers.add(name, value)
    if request.is_secure and "strict-transport-security" not in present:
        headers.add("Strict-Transport-Security", HSTS)
    if request.endpoint == "static":
        filename = (request.view_args or {}).get("filename", "")
        version = request.args.get("v")
        if response.status_code == 200 and version and version == fingerprint(filename):
            headers["Cache-Control"] = IMMUTABLE
    elif "cache-control" not in present:
        # Pages and API answers carry user data and change with every scan.
        headers.add("Cache-Control", "no-store")
    return response


def fingerprint(filename: str) -> str | None:
    """A short hash of a static file's content, computed once per file per process."""
    known = current_app.extensions.setdefault("bagtrack.fingerprints", {})
    if filename in known:
        return known[filename]
    path = safe_join(current_app.static_folder, filename)
    if path is None or not os.path.isfile(path):
        return None
    with open(path, "rb") as static_file:
        digest = hashlib.sha256(static_file.read()).hexdigest()[:12]
    known[filename] = digest
    return digest


def fingerprint_static_url(endpoint: str, values: dict) -> None:
    """``url_for('static', filename=...)`` gains ``?v=<content hash>``, so the file may be cached forever."""
    if endpoint == "static" and "filename" in values and "v" not in values:
        version = fingerprint(values["filename"])
        if version is not None:
            values["v"] = version
