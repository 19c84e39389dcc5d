"""``flask users ...`` and ``flask areas ...``."""

from __future__ import annotations

import sys

import click
from flask.cli import AppGroup
from sqlalchemy import select

from .. import accounts
from ..codes import normalise_username
from ..errors import Refusal
from ..extensions import db
from ..models import DispatchArea, User

users = AppGroup("users", help="Manage user accounts.")
areas = AppGroup("areas", help="Manage dispatch areas.")
GROUPS = (users, areas)


def fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


@areas.command("add")
@click.argument("code")
@click.option("--name", default="", help="A readable name, e.g. 'North dock'.")
def areas_add(code: str, name: str) -> None:
    """Add a dispatch area CODE."""
    try:
        area = accounts.add_area(db.session, None, code, name)
    except Refusal as refusal:
        fail(refusal.message)
    click.echo(f"Added area {area.code} ({area.name}).")


@areas.command("list")
def areas_list() -> None:
    """List dispatch areas."""
    for area in db.session.scalars(select(DispatchArea).order_by(DispatchArea.code)):
        click.echo(f"{area.code}\t{area.name}")


@users.command("create")
@click.argument("username")
@click.option("--role", type=click.Choice(["admin", "biller", "dispatcher"]), required=True)
@click.option("--area", "area_code", help="Dispatch area code (required for dispatchers).")
@click.option("--password", help="Without it: prompted on a terminal, else generated and printed once.")
def users_create(username: str, role: str, area_code: str | None, password: str | None) -> None:
    """Create a user USERNAME."""
    if password is None and sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        user, password_set = accounts.create_user(
            db.session, None, username, role, area_code=area_code, password=password
        )
    except Refusal as refusal:
        hint = " Give it with --area CODE." if refusal.message == accounts.DISPATCHER_NEEDS_AREA else ""
        fail(refusal.message + hint)
    click.echo(f"Created {user.role} {user.username}.")
    if password is None:
        click.echo(f"Password (shown once): {password_set}")


@users.command("list")
def users_list() -> None:
    """List users with role, area and state."""
    rows = db.session.execute(
        select(User, DispatchArea.code).outerjoin(DispatchArea, DispatchArea.id == User.area_id).order_by(User.username)
    )
    click.echo("username\trole\tarea\tstate")
    for user, area_code in rows:
        state = "disabled" if not user.active else ("locked" if user.is_locked() else "active")
        click.echo(f"{user.username}\t{user.role}\t{area_code or '-'}\t{state}")


def _change(action, username: str, *args, hints: dict[str, str] | None = None) -> User:
    """Apply one ``accounts`` change; a refusal is printed with the command that helps, from ``hints``."""
    try:
        return action(db.session, None, username, *args)
    except Refusal as refusal:
        fail(refusal.message + (hints or {}).get(refusal.message, ""))


@users.command("set-role")
@click.argument("username")
@click.argument("role", type=click.Choice(["admin", "biller", "dispatcher"]))
def users_set_role(username: str, role: str) -> None:
    """Change USERNAME's role."""
    name = normalise_username(username)
    hints = {accounts.AREA_BEFORE_DISPATCHER.format(username=name): f" Set it with: users set-area {name} AREA_CODE"}
    user = _change(accounts.set_role, username, role, hints=hints)
    click.echo(f"{user.username} is now {user.role}.")


@users.command("set-area")
@click.argument("username")
@click.argument("area_code")
def users_set_area(username: str, area_code: str) -> None:
    """Move USERNAME to dispatch area AREA_CODE."""
    user = _change(accounts.set_area, username, area_code)
    click.echo(f"{user.username} now works in area {area_code.strip().upper()}.")


@users.command("disable")
@click.argument("username")
def users_disable(username: str) -> None:
    """Disable USERNAME and end their sessions."""
    user = _change(accounts.disable_user, username)
    click.echo(f"{user.username} is disabled.")


@users.command("enable")
@click.argument("username")
def users_enable(username: str) -> None:
    """Enable USERNAME again (they log in anew)."""
    user = _change(accounts.enable_user, username)
    click.echo(f"{user.username} is enabled.")


@users.command("reset-2fa")
@click.argument("username")
def users_reset_2fa(username: str) -> None:
    """Turn off USERNAME's two-factor login (lost phone); they may enrol again."""
    user = _change(accounts.reset_2fa, username)
    click.echo(f"Two-factor login of {user.username} is off.")


@users.command("unlock")
@click.argument("username")
def users_unlock(username: str) -> None:
    """Lift a lockout after failed logins."""
    user = _change(accounts.unlock_user, username)
    click.echo(f"{user.username} is unlocked.")


@users.command("reset-password")
@click.argument("username")
@click.option("--password", help="Without it a password is generated and printed once.")
def users_reset_password(username: str, password: str | None) -> None:
    """Set a new password for USERNAME and end their sessions."""
    try:
        user, new_password = accounts.reset_password(db.session, None, username, password)
    except Refusal as refusal:
        fail(refusal.message)
    click.echo(f"Password of {user.username} reset.")
    if password is None:
        click.echo(f"New password (shown once): {new_password}")
