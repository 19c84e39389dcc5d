"""``flask bootstrap`` and ``flask check``: bringing a site up and checking it is healthy."""

from __future__ import annotations

import sys
import time

import click
import redis
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Flask, current_app
from flask.cli import with_appcontext
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from .. import accounts, invariants
from .. import config as settings
from ..errors import Refusal
from ..extensions import db
from ..models import DispatchArea, User
from .users import fail

DEFAULT_AREA = "MAIN"
DEFAULT_ADMIN = "admin"
UPGRADE_HINT = "run: flask --app bagtrack db upgrade"


@click.command("bootstrap")
@with_appcontext
def bootstrap() -> None:
    """Create the first admin and the dispatch area MAIN on an empty database.

    The admin's password is random and shown once; with users already
    present nothing is created.
    """
    try:
        has_areas = db.session.scalar(select(func.count()).select_from(DispatchArea)) > 0
        has_users = db.session.scalar(select(func.count()).select_from(User)) > 0
        db.session.rollback()
        if not has_areas:
            accounts.add_area(db.session, None, DEFAULT_AREA, "Main")
            click.echo(f"Created dispatch area {DEFAULT_AREA}.")
        if has_users:
            click.echo("Users exist already: no admin created.")
            return
        _, password = accounts.create_user(db.session, None, DEFAULT_ADMIN, "admin")
    except Refusal as refusal:
        fail(refusal.message)
    except SQLAlchemyError as exc:
        fail(f"the database is not ready ({first_line(exc)}); {UPGRADE_HINT}")
    click.echo(f"Created admin user '{DEFAULT_ADMIN}' with password: {password} — shown once, change it.")


@click.command("check")
@click.option("--invariants", "with_invariants", is_flag=True, help="Also verify counters, tally and scan log.")
@with_appcontext
def check(with_invariants: bool) -> None:
    """Check configuration, database, Redis and migrations; exit 1 if any fails."""
    app = current_app._get_current_object()
    results = [("configuration", *_check_configuration(app)), ("database", *_check_database())]
    database_ok = results[-1][1]
    results.append(("redis", *_check_redis(app.config.get("REDIS_URL"))))
    results.append(("migrations", *(_check_migrations() if database_ok else (False, "database unreachable"))))
    schema_ok = results[-1][1]
    failed = False
    for name, ok, detail in results:
        click.echo(f"{'OK' if ok else 'FAIL':<4}  {name}: {detail}")
        failed = failed or not ok
    if with_invariants:
        failed = _check_invariants(schema_ok) or failed
    if failed:
        sys.exit(1)


def first_line(exc: Exception) -> str:
    message = str(getattr(exc, "orig", None) or exc).strip()
    return message.splitlines()[0] if message else type(exc).__name__


def _timed(work) -> float:
    started = time.perf_counter()
    work()
    return (time.perf_counter() - started) * 1000


def _check_configuration(app: Flask) -> tuple[bool, str]:
    try:
        settings.load()
    except settings.ConfigError as exc:
        return False, str(exc)
    if not app.config["EMBEDDED"] and not app.config.get("SECRET_KEY"):
        return False, "SECRET_KEY must be set when DATABASE_URL is set"
    mode = "embedded (SQLite)" if app.config["EMBEDDED"] else "production"
    return True, f"{mode}, parent codes {app.config['BAGTRACK_PARENT_QR'].pattern}"


def _check_database() -> tuple[bool, str]:
    try:
        elapsed = _timed(lambda: db.session.execute(text("SELECT 1")))
    except SQLAlchemyError as exc:
        return False, first_line(exc)
    finally:
        db.session.rollback()
    return True, f"{db.engine.dialect.name} answered in {elapsed:.1f} ms"


def _check_redis(url: str | None) -> tuple[bool, str]:
    if not url:
        return True, "not configured (in-process cache and rate limits)"
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        elapsed = _timed(client.ping)
    except redis.RedisError as exc:
        return False, first_line(exc)
    finally:
        client.close()
    return True, f"answered in {elapsed:.1f} ms"


def _check_migrations() -> tuple[bool, str]:
    heads = set(ScriptDirectory(str(settings.MIGRATIONS_DIR)).get_heads())
    try:
        current = set(MigrationContext.configure(db.session.connection()).get_current_heads())
    except SQLAlchemyError as exc:
        return False, first_line(exc)
    finally:
        db.session.rollback()
    if current == heads:
        return True, f"at head {', '.join(sorted(heads))}"
    if not current:
        return False, f"database not migrated; {UPGRADE_HINT}"
    return False, f"database at {', '.join(sorted(current))}, code at {', '.join(sorted(heads))}; {UPGRADE_HINT}"


def _check_invariants(schema_ok: bool) -> bool:
    """Print the invariant check's result; True when it failed."""
    if not schema_ok:
        click.echo("FAIL  invariants: not checked, the database is unreachable or not migrated")
        return True
    started = time.perf_counter()
    violations = invariants.find_violations(db.session)
    db.session.rollback()
    elapsed = time.perf_counter() - started
    if not violations:
        click.echo(f"OK    invariants: all hold ({elapsed:.1f} s)")
        return False
    click.echo(f"FAIL  invariants: {len(violations)} violation(s)")
    for violation in violations:
        click.echo(f"      {violation}")
    return True
