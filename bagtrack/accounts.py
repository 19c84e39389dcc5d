"""Users, dispatch areas and logging in: the rules the CLI and the admin pages share."""

from __future__ import annotations

import re
import secrets
from datetime import timedelta

from flask import current_app
from sqlalchemy import select

from .audit import record
from .errors import Refusal
from .ledger import in_transaction
from .models import ROLES, DispatchArea, User, utcnow

USERNAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$", re.ASCII)
AREA_CODE_PATTERN = re.compile(r"^[A-Z0-9][A-Z0-9_-]{0,19}$", re.ASCII)
MIN_PASSWORD_LENGTH = 8


class LoginRefused(Exception):
    """Wrong credentials, a disabled account, or a locked one (the message says until when)."""


def generate_password() -> str:
    return secrets.token_urlsafe(12)


def normalise_username(raw: str | None) -> str:
    return (raw or "").strip().lower()


def find_user(session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == normalise_username(username)))
    if user is None:
        raise Refusal("not_found", f"There is no user {normalise_username(username)!r}.")
    return user


def find_area(session, code: str | None) -> DispatchArea:
    code = (code or "").strip().upper()
    area = session.scalar(select(DispatchArea).where(DispatchArea.code == code))
    if area is None:
        raise Refusal("invalid_input", f"There is no dispatch area {code[:20]!r}.")
    return area


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise Refusal("invalid_input", f"A password has at least {MIN_PASSWORD_LENGTH} characters.")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise Refusal("invalid_input", f"Role must be one of {', '.join(ROLES)}, not {role!r}.")


def add_area(session, actor: User | None, code: str, name: str = "") -> DispatchArea:
    """Add a dispatch area; its code is upper-cased, 1–20 of A-Z 0-9 _ -, and unique."""

    def work() -> DispatchArea:
        normalised = (code or "").strip().upper()
        if not AREA_CODE_PATTERN.fullmatch(normalised):
            raise Refusal("invalid_input", "An area code is 1 to 20 characters of A-Z, 0-9, '_' and '-'.")
        if session.scalar(select(DispatchArea.id).where(DispatchArea.code == normalised)) is not None:
            raise Refusal("invalid_input", f"Dispatch area {normalised} already exists.")
        area = DispatchArea(code=normalised, name=(name or normalised).strip()[:100])
        session.add(area)
        session.flush()
        record(session, actor, "area.add", normalised, after={"name": area.name})
        return area

    return in_transaction(session, work)


def create_user(session, actor: User | None, username: str, role: str, *, area_code: str | None = None,
                password: str | None = None) -> User:
    """Create a user; dispatchers need an area. Returns the user (password hashed)."""

    def work() -> User:
        name = normalise_username(username)
        if not USERNAME_PATTERN.fullmatch(name):
            raise Refusal("invalid_input", "A username is 1 to 64 of a-z, 0-9, '.', '_' and '-'.")
        _check_role(role)
        area = find_area(session, area_code) if area_code else None
        if role == "dispatcher" and area is None:
            raise Refusal("invalid_input", "A dispatcher needs a dispatch area (--area CODE).")
        if password is not None:
            _check_password(password)
        if session.scalar(select(User.id).where(User.username == name)) is not None:
            raise Refusal("invalid_input", f"User {name} already exists.")
        user = User(username=name, role=role, area_id=area.id if area else None, active=True,
                    failed_logins=0, session_version=1)
        user.set_password(password or generate_password())
        session.add(user)
        session.flush()
        record(session, actor, "user.create", name, after={"role": role, "area": area.code if area else None})
        return user

    return in_transaction(session, work)


def _change_user(session, actor: User | None, username: str, action: str, change) -> User:
    def work() -> User:
        user = find_user(session, username)
        before = {"role": user.role, "area_id": user.area_id, "active": user.active,
                  "locked_until": user.locked_until}
        change(user)
        session.flush()
        after = {"role": user.role, "area_id": user.area_id, "active": user.active,
                 "locked_until": user.locked_until}
        record(session, actor, action, user.username, before=before, after=after)
        return user

    return in_transaction(session, work)


def set_role(session, actor: User | None, username: str, role: str) -> User:
    """Change a user's role; a dispatcher must keep (or already have) an area."""
    _check_role(role)

    def change(user: User) -> None:
        if role == "dispatcher" and user.area_id is None:
            raise Refusal("invalid_input", f"Give {user.username} an area (set-area) before making them a dispatcher.")
        user.role = role
        user.session_version += 1

    return _change_user(session, actor, username, "user.set_role", change)


def set_area(session, actor: User | None, username: str, area_code: str) -> User:
    area = find_area(session, area_code)

    def change(user: User) -> None:
        user.area = area
        user.session_version += 1

    return _change_user(session, actor, username, "user.set_area", change)


def disable_user(session, actor: User | None, username: str) -> User:
    """Disable an account and end its sessions."""

    def change(user: User) -> None:
        user.active = False
        user.session_version += 1

    return _change_user(session, actor, username, "user.disable", change)


def enable_user(session, actor: User | None, username: str) -> User:
    def change(user: User) -> None:
        user.active = True

    return _change_user(session, actor, username, "user.enable", change)


def unlock_user(session, actor: User | None, username: str) -> User:
    def change(user: User) -> None:
        user.locked_until = None
        user.failed_logins = 0

    return _change_user(session, actor, username, "user.unlock", change)


def reset_password(session, actor: User | None, username: str, password: str | None = None) -> tuple[User, str]:
    """Set a new password (generated when not given) and end the user's sessions."""
    new_password = password or generate_password()
    _check_password(new_password)

    def change(user: User) -> None:
        user.set_password(new_password)
        user.session_version += 1
        user.failed_logins = 0
        user.locked_until = None

    return _change_user(session, actor, username, "user.reset_password", change), new_password


def authenticate(session, username: str | None, password: str | None) -> User:
    """Check a login.

    ``BAGTRACK_LOCKOUT_ATTEMPTS`` (5) failures for one username lock the
    account for ``BAGTRACK_LOCKOUT_MINUTES`` (15); while locked even the
    right password is refused, with a message saying until when.
    """
    name = normalise_username(username)
    attempts = current_app.config["BAGTRACK_LOCKOUT_ATTEMPTS"]
    minutes = current_app.config["BAGTRACK_LOCKOUT_MINUTES"]
    invalid = LoginRefused("Wrong username or password.")
    if not name or not password or len(name) > 64 or len(password) > 256:
        raise invalid
    user = session.scalar(
        select(User).where(User.username == name).with_for_update(of=User).execution_options(populate_existing=True)
    )
    if user is None:
        session.rollback()
        raise invalid
    now = utcnow()
    if user.is_locked(now):
        until = user.locked_until.strftime("%H:%M UTC")
        session.rollback()
        raise LoginRefused(f"Too many failed attempts: this account is locked until {until}.")
    if not user.check_password(password):
        window_start = now - timedelta(minutes=minutes)
        if user.locked_until is not None or (user.last_failed_at or now) < window_start:
            # Only failures within the window count; an expired lock starts afresh.
            user.failed_logins = 0
            user.locked_until = None
        user.failed_logins += 1
        user.last_failed_at = now
        if user.failed_logins >= attempts:
            user.locked_until = now + timedelta(minutes=minutes)
        session.commit()
        if user.locked_until is not None:
            until = user.locked_until.strftime("%H:%M UTC")
            raise LoginRefused(f"Too many failed attempts: this account is locked until {until}.")
        raise invalid
    if not user.active:
        session.rollback()
        raise LoginRefused("This account is disabled. Ask an admin.")
    if user.failed_logins or user.locked_until:
        user.failed_logins = 0
        user.locked_until = None
    session.commit()
    return user
