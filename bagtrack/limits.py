"""Rate limits and request size limits, declared in one place by named scope.

Logged-in users are limited one by one (scanners on the floor may share an
address); anonymous requests by address. Login is limited by the posted
username and, far more loosely, by address: a shift of handhelds behind one
address logs in at once, while a guesser meets the username limit and the
account lockout. Scans and bill loading get a generous
limit of their own, everything else a default; health, readiness, metrics and
static files are never limited. Every rate is a setting
(``BAGTRACK_LIMIT_*``). Counters live in Redis when ``REDIS_URL`` is set; when
Redis fails the limiter counts in memory and errors are swallowed, so an
outage loosens the limits and never answers 500.

Request bodies are limited to ``MAX_CONTENT_LENGTH`` (1 MiB) except on views
marked with :func:`accepts_upload`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask, current_app, request, session
from flask_limiter import RateLimitExceeded
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.routing import Rule

from . import counters, observability  # noqa: F401 (counters registers the bagtrack+redis:// storage)
from .codes import USERNAME_MAX_LENGTH, normalise_username
from .extensions import limiter, rate_limit_key
from .signin import DEVICE_COOKIE, PENDING_2FA_KEY, known_usernames
from .web import error_page

log = logging.getLogger(__name__)

UNLIMITED_PATHS = ("/health", "/ready", "/metrics")
UPLOAD_MARK = "bagtrack_accepts_upload"
# The limit manager's own methods, kept when they are first wrapped.
RESOLVED_ONCE = "bagtrack_unwrapped_methods"


def client_address() -> str:
    return f"ip:{request.remote_addr or 'unknown'}"


def posted_username() -> str:
    """Whom a login attempt is for; without a name the attempt counts against its address.

    The second step (the code) counts for the user who gave the password.
    A device that has logged in as the user before draws on an allowance of
    its own, so a stranger's guessing cannot keep the user out.
    """
    if request.endpoint == "auth.login_code":
        pending = session.get(PENDING_2FA_KEY)
        return f"user:{pending.get('user')}" if isinstance(pending, dict) else client_address()
    name = normalise_username(request.form.get("username"))[:USERNAME_MAX_LENGTH]
    if not name:
        return client_address()
    if name in known_usernames(request.cookies.get(DEVICE_COOKIE)):
        return f"username:{name}:known"
    return f"username:{name}"


def login_ip_rate() -> str:
    return current_app.config["BAGTRACK_LIMIT_LOGIN_IP"]


def login_user_rate() -> str:
    return current_app.config["BAGTRACK_LIMIT_LOGIN_USER"]


def scan_rate() -> str:
    return current_app.config["BAGTRACK_LIMIT_SCAN"]


def bill_load_rate() -> str:
    return current_app.config["BAGTRACK_LIMIT_BILL_LOAD"]


def default_rate() -> str:
    return current_app.config["BAGTRACK_LIMIT_DEFAULT"]


def is_login(rule: Rule) -> bool:
    return rule.endpoint in ("auth.login", "auth.login_code")


def is_scan(rule: Rule) -> bool:
    return rule.rule.startswith("/scan/")


def is_bill_load(rule: Rule) -> bool:
    return rule.rule.startswith("/bills/") and rule.rule.endswith("/parents")


@dataclass(frozen=True)
class Scope:
    """A named limit: its rate, what it counts by, and which POST routes it covers."""

    name: str
    rate: Callable[[], str]
    key: Callable[[], str]
    covers: Callable[[Rule], bool]
    message: str


SCOPES = (
    Scope(
        "login_ip",
        login_ip_rate,
        client_address,
        is_login,
        "Too many login attempts from this address.",
    ),
    Scope(
        "login_user",
        login_user_rate,
        posted_username,
        is_login,
        "Too many login attempts for this username.",
    ),
    Scope("scan", scan_rate, rate_limit_key, is_scan, "Too many scans in a short time."),
    Scope("bill_load", bill_load_rate, rate_limit_key, is_bill_load, "Too many parents loaded in a short time."),
)
MESSAGES = {scope.name: scope.message for scope in SCOPES}


def accepts_upload(view):
    """Mark a view as an upload route: its body may be up to ``BAGTRACK_MAX_UPLOAD_BYTES``."""
    setattr(view, UPLOAD_MARK, True)
    return view


def init_app(app: Flask) -> None:
    """Bind the limiter and put each named scope on the routes it covers (after the blueprints)."""
    app.config.setdefault("RATELIMIT_DEFAULT", default_rate)
    limiter.init_app(app)
    _resolve_once(limiter.limit_manager)
    if app.config["RATELIMIT_ENABLED"]:
        _limit_routes(app)
    # Before every other hook: CSRF protection reads the form, and with it the body.
    app.before_request_funcs.setdefault(None, []).insert(0, _allow_uploads)
    app.register_error_handler(RateLimitExceeded, _too_many_requests)
    app.register_error_handler(RequestEntityTooLarge, _too_large)


def _limit_routes(app: Flask) -> None:
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        if view is None or rule.endpoint == "static":
            continue
        if rule.rule in UNLIMITED_PATHS:
            limiter.exempt(view)
            continue
        if "POST" not in (rule.methods or ()):
            continue
        for scope in SCOPES:
            if scope.covers(rule):
                # Shared scopes: every scan route draws on one allowance per user.
                view = limiter.shared_limit(scope.rate, scope=scope.name, key_func=scope.key, methods=["POST"])(view)
        app.view_functions[rule.endpoint] = view


def _resolve_once(manager) -> None:
    """Work out each route's limits and exemptions once, not on every request.

    Flask-Limiter resolves them again for each request (and twice for a route
    with a named scope), evaluating every rate's setting each time; they
    depend only on the app (whose settings are fixed once it is made) and
    the route. The manager belongs to the process's one limiter, which each
    app made registers its routes with: every ``init_app`` starts the memo
    afresh, always wrapping the manager's own methods.
    """
    resolve, exemption_scope = getattr(manager, RESOLVED_ONCE, (manager.resolve_limits, manager.exemption_scope))
    setattr(manager, RESOLVED_ONCE, (resolve, exemption_scope))
    resolved: dict[tuple, tuple] = {}
    exemptions: dict[tuple, object] = {}

    def resolve_limits(app, endpoint=None, blueprint=None, callable_name=None, in_middleware=False, marked=False):
        hints = len(manager._endpoint_hints.get(endpoint or "", ()))
        key = (_real(app), endpoint, blueprint, callable_name, in_middleware, marked, hints)
        found = resolved.get(key)
        if found is None:
            found = resolved[key] = resolve(app, endpoint, blueprint, callable_name, in_middleware, marked)
        return found

    def exemption_scope_of(app, endpoint, blueprint):
        key = (_real(app), endpoint, blueprint)
        found = exemptions.get(key)
        if found is None:
            found = exemptions[key] = exemption_scope(app, endpoint, blueprint)
        return found

    manager.resolve_limits = resolve_limits
    manager.exemption_scope = exemption_scope_of


def _real(app: Flask) -> Flask:
    """The app itself: Flask-Limiter passes ``current_app``, one proxy object for every app."""
    return app._get_current_object() if hasattr(app, "_get_current_object") else app


def _allow_uploads() -> None:
    view = current_app.view_functions.get(request.endpoint or "")
    if getattr(view, UPLOAD_MARK, False):
        request.max_content_length = current_app.config["BAGTRACK_MAX_UPLOAD_BYTES"]


def _retry_after(error: RateLimitExceeded) -> int:
    """Seconds until the breached window resets (its full length when the store cannot say)."""
    try:
        reset_at = limiter.current_limit.reset_at
        return max(1, int(reset_at - time.time()))
    except Exception:
        return max(1, int(error.limit.limit.get_expiry()))


def _too_many_requests(error: RateLimitExceeded):
    scope = error.limit.scope if isinstance(error.limit.scope, str) and error.limit.shared else "default"
    observability.count_rate_limited(scope)
    seconds = _retry_after(error)
    message = MESSAGES.get(scope, "Too many requests in a short time.")
    return error_page("rate_limited", f"{message} Try again in {seconds} seconds.", 429, {"Retry-After": str(seconds)})


def _too_large(error: RequestEntityTooLarge):
    limit = request.max_content_length or current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None and request.content_length <= limit:
        # The body fits: a multipart form broke the limit on one field's size or on the number of fields.
        message = (
            f"The form is too large: at most {_size(request.max_form_memory_size)} per field"
            f" and {request.max_form_parts} fields are accepted."
        )
        return error_page("too_large", message, 413)
    return error_page("too_large", f"The request is too large: at most {_size(limit)} is accepted here.", 413)


def _size(count: int) -> str:
    if count >= 1024 * 1024:
        return f"{count / (1024 * 1024):g} MiB"
    return f"{count / 1024:g} KiB"
