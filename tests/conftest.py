"""Fixtures in the flaskr style: ``app``, ``client``, ``runner``, plus
``login_as``, factories for areas, users, bags and bills, and shared roles
(``biller``). Helpers that are not fixtures live in ``helpers.py``.

Tests run on PostgreSQL when ``DATABASE_URL`` is set (in a database of their
own, ``<name>_pytest``, created fresh for the run) and on a SQLite file
otherwise. Every test starts from empty tables. Tests marked ``postgres`` or
``redis`` are skipped, with the reason, when that backend is not configured;
with ``BAGTRACK_REQUIRE_BACKENDS=1`` a missing backend fails the run. With
``CI=true`` (set by ``.ci/run`` and by hosted CI services) every skip is a
failure, whatever caused it: a test left out with ``-m`` or ``-k`` is
deselected, not skipped, and an expected failure (``xfail``) is not a skip.
"""

from __future__ import annotations

import functools
import os
import uuid

import pytest
from helpers import PASSWORD, BagtrackClient, log_in
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from werkzeug.security import generate_password_hash

from bagtrack import create_app
from bagtrack.config import with_psycopg2
from bagtrack.extensions import db
from bagtrack.models import Bag, Bill, DispatchArea, User
from bagtrack.signin import forget_signed_in

# A cheap hash keeps the suite fast; real users get werkzeug's default.
PASSWORD_HASH = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")

DATABASE_URL = os.environ.get("DATABASE_URL")
REDIS_URL = os.environ.get("REDIS_URL")
# Settings are read from the environment before the test config applies; with
# DATABASE_URL set (production mode) they need a secret key.
os.environ.setdefault("SECRET_KEY", "test-secret-test-secret-test-secret")
REQUIRE_BACKENDS = os.environ.get("BAGTRACK_REQUIRE_BACKENDS") == "1"
NO_SKIPS = os.environ.get("CI") == "true"


def pytest_configure(config):
    config.addinivalue_line("markers", "postgres: needs PostgreSQL (DATABASE_URL)")
    config.addinivalue_line("markers", "redis: needs Redis (REDIS_URL)")
    config.addinivalue_line("markers", "slow: takes seconds; still runs in CI")
    if REQUIRE_BACKENDS and not (DATABASE_URL and REDIS_URL):
        raise pytest.UsageError("BAGTRACK_REQUIRE_BACKENDS=1 but DATABASE_URL or REDIS_URL is not set")


def pytest_collection_modifyitems(config, items):
    on_postgres = bool(DATABASE_URL)
    for item in items:
        if "postgres" in item.keywords and not on_postgres:
            item.add_marker(pytest.mark.skip(reason="needs PostgreSQL: set DATABASE_URL"))
        if "redis" in item.keywords and not REDIS_URL:
            item.add_marker(pytest.mark.skip(reason="needs Redis: set REDIS_URL"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    _fail_if_skipped((yield).get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    _fail_if_skipped((yield).get_result())


def _fail_if_skipped(report) -> None:
    """In CI a skipped test is a promise nobody checked: report it as a failure, with the reason."""
    if NO_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"with CI=true a skip fails the run: {reason.removeprefix('Skipped: ')}"


def _test_database_url(tmp_path_factory) -> str:
    if not DATABASE_URL:
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'bagtrack-test.sqlite3'}"
    url = make_url(with_psycopg2(DATABASE_URL))
    # One database per run, so parallel runs never share tables.
    test_url = url.set(database=f"{url.database}_pytest_{os.getpid()}")
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{test_url.database}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{test_url.database}"'))
    admin.dispose()
    return test_url.render_as_string(hide_password=False)


def _drop_database(database_url: str) -> None:
    url = make_url(database_url)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory):
    url = _test_database_url(tmp_path_factory)
    yield url
    if url.startswith("postgresql"):
        _drop_database(url)


@pytest.fixture(scope="session")
def base_config(database_url):
    config = {
        "TESTING": True,
        "SECRET_KEY": "test-secret-test-secret-test-secret",
        "SQLALCHEMY_DATABASE_URI": database_url,
        "CACHE_KEY_PREFIX": f"bagtrack-test-{uuid.uuid4().hex[:8]}:",
        "RATELIMIT_ENABLED": False,
    }
    return config


@pytest.fixture(scope="session")
def migrated(base_config):
    """Apply the migrations once per run, exactly as ``flask db upgrade`` does."""
    from flask_migrate import upgrade

    app = create_app(base_config)
    with app.app_context():
        upgrade()
        db.engine.dispose()
    return True


@pytest.fixture
def make_app(base_config, migrated):
    """Build extra apps with config overrides; all share the test database and this test's cache."""
    apps = []
    # Cached figures may be a TTL old: one test's must never be served in the next.
    prefix = f"bagtrack-test-{uuid.uuid4().hex[:8]}:"

    def build(**overrides):
        app = create_app({**base_config, "CACHE_KEY_PREFIX": prefix, **overrides})
        apps.append(app)
        return app

    yield build
    for app in apps:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.fixture
def app(make_app):
    app = make_app()
    with app.app_context():
        yield app
        db.session.remove()
        _empty_tables()


def _empty_tables():
    with db.engine.begin() as connection:
        for table in reversed(db.metadata.sorted_tables):
            connection.execute(table.delete())
    # SQLite hands out the ids of deleted users again: forget their snapshots.
    forget_signed_in()


@pytest.fixture
def client(app):
    app.test_client_class = BagtrackClient
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def login_as(app):
    """A new logged-in client for ``user`` (through the real login form)."""
    return functools.partial(log_in, app)


@pytest.fixture
def make_area(app):
    def make(code: str = "NORTH", name: str = "") -> DispatchArea:
        area = db.session.query(DispatchArea).filter_by(code=code).one_or_none()
        if area is None:
            area = DispatchArea(code=code, name=name or code)
            db.session.add(area)
            db.session.commit()
        return area

    return make


@pytest.fixture
def make_user(app, make_area):
    def make(username: str = "worker", role: str = "dispatcher", area: str | None = "NORTH", **fields) -> User:
        area_row = make_area(area) if area else None
        user = User(
            username=username,
            role=role,
            area_id=area_row.id if area_row else None,
            password_hash=PASSWORD_HASH,
            active=True,
            failed_logins=0,
            session_version=1,
            **fields,
        )
        db.session.add(user)
        db.session.commit()
        return user

    return make


@pytest.fixture
def make_parent(app, make_area, make_user):
    """A parent bag made through the domain, optionally filled with ``children`` new children."""
    from bagtrack import scanning

    counter = iter(range(10_000, 99_999))

    def make(qr: str | None = None, *, area: str = "NORTH", children: int = 0, user: User | None = None) -> Bag:
        area_row = make_area(area)
        actor = user or db.session.query(User).filter_by(username="factory").one_or_none()
        if actor is None:
            actor = make_user("factory", role="admin", area=None)
        qr = qr or f"SB{next(counter):05d}"
        parent = scanning.scan_parent(db.session, actor, qr, area_row.code).parent
        for _ in range(children):
            scanning.scan_child(db.session, actor, qr, f"C{uuid.uuid4().hex[:10].upper()}")
        db.session.refresh(parent)
        # End the read transaction: on SQLite it holds the write lock a live server needs.
        db.session.commit()
        return parent

    return make


@pytest.fixture
def make_bill(app, make_user):
    from bagtrack import billing

    def make(bill_no: str = "B-1", capacity: int = 10, **fields) -> Bill:
        actor = db.session.query(User).filter_by(username="factory").one_or_none()
        if actor is None:
            actor = make_user("factory", role="admin", area=None)
        return billing.create_bill(
            db.session, actor, {"bill_no": bill_no, "capacity": str(capacity), "destination": "Depot", **fields}
        )

    return make


@pytest.fixture
def biller(make_user):
    """A biller of no area, as a user row (modules that need a logged-in biller define their own)."""
    return make_user("boss", "biller", None)
