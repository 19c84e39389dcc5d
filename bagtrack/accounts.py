"""Users, dispatch areas and logging in: the rules the CLI and the admin pages share."""

from __future__ import annotations

import re
import secrets
import time
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import case, or_, select, update

from .audit import record
from .codes import normalise, without_controls
from .errors import Refusal
from .ledger import in_transaction
from .models import ROLES, AreaRef, DispatchArea, Identity, User, utcnow

USERNAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$", re.ASCII)
AREA_CODE_PATTERN = re.compile(r"^[A-Z0-9][A-Z0-9_-]{0,19}$", re.ASCII)
MIN_PASSWORD_LENGTH = 8


class SignedInUser(Identity):
    """The logged-in user as a request sees it: a read-only snapshot of the row.

    Requests share the snapshot for ``BAGTRACK_USER_CACHE_S`` seconds, so a
    scan or a dashboard poll costs no database round trip just to learn who
    is asking. Every change of a user in this process forgets it at once;
    another worker sees a role change, a disable or a logout within that
    many seconds.
    """

    def __init__(self, user: User):
        self.id = user.id
        self.username = user.username
        self.role = user.role
        self.area_id = user.area_id
        self.area = AreaRef(user.area.id, user.area.code, user.area.name) if user.area is not None else None
        self.session_version = user.session_version
        self.active = user.active


_signed_in: dict[int, tuple[float, SignedInUser]] = {}


def signed_in_user(session, user_id: int, session_version: int) -> SignedInUser | None:
    """The user a session cookie names, if its version is current and the account active.

    While the cookie and the snapshot agree no query is made. A cookie newer
    than the snapshot can only mean the snapshot is stale (the user's sessions
    were ended here or in another worker, then the user logged in again): the
    snapshot is read afresh and the cookie judged on the row. An older cookie
    is refused.
    """
    ttl = current_app.config["BAGTRACK_USER_CACHE_S"]
    now = time.monotonic()
    cached = _signed_in.get(user_id)
    if cached is None or cached[0] <= now or cached[1].session_version < session_version:
        user = session.get(User, user_id, populate_existing=True)
        if user is None:
            _signed_in.pop(user_id, None)
            return None
        cached = (now + ttl, SignedInUser(user))
        if ttl > 0:
            _signed_in[user_id] = cached
    snapshot = cached[1]
    if snapshot.session_version != session_version or not snapshot.active:
        return None
    return snapshot


def forget_signed_in(user_id: int | None = None) -> None:
    """Drop the snapshot of one user (``None``: of everyone)."""
    if user_id is None:
        _signed_in.clear()
    else:
        _signed_in.pop(user_id, None)


class LoginRefused(Exception):
    """Wrong credentials, a disabled account, or a locked one (the message says until when)."""


def generate_password() -> str:
    return secrets.token_urlsafe(12)


def normalise_username(raw: str | None) -> str:
    """Trimmed and lower-cased, without control or format characters (a NUL must not reach a query)."""
    return without_controls(raw).strip().lower()


def find_user(session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == normalise_username(username)))
    if user is None:
        raise Refusal("not_found", f"There is no user {normalise_username(username)!r}.")
    return user


def find_area(session, code: str | None) -> DispatchArea:
    code = normalise(code)
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
        normalised = normalise(code)
        if not AREA_CODE_PATTERN.fullmatch(normalised):
            raise Refusal("invalid_input", "An area code is 1 to 20 characters of A-Z, 0-9, '_' and '-'.")
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
) -> User:
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
        user = User(
            username=name, role=role, area_id=area.id if area else None, active=True, failed_logins=0, session_version=1
        )
        user.set_password(password or generate_password())
        session.add(user)
        session.flush()
        record(session, actor, "user.create", name, after={"role": role, "area": area.code if area else None})
        return user

    return in_transaction(session, work)


def _change_user(session, actor: User | None, username: str, action: str, change) -> User:
    def work() -> User:
        user = find_user(session, username)
        before = {"role": user.role, "area_id": user.area_id, "active": user.active, "locked_until": user.locked_until}
        change(user)
        session.flush()
        after = {"role": user.role, "area_id": user.area_id, "active": user.active, "locked_until": user.locked_until}
        record(session, actor, action, user.username, before=before, after=after)
        return user

    user = in_transaction(session, work)
    forget_signed_in(user.id)
    return user


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


def end_sessions(session, user: User | SignedInUser) -> None:
    """Log ``user`` out: every session cookie issued to them stops loading the user.

    Flask's sessions live in the cookie, so clearing it on one device leaves a
    copied cookie valid; bumping ``session_version`` makes every earlier
    cookie of the user name a stale version. The price is that logging out
    on one device logs the user out on all of them. That is the right trade
    on a floor where scanners are shared and a forgotten session must end
    when its user leaves.
    """
    session.execute(update(User).where(User.id == user.id).values(session_version=User.session_version + 1))
    session.commit()
    forget_signed_in(user.id)


def authenticate(session, username: str | None, password: str | None) -> User:
    """Check a login.

    ``BAGTRACK_LOCKOUT_ATTEMPTS`` (5) failures for one username lock the
    account for ``BAGTRACK_LOCKOUT_MINUTES`` (15); while locked even the
    right password is refused, with a message saying until when.
    """
    name = normalise_username(username)
    invalid = LoginRefused("Wrong username or password.")
    if not name or not password or len(name) > 64 or len(password) > 256:
        raise invalid
    user = session.scalar(select(User).where(User.username == name).execution_options(populate_existing=True))
    # Hashing a password takes a while on purpose: hold no transaction (and no
    # pooled connection) meanwhile. Failures are then counted by one atomic
    # UPDATE, so concurrent attempts can neither lose a count nor undo a lock.
    session.commit()
    if user is None:
        raise invalid
    now = utcnow()
    if user.is_locked(now):
        raise _locked_until(user.locked_until)
    if not user.check_password(password):
        locked_until = _count_failure(session, user.id, now)
        if locked_until is not None:
            raise _locked_until(locked_until)
        raise invalid
    if not user.active:
        raise LoginRefused("This account is disabled. Ask an admin.")
    if user.failed_logins or user.locked_until:
        cleared = session.execute(
            update(User)
            .where(User.id == user.id, or_(User.locked_until.is_(None), User.locked_until <= now))
            .values(failed_logins=0, locked_until=None)
            .returning(User.id)
        ).scalar_one_or_none()
        session.commit()
        if cleared is None:
            raise _locked_until(session.scalar(select(User.locked_until).where(User.id == user.id)))
        user.failed_logins, user.locked_until = 0, None
    return user


def _locked_until(moment) -> LoginRefused:
    return LoginRefused(f"Too many failed attempts: this account is locked until {moment:%H:%M} UTC.")


def _count_failure(session, user_id: int, now) -> datetime | None:
    """Count one failed login; return until when the account is locked, if it now is.

    Only failures within ``BAGTRACK_LOCKOUT_MINUTES`` of the previous one
    count; an expired lock starts the count afresh.
    """
    attempts = current_app.config["BAGTRACK_LOCKOUT_ATTEMPTS"]
    minutes = timedelta(minutes=current_app.config["BAGTRACK_LOCKOUT_MINUTES"])
    fresh = or_(User.last_failed_at.is_(None), User.last_failed_at < now - minutes, User.locked_until <= now)
    failures = case((fresh, 1), else_=User.failed_logins + 1)
    locked_until = case(
        (User.locked_until > now, User.locked_until),
        (failures >= attempts, now + minutes),
        else_=None,
    )
    locked = session.execute(
        update(User)
        .where(User.id == user_id)
        .values(failed_logins=failures, last_failed_at=now, locked_until=locked_until)
        .returning(User.locked_until)
    ).scalar_one_or_none()
    session.commit()
    return locked
