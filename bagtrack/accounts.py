"""Users, dispatch areas and passwords: the rules the CLI and the admin pages share.

Logging in, and the sessions it starts, live in :mod:`bagtrack.signin`.
"""

from __future__ import annotations

import functools
import re
import secrets
from pathlib import Path

from sqlalchemy import delete, select

from .audit import record
from .codes import AREA_CODE_MAX_LENGTH, USERNAME_MAX_LENGTH, normalise, normalise_username, without_controls
from .errors import Refusal
from .ledger import in_transaction
from .models import ROLES, DispatchArea, LoginSession, RecoveryCode, User, utcnow
from .signin import MAX_PASSWORD_LENGTH, SignedInUser, count_failed_login, forget_signed_in

USERNAME_PATTERN = re.compile(rf"^[a-z0-9][a-z0-9._-]{{0,{USERNAME_MAX_LENGTH - 1}}}$", re.ASCII)
DISPATCHER_NEEDS_AREA = "A dispatcher needs a dispatch area."
AREA_BEFORE_DISPATCHER = "Give {username} an area before making them a dispatcher."
AREA_CODE_PATTERN = re.compile(rf"^[A-Z0-9][A-Z0-9_-]{{0,{AREA_CODE_MAX_LENGTH - 1}}}$", re.ASCII)
MIN_PASSWORD_LENGTH = 10
COMMON_PASSWORDS = Path(__file__).resolve().parent / "data" / "common-passwords.txt"


def generate_password() -> str:
    return secrets.token_urlsafe(12)


def find_user(session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == normalise_username(username)))
    if user is None:
        raise Refusal("not_found", f"There is no user {normalise_username(username)!r}.")
    return user


def find_area(session, code: str | None) -> DispatchArea:
    code = normalise(code)
    area = session.scalar(select(DispatchArea).where(DispatchArea.code == code))
    if area is None:
        raise Refusal("invalid_input", f"There is no dispatch area {code[:AREA_CODE_MAX_LENGTH]!r}.")
    return area


@functools.cache
def common_passwords() -> frozenset[str]:
    """The shipped list of common passwords (lower-case; see data/COMMON-PASSWORDS.md)."""
    return frozenset(line.strip() for line in COMMON_PASSWORDS.read_text().splitlines() if line.strip())


def check_new_password(password: str, username: str | None = None) -> None:
    """A new password has 10 to 256 characters and is neither a common password nor the username."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise Refusal("invalid_input", f"A password has at least {MIN_PASSWORD_LENGTH} characters.")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise Refusal("invalid_input", f"A password has at most {MAX_PASSWORD_LENGTH} characters.")
    if password.lower() in common_passwords() or (username and password.lower() == username.lower()):
        raise Refusal("invalid_input", "That password is too common to be safe: choose another.")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise Refusal("invalid_input", f"Role must be one of {', '.join(ROLES)}, not {role!r}.")


def add_area(session, actor: User | None, code: str, name: str = "") -> DispatchArea:
    """Add a dispatch area; its code is upper-cased, 1–20 of A-Z 0-9 _ -, and unique."""

    def work() -> DispatchArea:
        normalised = normalise(code)
        if not AREA_CODE_PATTERN.fullmatch(normalised):
            raise Refusal(
                "invalid_input", f"An area code is 1 to {AREA_CODE_MAX_LENGTH} characters of A-Z, 0-9, '_' and '-'."
            )
        if session.scalar(select(DispatchArea.id).where(DispatchArea.code == normalised)) is not None:
            raise Refusal("invalid_input", f"Dispatch area {normalised} already exists.")
        area = DispatchArea(code=normalised, name=without_controls(name or normalised).strip()[:100])
        session.add(area)
        session.flush()
        record(session, actor, "area.add", normalised, after={"name": area.name})
        return area

    return in_transaction(session, work)


def create_user(
    session, actor: User | None, username: str, role: str, *, area_code: str | None = None, password: str | None = None
) -> tuple[User, str]:
    """Create a user; dispatchers need an area. Returns the user and its password (generated when not given).

    The password is stored only hashed: the answer to the caller is the one
    time anyone sees a generated one.
    """

    def work() -> tuple[User, str]:
        name = normalise_username(username)
        if not USERNAME_PATTERN.fullmatch(name):
            raise Refusal("invalid_input", f"A username is 1 to {USERNAME_MAX_LENGTH} of a-z, 0-9, '.', '_' and '-'.")
        _check_role(role)
        area = find_area(session, area_code) if area_code else None
        if role == "dispatcher" and area is None:
            raise Refusal("invalid_input", DISPATCHER_NEEDS_AREA)
        if password is not None:
            check_new_password(password, name)
        if session.scalar(select(User.id).where(User.username == name)) is not None:
            raise Refusal("invalid_input", f"User {name} already exists.")
        user = User(
            username=name, role=role, area_id=area.id if area else None, active=True, failed_logins=0, session_version=1
        )
        new_password = password or generate_password()
        user.set_password(new_password)
        session.add(user)
        session.flush()
        record(session, actor, "user.create", name, after={"role": role, "area": area.code if area else None})
        return user, new_password

    return in_transaction(session, work)


def _change_user(session, actor: User | None, username: str, action: str, change) -> User:
    def work() -> User:
        user = find_user(session, username)
        before = {"role": user.role, "area_id": user.area_id, "active": user.active, "locked_until": user.locked_until}
        was_admin = user.active and user.role == "admin"
        change(user)
        if was_admin and not (user.active and user.role == "admin"):
            _keep_an_admin(session, actor, user)
        session.flush()
        after = {"role": user.role, "area_id": user.area_id, "active": user.active, "locked_until": user.locked_until}
        record(session, actor, action, user.username, before=before, after=after)
        return user

    user = in_transaction(session, work)
    forget_signed_in(user.id)
    return user


def _keep_an_admin(session, actor: User | SignedInUser | None, user: User) -> None:
    """Refuse to take away an admin who is the actor, or the last active admin.

    The other active admins are locked for the rest of the transaction, so
    two admins disabling each other at once cannot leave the site without one.
    """
    if actor is not None and actor.id == user.id:
        raise Refusal("last_admin", "You cannot disable or demote yourself: ask another admin.")
    others = session.scalars(
        select(User.id)
        .where(User.role == "admin", User.active.is_(True), User.id != user.id)
        .order_by(User.id)
        .with_for_update()
    ).all()
    if not others:
        raise Refusal("last_admin", f"{user.username} is the last active admin: make another admin first.")


def set_role(session, actor: User | None, username: str, role: str) -> User:
    """Change a user's role and end their sessions; a dispatcher must keep (or already have) an area.

    Nobody demotes themself or the last active admin (``last_admin``).
    """
    _check_role(role)

    def change(user: User) -> None:
        if role == "dispatcher" and user.area_id is None:
            raise Refusal("invalid_input", AREA_BEFORE_DISPATCHER.format(username=user.username))
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
    """Disable an account and end its sessions; nobody disables themself or the last active admin."""

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
    check_new_password(new_password, normalise_username(username))

    def change(user: User) -> None:
        user.set_password(new_password)
        user.session_version += 1
        user.failed_logins = 0
        user.locked_until = None

    return _change_user(session, actor, username, "user.reset_password", change), new_password


def reset_2fa(session, actor: User | None, username: str) -> User:
    """Turn off a user's two-factor login (lost phone): secret and recovery codes are gone."""

    def change(user: User) -> None:
        user.totp_secret = None
        user.totp_last_step = None
        session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))

    return _change_user(session, actor, username, "user.reset_2fa", change)


def change_password(session, user_id: int, current: str, new: str, repeated: str) -> User:
    """A user changes their own password: the current one, then the new one twice.

    A wrong current password counts as a failed login. The change ends every
    session of the user; the caller starts a new one for the device in hand.
    """
    user = session.get(User, user_id, populate_existing=True)
    session.commit()
    if not current or len(current) > MAX_PASSWORD_LENGTH or not user.check_password(current):
        count_failed_login(session, user.id, utcnow())
        raise Refusal("invalid_input", "Your current password is not right.")
    if new != repeated:
        raise Refusal("invalid_input", "The new password and its repetition differ.")
    check_new_password(new, user.username)
    if user.check_password(new):
        raise Refusal("invalid_input", "The new password must differ from the current one.")

    def work() -> User:
        row = session.get(User, user_id, with_for_update={"of": User})
        row.set_password(new)
        row.session_version += 1
        session.execute(delete(LoginSession).where(LoginSession.user_id == user_id))
        record(session, row, "user.change_password", row.username)
        return row

    user = in_transaction(session, work)
    forget_signed_in(user_id)
    return user
