"""Signing in: the password and the second factor checked, login sessions started and ended.

A wrong password or code counts towards the lockout; a device cookie lists
the usernames a device has logged in as, which the lockout and the username
limit spare. A request learns who is asking from :func:`signed_in_user`, a
snapshot of the user that requests share; every change of a user in this
process forgets it (:func:`forget_signed_in`) and, through Redis, tells the
other workers to forget theirs.
"""

from __future__ import annotations

import functools
import logging
import secrets
import time
from datetime import datetime, timedelta

from flask import current_app, has_app_context
from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import case, delete, func, or_, select, update
from werkzeug.security import check_password_hash, generate_password_hash

from . import twofactor
from .audit import record
from .codes import USERNAME_MAX_LENGTH, normalise_username
from .errors import Refusal
from .extensions import cache, cache_redis
from .ledger import in_transaction
from .models import AreaRef, Identity, LoginSession, RecoveryCode, User, utcnow

# The longest password ever set, and so the longest checked: a longer one is refused before any hashing.
MAX_PASSWORD_LENGTH = 256
# How many usernames one device remembers having logged in as (a shared scanner has a few).
KNOWN_USERS_PER_DEVICE = 20
# Where a session cookie keeps the id of its login session.
LOGIN_SESSION_KEY = "_bagtrack_login_session"
# Who gave the right password and now owes the second factor: {"user", "version", "at", "next"}.
PENDING_2FA_KEY = "_bagtrack_2fa_pending"
# A signed list of the usernames a device has logged in as (the lockout and the username limit spare them).
DEVICE_COOKIE = "bagtrack_device"


log = logging.getLogger(__name__)

# Every change of a user stamps a new random token here; workers compare it with the one they last saw.
USERS_TOKEN_KEY = "v1:users:token"


class SignedInUser(Identity):
    """The logged-in user as a request sees it: a read-only snapshot of the row.

    Requests share the snapshot, so a scan or a dashboard poll costs no
    database round trip just to learn who is asking. Every change of a user
    in this process forgets it at once. Other workers see a role change, a
    disable or a logout within ``BAGTRACK_USER_CACHE_S`` seconds: with Redis,
    each worker looks at the users' token that every change stamps at most
    that often and keeps snapshots up to ``BAGTRACK_USER_CACHE_MAX_S`` while
    it is unchanged; without Redis (or while it fails) a snapshot lives
    ``BAGTRACK_USER_CACHE_S`` seconds.
    """

    def __init__(self, user: User, live_sessions: frozenset[int]):
        self.id = user.id
        self.username = user.username
        self.role = user.role
        self.area_id = user.area_id
        self.area = AreaRef(user.area.id, user.area.code, user.area.name) if user.area is not None else None
        self.session_version = user.session_version
        self.active = user.active
        self.has_2fa = user.totp_secret is not None
        self.live_sessions = live_sessions
        self.newest_session = max(live_sessions, default=0)

    def is_newer(self, session_version: int, login_session: int) -> bool:
        """Whether a cookie was issued after this snapshot was read (so the snapshot is stale)."""
        return session_version > self.session_version or (
            login_session not in self.live_sessions and login_session > self.newest_session
        )


# user id -> (when it was read, on the monotonic clock; the snapshot)
_signed_in: dict[int, tuple[float, SignedInUser]] = {}


def signed_in_user(session, user_id: int, session_version: int, login_session: int) -> SignedInUser | None:
    """The user a session cookie names, if the cookie's session is live and the account active.

    A cookie names the user, the user's session version (bumped to end all
    sessions) and its own login session (deleted when that device logs out).
    While the cookie and the snapshot agree no query is made. A cookie newer
    than the snapshot can only mean the snapshot is stale (the user logged in
    again since it was read, here or in another worker): the snapshot is read
    afresh and the cookie judged on the rows. An older cookie, or a session
    that has ended, is refused.
    """
    lifetime = _snapshot_lifetime()
    now = time.monotonic()
    cached = _signed_in.get(user_id)
    if cached is None or now - cached[0] >= lifetime or cached[1].is_newer(session_version, login_session):
        # One round trip: the user, once per live session of theirs.
        rows = session.execute(
            select(User, LoginSession.id)
            .outerjoin(LoginSession, LoginSession.user_id == User.id)
            .where(User.id == user_id)
            .execution_options(populate_existing=True)
        ).all()
        if not rows:
            _signed_in.pop(user_id, None)
            return None
        live = frozenset(login_session_id for _, login_session_id in rows if login_session_id is not None)
        cached = (now, SignedInUser(rows[0][0], live))
        if lifetime > 0:
            _signed_in[user_id] = cached
    snapshot = cached[1]
    if (
        snapshot.session_version != session_version
        or login_session not in snapshot.live_sessions
        or not snapshot.active
    ):
        return None
    return snapshot


def _snapshot_lifetime() -> float:
    """How long a snapshot may be used: long while the users' token is watched, else ``BAGTRACK_USER_CACHE_S``.

    The token is read from Redis at most once per ``BAGTRACK_USER_CACHE_S``
    per worker; a token other than the one seen before drops every snapshot.
    When Redis fails it is left alone for ``BAGTRACK_REDIS_RETRY_S``, and
    snapshots meanwhile live their short life.
    """
    config = current_app.config
    short = config["BAGTRACK_USER_CACHE_S"]
    watch = _watch()
    if short <= 0 or watch is None:
        return short
    now = time.monotonic()
    if now >= watch["next_look"]:
        try:
            token = cache.get(USERS_TOKEN_KEY)
        except Exception:
            log.warning("reading the users' token failed; user snapshots live %s s", short, exc_info=True)
            watch.update(next_look=now + config["BAGTRACK_REDIS_RETRY_S"], watching=False)
            return short
        if token != watch["token"]:
            _signed_in.clear()
        watch.update(token=token, next_look=now + short, watching=True)
    return max(short, config["BAGTRACK_USER_CACHE_MAX_S"]) if watch["watching"] else short


def _watch() -> dict | None:
    """This worker's view of the users' token; None when the cache is not shared (no Redis)."""
    state = current_app.extensions.get("bagtrack.users_token")
    if state is None:
        state = {"shared": cache_redis() is not None, "token": None, "next_look": 0.0, "watching": False}
        current_app.extensions["bagtrack.users_token"] = state
    return state if state["shared"] else None


def forget_signed_in(user_id: int | None = None) -> None:
    """Drop the snapshot of one user (``None``: of everyone); a user's change is also told to other workers.

    Called after the change is committed, so no worker can read the old rows
    once it has seen the new token.
    """
    if user_id is None:
        _signed_in.clear()
        return
    _signed_in.pop(user_id, None)
    if has_app_context() and _watch() is not None:
        try:
            cache.set(USERS_TOKEN_KEY, secrets.token_hex(8), timeout=0)
        except Exception:
            log.warning(
                "telling other workers that user %s changed failed; they see it within %s s",
                user_id,
                current_app.config["BAGTRACK_USER_CACHE_MAX_S"],
                exc_info=True,
            )


class LoginRefused(Exception):
    """Wrong credentials, a disabled account, or a locked one (the message says until when)."""


def start_session(session, user: User) -> int:
    """Record one more logged-in device of ``user``; its id goes into that device's cookie.

    Rows of sessions past their lifetime are cleared on the way.
    """
    expired = utcnow() - current_app.config["PERMANENT_SESSION_LIFETIME"]
    session.execute(delete(LoginSession).where(LoginSession.user_id == user.id, LoginSession.created_at < expired))
    row = LoginSession(user_id=user.id)
    session.add(row)
    session.commit()
    return row.id


def end_session(session, user: User | SignedInUser, login_session: int) -> None:
    """Log out one device: its session row goes, and its cookie stops loading the user.

    Other workers notice within ``BAGTRACK_USER_CACHE_S``.
    """
    session.execute(delete(LoginSession).where(LoginSession.id == login_session, LoginSession.user_id == user.id))
    session.commit()
    forget_signed_in(user.id)


def end_all_sessions(session, user: User | SignedInUser) -> None:
    """Log ``user`` out everywhere: bumping ``session_version`` makes every cookie issued so far stale."""
    session.execute(update(User).where(User.id == user.id).values(session_version=User.session_version + 1))
    session.execute(delete(LoginSession).where(LoginSession.user_id == user.id))
    record(session, user, "user.logout_everywhere", user.username)
    session.commit()
    forget_signed_in(user.id)


def authenticate(session, username: str | None, password: str | None, known_device: bool = False) -> User:
    """Check a login's username and password.

    Every refusal before the password is known to be right reads the same
    ("Wrong username or password.") and takes as long: an unknown username
    is checked against a dummy hash. ``BAGTRACK_LOCKOUT_ATTEMPTS`` (5)
    failures for one username within ``BAGTRACK_LOCKOUT_MINUTES`` (15) lock
    the account that long; a locked account refuses a wrong password like
    any other and tells of the lock only when the right one is given.
    A device that has logged in as this user before (``known_device``) is
    not held by the lock: a stranger's guesses cannot shut the user out.
    """
    name = normalise_username(username)
    invalid = LoginRefused("Wrong username or password.")
    if not name or not password or len(name) > USERNAME_MAX_LENGTH or len(password) > MAX_PASSWORD_LENGTH:
        raise invalid
    user = session.scalar(select(User).where(User.username == name).execution_options(populate_existing=True))
    # Hashing a password takes a while on purpose: hold no transaction (and no
    # pooled connection) meanwhile. Failures are then counted by one atomic
    # UPDATE, so concurrent attempts can neither lose a count nor undo a lock.
    session.commit()
    if user is None:
        check_password_hash(_dummy_hash(), password)
        raise invalid
    now = utcnow()
    if not user.check_password(password):
        count_failed_login(session, user.id, now)
        raise invalid
    if user.is_locked(now) and not known_device:
        raise _locked_until(user.locked_until)
    if not user.active:
        raise LoginRefused("This account is disabled. Ask an admin.")
    if user.failed_logins or user.locked_until:
        clearable = [User.id == user.id]
        if not known_device:
            clearable.append(or_(User.locked_until.is_(None), User.locked_until <= now))
        cleared = session.execute(
            update(User).where(*clearable).values(failed_logins=0, locked_until=None).returning(User.id)
        ).scalar_one_or_none()
        session.commit()
        if cleared is None:
            raise _locked_until(session.scalar(select(User.locked_until).where(User.id == user.id)))
        user.failed_logins, user.locked_until = 0, None
    return user


@functools.cache
def _dummy_hash() -> str:
    """A hash made like a real user's, for unknown usernames to be checked against."""
    return generate_password_hash(secrets.token_urlsafe(16))


def check_second_factor(session, user_id: int, code: str | None) -> User:
    """The second step of a login: a TOTP code (each good once) or an unused recovery code.

    A wrong code counts as a failed login; once the account is locked the
    person, who has given the right password, is told until when.
    """
    user = session.get(User, user_id, populate_existing=True)
    session.commit()
    now = utcnow()
    if user is None or not user.active or user.totp_secret is None:
        raise LoginRefused("Log in again.")
    if user.is_locked(now):
        raise _locked_until(user.locked_until)
    secret = twofactor.decrypt(user.totp_secret)
    step = twofactor.matching_step(secret, code, user.totp_last_step) if secret else None
    accepted = False
    if step is not None:
        accepted = session.execute(
            update(User)
            .where(User.id == user.id, or_(User.totp_last_step.is_(None), User.totp_last_step < step))
            .values(totp_last_step=step)
            .returning(User.id)
        ).scalar_one_or_none()
    elif code and len(code) <= 32:
        accepted = session.execute(
            delete(RecoveryCode)
            .where(RecoveryCode.user_id == user.id, RecoveryCode.code_hash == twofactor.recovery_hash(code))
            .returning(RecoveryCode.id)
        ).scalar_one_or_none()
        if accepted:
            record(session, user, "user.recovery_code_used", user.username)
    session.commit()
    if not accepted:
        locked_until = count_failed_login(session, user.id, now)
        if locked_until is not None:
            raise _locked_until(locked_until)
        raise LoginRefused("That code is not right. Enter the 6 digits your app shows now, or a recovery code.")
    return user


def enrol_2fa(session, user_id: int, secret: str, code: str | None) -> list[str]:
    """Turn on two-factor login once ``code`` shows the authenticator app holds ``secret``.

    Returns ten new recovery codes, the only time they are shown in clear.
    """
    step = twofactor.matching_step(secret, code)
    if step is None:
        raise Refusal("invalid_input", "That code is not right: enter the 6 digits your app shows for bagtrack.")
    codes = twofactor.new_recovery_codes()

    def work() -> User:
        user = session.get(User, user_id, with_for_update={"of": User})
        if user.totp_secret is not None:
            raise Refusal("invalid_input", "Two-factor login is already on.")
        user.totp_secret = twofactor.encrypt(secret)
        user.totp_last_step = step
        session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
        session.add_all(RecoveryCode(user_id=user_id, code_hash=twofactor.recovery_hash(code)) for code in codes)
        record(session, user, "user.enrol_2fa", user.username)
        return user

    in_transaction(session, work)
    forget_signed_in(user_id)
    return codes


def recovery_codes_left(session, user_id: int) -> int:
    return session.scalar(select(func.count()).select_from(RecoveryCode).where(RecoveryCode.user_id == user_id))


def needs_2fa_enrolment(user: Identity) -> bool:
    """Whether ``BAGTRACK_2FA_REQUIRED_ROLES`` makes this user enrol before using the site."""
    return user.role in current_app.config["BAGTRACK_2FA_REQUIRED_ROLES"] and not user.has_2fa


def _device_serializer() -> URLSafeSerializer:
    return URLSafeSerializer(current_app.config["SECRET_KEY"], salt="bagtrack known device")


def known_usernames(cookie: str | None) -> list[str]:
    """The usernames a device's signed cookie says it has logged in as (none when absent or forged)."""
    if not cookie or len(cookie) > 4096:
        return []
    try:
        names = _device_serializer().loads(cookie)
    except BadSignature:
        return []
    return [name for name in names if isinstance(name, str)] if isinstance(names, list) else []


def remember_username(cookie: str | None, username: str) -> str:
    """The device cookie after a login as ``username`` (the most recent usernames kept)."""
    names = [name for name in known_usernames(cookie) if name != username]
    return _device_serializer().dumps([username, *names][:KNOWN_USERS_PER_DEVICE])


def _locked_until(moment) -> LoginRefused:
    return LoginRefused(f"Too many failed attempts: this account is locked until {moment:%H:%M} UTC.")


def count_failed_login(session, user_id: int, now) -> datetime | None:
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
