"""What every blueprint shares: JSON-or-HTML answers and the error pages."""

from __future__ import annotations

import sqlalchemy.exc
from flask import Flask, Request, g, jsonify, render_template, request, session, url_for
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from . import timeline
from .codes import QR_MAX_LENGTH, normalise
from .errors import STATUS_BY_CODE, Refusal
from .extensions import db, login_manager
from .signin import LOGIN_SESSION_KEY, SignedInUser, signed_in_user

HTTP_CODES = {
    400: ("invalid_input", "The request was not understood."),
    401: ("login_required", "Please log in."),
    403: ("forbidden", "You are not allowed to do that."),
    404: ("not_found", "Not found."),
    405: ("method_not_allowed", "That method is not allowed here."),
    413: ("too_large", "The request is too large."),
    429: ("rate_limited", "Too many requests; slow down and try again shortly."),
    500: ("internal_error", "Something went wrong on our side; the error is logged. Try again in a moment."),
    503: ("unavailable", "The service is busy; try again in a few seconds."),
}
# For an answer shown once and never again (a generated password, recovery codes): no cache keeps it.
ONCE_HEADERS = {"Cache-Control": "no-store"}
# Where a request keeps the start of its bag links (see bag_url_builder).
BAG_URL_PREFIX = "bagtrack_bag_url_prefix"
# Seconds a client should wait after a 503 (the pool and connect timeouts are a few seconds).
RETRY_AFTER_S = 5


class FormRequest(Request):
    """A request whose form has no field without a name.

    A multipart part without ``name=`` is parsed as a field named ``None``,
    which breaks everything that reads field names (CSRF protection first).
    Such a part carries nothing a form asked for, so it is dropped.
    """

    def _load_form_data(self) -> None:
        super()._load_form_data()
        for attribute in ("form", "files"):
            fields = self.__dict__[attribute]
            if None in fields:
                named = [(name, value) for name, value in fields.items(multi=True) if name is not None]
                self.__dict__[attribute] = type(fields)(named)


def wants_json() -> bool:
    """JSON for ``/api/*`` and for clients that ask for it with ``Accept``."""
    if request.path.startswith("/api/"):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]


def positive_int_arg(name: str, default: int | None = None, maximum: int | None = None) -> int | None:
    """The query argument ``name`` as a positive whole number (at most ``maximum``), ``default`` when absent.

    Anything else is ``invalid_input`` (a 400).
    """
    raw = request.args.get(name, "")
    if raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18 or int(raw) < 1:
        raise Refusal("invalid_input", f"{name} must be a positive whole number.")
    value = int(raw)
    return min(value, maximum) if maximum else value


def before_arg() -> int | None:
    """The keyset cursor ``?before=`` of a list page: a positive id or None; anything else is a 400."""
    return positive_int_arg("before")


def page_to_return_to() -> str | None:
    """Where a login asked for by this request comes back to.

    The page itself for a GET; for a scan posted by the scanner page, that
    page on the same parent (the post's own address cannot be opened).
    """
    if request.method == "GET":
        return request.full_path.rstrip("?")
    parent = normalise(request.form.get("parent"))[:QR_MAX_LENGTH]
    if request.blueprint == "scan" and parent:
        return url_for("scan.page", parent=parent)
    return None


def json_ok(status: int = 200, **body):
    return jsonify(ok=True, **body), status


def json_error(code: str, message: str, status: int | None = None, headers: dict | None = None):
    response = jsonify(ok=False, error=code, message=message)
    response.status_code = status or STATUS_BY_CODE.get(code, 400)
    if headers:
        response.headers.update(headers)
    return response


def refusal_answer(refusal: Refusal, render_page):
    """Answer a refusal: JSON for JSON clients, else ``render_page(refusal)`` with its status."""
    if wants_json():
        return json_error(refusal.code, refusal.message, refusal.status)
    return render_page(refusal), refusal.status


def page_after_refusal(find, render_page):
    """A ``render_page`` for :func:`refusal_answer`: the page of what the refusal was about.

    ``find()`` looks the object up again; when it cannot be shown (unknown,
    or out of the user's area) the error page answers instead.
    """

    def render(refusal: Refusal) -> str:
        found = find()
        if found is None:
            return render_template("error.html", status=refusal.status, code=refusal.code, message=refusal.message)
        return render_page(found, refusal)

    return render


def error_page(code: str, message: str, status: int, headers: dict | None = None):
    if wants_json():
        return json_error(code, message, status, headers)
    response = render_template("error.html", status=status, code=code, message=message), status
    if headers:
        return (*response, headers)
    return response


def local_time(moment, pattern: str = "%Y-%m-%d %H:%M") -> str:
    """A stored UTC moment as the warehouse's local time, for pages (``{{ x.at | local_time }}``)."""
    return "" if moment is None else timeline.local(moment).strftime(pattern)


def bag_url_builder(app: Flask):
    """``bag_url(qr)`` for templates: ``url_for("bags.detail", qr=qr)``, with the route built once per request.

    Pages link every code they show (a parent's children, fifty scans, the
    dashboard's latest scans); building each link through the URL map was
    about a seventh of such a page's CPU. The code is quoted by the route's
    own converter, so the links are the ones ``url_for`` makes.
    """
    segment = app.url_map.converters["default"](app.url_map).to_url

    def bag_url(qr: str) -> str:
        prefix = g.get(BAG_URL_PREFIX)
        if prefix is None:
            prefix = url_for("bags.detail", qr="-")[:-1]
            setattr(g, BAG_URL_PREFIX, prefix)
        return prefix + segment(qr)

    return bag_url


# What SQLAlchemy's pool raises when every connection it opened for a checkout was closed at once.
POOL_GAVE_UP = "This connection is closed"


def init_app(app: Flask) -> None:
    app.request_class = FormRequest
    app.add_template_filter(local_time)
    app.add_template_filter(lambda number: f"{number:,}", "thousands")
    app.add_template_global(bag_url_builder(app), "bag_url")

    @login_manager.user_loader
    def load_user(user_id: str) -> SignedInUser | None:
        # The id carries the session version: a password reset or disable ends old sessions.
        # The login session is this device's: logging out here ends it alone.
        raw_id, _, version = user_id.partition(":")
        login_session = session.get(LOGIN_SESSION_KEY)
        if not raw_id.isdigit() or not version.isdigit() or len(user_id) > 40 or type(login_session) is not int:
            return None
        return signed_in_user(db.session, int(raw_id), int(version), login_session)

    @login_manager.unauthorized_handler
    def unauthorized():
        from flask import redirect

        if wants_json():
            return json_error("login_required", "Please log in.", 401)
        return redirect(url_for("auth.login", next=page_to_return_to()))

    @app.errorhandler(Refusal)
    def on_refusal(refusal: Refusal):
        return error_page(refusal.code, refusal.message, refusal.status)

    @app.errorhandler(CSRFError)
    def on_csrf_error(error: CSRFError):
        return error_page(
            "csrf_failed",
            "This page is too old to send. Reload it (or log in again) and scan once more.",
            400,
        )

    @app.errorhandler(sqlalchemy.exc.TimeoutError)
    @app.errorhandler(sqlalchemy.exc.OperationalError)
    def on_database_unavailable(error: sqlalchemy.exc.SQLAlchemyError):
        # Pool exhausted, database unreachable or a statement timed out: tell the
        # client to come back shortly. The error page is drawn for an anonymous
        # user so that rendering it does not ask the database again.
        from flask import current_app

        from .observability import describe_database_error

        current_app.logger.warning("database unavailable: %s", describe_database_error(error))
        g._login_user = login_manager.anonymous_user()
        return error_page(
            "unavailable",
            "The database did not answer in time. Try again in a few seconds; scanning the same bag again is safe.",
            503,
            {"Retry-After": str(RETRY_AFTER_S)},
        )

    @app.errorhandler(sqlalchemy.exc.InvalidRequestError)
    def on_connections_lost(error: sqlalchemy.exc.InvalidRequestError):
        # The pool gives up after replacing a connection the server closed three times in a row
        # (the database restarting, or its connections being ended): unavailable, like an outage.
        if str(error) != POOL_GAVE_UP:
            raise error
        return on_database_unavailable(error)

    @app.errorhandler(HTTPException)
    def on_http_error(error: HTTPException):
        status = error.code or 500
        if status in HTTP_CODES:
            code, message = HTTP_CODES[status]
        elif status < 500:
            code, message = "invalid_input", error.description or "Bad request."
        else:
            # A server error is never the client's fault: no 4xx code, no description of the failure.
            code, message = HTTP_CODES[500]
        if (
            error.code in (400, 403, 404)
            and error.description
            and not error.description.startswith(("The browser", "You don't", "The requested URL"))
        ):
            message = error.description
        headers = dict(error.get_headers()) if error.code == 405 else None
        if headers:
            headers.pop("Content-Type", None)
        return error_page(code, message, status, headers)

    @app.context_processor
    def inject_user_roles():
        user = current_user
        return {
            "is_biller": bool(user and user.is_authenticated and user.has_role("biller")),
            "is_admin": bool(user and user.is_authenticated and user.has_role("admin")),
        }
