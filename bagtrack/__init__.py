"""bagtrack: tracks bags through a warehouse, from child bag to truck."""

from __future__ import annotations

from functools import partial
from inspect import CO_COROUTINE

from flask import Flask

from . import config as settings
from . import observability
from .extensions import cache, compress, csrf, db, login_manager, migrate


class App(Flask):
    """Flask, minus one cost paid on every call of every hook and view.

    Flask asks ``inspect.iscoroutinefunction`` about each before- and
    after-request function, each view and each teardown, on every request
    (about 16 times per request here). A plain function or method says so
    (or a partial of one) says so by its code's flags, read directly;
    anything else is asked as Flask does.
    """

    def ensure_sync(self, func):
        code = getattr(func.func if isinstance(func, partial) else func, "__code__", None)
        if code is not None and not code.co_flags & CO_COROUTINE:
            return func
        return super().ensure_sync(func)


def create_app(config: dict | None = None) -> Flask:
    """Build the app. It never touches the database: workers fork without a connection."""
    app = App(__name__, instance_path=str(settings.INSTANCE_DIR))
    try:
        app.config.from_mapping(settings.load())
    except settings.ConfigError as exc:
        # One line for the operator, from `flask` and gunicorn alike; no traceback.
        raise SystemExit(f"bagtrack: configuration error: {exc}") from None
    if config:
        app.config.from_mapping(config)
    if app.config["EMBEDDED"] and not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = settings.embedded_secret_key()
    settings.apply_backends(app.config)
    observability.init_app(app)

    db.init_app(app)
    migrate.init_app(app, db, directory=str(settings.MIGRATIONS_DIR), render_as_batch=True)
    login_manager.init_app(app)
    csrf.init_app(app)
    cache.init_app(app)
    compress.init_app(app)

    from . import database, limits, replica, security, web

    database.init_app(app)
    replica.init_app(app)
    web.init_app(app)
    security.init_app(app)

    from .admin.views import bp as admin_bp
    from .api.views import bp as api_bp
    from .auth.views import bp as auth_bp
    from .bags.views import bp as bags_bp
    from .bills.views import bp as bills_bp
    from .dashboard.views import bp as dashboard_bp
    from .exports.views import bp as exports_bp
    from .ops.views import bp as ops_bp
    from .reports.views import bp as reports_bp
    from .scan.views import bp as scan_bp

    blueprints = (auth_bp, dashboard_bp, scan_bp, bags_bp, bills_bp, api_bp, ops_bp, admin_bp, exports_bp, reports_bp)
    for blueprint in blueprints:
        app.register_blueprint(blueprint)
    # After the blueprints: the named limits are put on their routes.
    limits.init_app(app)

    from .cli import register

    register(app)
    return app
