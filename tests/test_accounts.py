"""Logging in, lockout, and the user and area rules the CLI and admin pages share."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from helpers import PASSWORD, refused
from sqlalchemy import select, update

from bagtrack import accounts, signin
from bagtrack.extensions import db
from bagtrack.models import AuditEntry, DispatchArea, User, utcnow

WRONG = "not-the-password"


def login(username: str, password: str) -> User:
    return signin.authenticate(db.session, username, password)


def login_refused(username: str, password: str) -> str:
    with pytest.raises(signin.LoginRefused) as caught:
        login(username, password)
    return str(caught.value)


def fresh_user(username: str) -> User:
    db.session.expire_all()
    return db.session.scalars(select(User).where(User.username == username)).one()


def locked_message(user: User) -> str:
    return f"Too many failed attempts: this account is locked until {user.locked_until.strftime('%H:%M UTC')}."


def age_failures(username: str, minutes: float) -> None:
    """Pretend the user's recorded failures happened ``minutes`` earlier."""
    user = fresh_user(username)
    user.last_failed_at -= timedelta(minutes=minutes)
    db.session.commit()


@pytest.fixture
def worker(make_user):
    return make_user("worker", "dispatcher", "NORTH")


@pytest.fixture
def admin(make_user):
    return make_user("root", "admin", None)


# --- Login and lockout ----------------------------------------------------------------------------


def test_right_password_logs_in_whatever_the_case_of_the_username(worker):
    assert login(" Worker ", PASSWORD).id == worker.id


@pytest.mark.parametrize(
    ("username", "password"), [("worker", WRONG), ("nobody", PASSWORD), ("", PASSWORD), ("worker", ""), (None, None)]
)
def test_wrong_credentials_are_refused_alike(worker, username, password):
    assert login_refused(username, password) == "Wrong username or password."


def test_five_failures_lock_the_account_for_fifteen_minutes(worker):
    for _ in range(4):
        assert login_refused("worker", WRONG) == "Wrong username or password."
    # The lock is not told to whoever does not know the password.
    assert login_refused("worker", WRONG) == "Wrong username or password."
    user = fresh_user("worker")
    assert user.failed_logins == 5
    assert user.locked_until - user.last_failed_at == timedelta(minutes=15)
    assert login_refused("worker", WRONG) == "Wrong username or password."


def test_a_locked_account_refuses_even_the_right_password_saying_until_when(worker):
    for _ in range(5):
        login_refused("worker", WRONG)
    user = fresh_user("worker")
    assert login_refused("worker", PASSWORD) == locked_message(user)
    assert "locked until" in locked_message(user) and "UTC" in locked_message(user)


def test_a_device_that_logged_in_as_the_user_before_is_not_held_by_the_lock(worker):
    for _ in range(5):
        login_refused("worker", WRONG)
    assert signin.authenticate(db.session, "worker", PASSWORD, known_device=True).id == worker.id
    assert fresh_user("worker").locked_until is None


def test_the_lock_ends_after_fifteen_minutes(worker):
    for _ in range(5):
        login_refused("worker", WRONG)
    db.session.execute(
        update(User).where(User.username == "worker").values(locked_until=utcnow() - timedelta(seconds=1))
    )
    db.session.commit()
    assert login("worker", PASSWORD).id == worker.id
    user = fresh_user("worker")
    assert (user.failed_logins, user.locked_until) == (0, None)


def test_a_wrong_password_after_an_expired_lock_starts_counting_afresh(worker):
    for _ in range(5):
        login_refused("worker", WRONG)
    db.session.execute(
        update(User).where(User.username == "worker").values(locked_until=utcnow() - timedelta(seconds=1))
    )
    db.session.commit()
    assert login_refused("worker", WRONG) == "Wrong username or password."
    assert fresh_user("worker").failed_logins == 1


def test_failures_older_than_the_window_do_not_count(worker):
    for _ in range(4):
        login_refused("worker", WRONG)
    age_failures("worker", 16)
    for _ in range(4):
        assert login_refused("worker", WRONG) == "Wrong username or password."
    user = fresh_user("worker")
    assert (user.failed_logins, user.locked_until) == (4, None)
    assert login("worker", PASSWORD).id == worker.id


def test_failures_within_the_window_add_up(worker):
    for _ in range(4):
        login_refused("worker", WRONG)
    age_failures("worker", 14)
    login_refused("worker", WRONG)
    assert fresh_user("worker").is_locked()


def test_a_successful_login_clears_the_failures(worker):
    for _ in range(4):
        login_refused("worker", WRONG)
    login("worker", PASSWORD)
    for _ in range(4):
        login_refused("worker", WRONG)
    assert fresh_user("worker").locked_until is None


def test_lockout_is_per_username(worker, make_user):
    make_user("other", "dispatcher", "NORTH")
    for _ in range(5):
        login_refused("worker", WRONG)
    assert login("other", PASSWORD).username == "other"


def test_admin_unlock_lets_the_user_in_again(worker, admin):
    for _ in range(5):
        login_refused("worker", WRONG)
    accounts.unlock_user(db.session, admin, "worker")
    user = fresh_user("worker")
    assert (user.failed_logins, user.locked_until) == (0, None)
    assert login("worker", PASSWORD).id == worker.id
    entry = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "user.unlock")).one()
    assert (entry.actor, entry.target) == ("root", "worker")


def test_disabled_user_is_refused_and_loses_their_sessions(worker, admin):
    accounts.disable_user(db.session, admin, "worker")
    user = fresh_user("worker")
    assert (user.active, user.session_version) == (False, 2)
    assert user.get_id() == f"{worker.id}:2"
    assert login_refused("worker", PASSWORD) == "This account is disabled. Ask an admin."
    accounts.enable_user(db.session, admin, "worker")
    assert login("worker", PASSWORD).id == worker.id


def test_reset_password_ends_sessions_clears_the_lock_and_sets_the_password(worker, admin):
    for _ in range(5):
        login_refused("worker", WRONG)
    user, password = accounts.reset_password(db.session, admin, "worker", "brand-new-pass")
    assert password == "brand-new-pass"
    user = fresh_user("worker")
    assert (user.session_version, user.failed_logins, user.locked_until) == (2, 0, None)
    assert login_refused("worker", PASSWORD) == "Wrong username or password."
    assert login("worker", "brand-new-pass").id == worker.id


def test_reset_password_generates_one_when_none_is_given(worker, admin):
    _, password = accounts.reset_password(db.session, admin, "worker")
    assert len(password) >= accounts.MIN_PASSWORD_LENGTH
    assert login("worker", password).id == worker.id


def test_reset_password_refuses_a_short_password(worker, admin):
    assert refused(accounts.reset_password, admin, "worker", "short").code == "invalid_input"
    assert fresh_user("worker").session_version == 1


# --- Users and areas ------------------------------------------------------------------------------


def test_create_user_normalises_the_name_and_audits(admin, make_area):
    make_area("NORTH")
    user, _ = accounts.create_user(
        db.session, admin, " New.Worker ", "dispatcher", area_code="north", password="long-enough"
    )
    assert (user.username, user.role, user.area.code, user.active) == ("new.worker", "dispatcher", "NORTH", True)
    assert login("new.worker", "long-enough").id == user.id
    entry = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "user.create")).one()
    assert (entry.actor, entry.target) == ("root", "new.worker")
    assert json.loads(entry.after) == {"role": "dispatcher", "area": "NORTH"}


@pytest.mark.parametrize(
    ("username", "role", "area", "password", "message"),
    [
        ("bad name", "biller", None, None, "A username is 1 to 64 of a-z, 0-9, '.', '_' and '-'."),
        ("", "biller", None, None, "A username is 1 to 64 of a-z, 0-9, '.', '_' and '-'."),
        ("x" * 65, "biller", None, None, "A username is 1 to 64 of a-z, 0-9, '.', '_' and '-'."),
        ("ann", "boss", None, None, "Role must be one of dispatcher, biller, admin, not 'boss'."),
        ("ann", "dispatcher", None, None, "A dispatcher needs a dispatch area."),
        ("ann", "dispatcher", "WEST", None, "There is no dispatch area 'WEST'."),
        ("ann", "biller", None, "short", "A password has at least 10 characters."),
        ("ann", "biller", None, "password1234", "That password is too common to be safe: choose another."),
        ("root", "biller", None, None, "User root already exists."),
    ],
)
def test_create_user_rules(admin, make_area, username, role, area, password, message):
    make_area("NORTH")
    refusal = refused(accounts.create_user, admin, username, role, area_code=area, password=password)
    assert (refusal.code, refusal.message) == ("invalid_input", message)
    assert db.session.scalars(select(User.username)).all() == ["root"]


def test_a_generated_password_is_never_empty(admin):
    user, password = accounts.create_user(db.session, admin, "ann", "biller")
    assert password and user.check_password(password) and not user.check_password("")


def test_set_role_and_area_end_sessions(worker, admin, make_area):
    make_area("SOUTH")
    accounts.set_area(db.session, admin, "worker", "south")
    assert (fresh_user("worker").area.code, fresh_user("worker").session_version) == ("SOUTH", 2)
    accounts.set_role(db.session, admin, "worker", "biller")
    assert (fresh_user("worker").role, fresh_user("worker").session_version) == ("biller", 3)


def test_a_user_without_an_area_cannot_become_a_dispatcher(admin, make_user):
    make_user("ann", "biller", None)
    refusal = refused(accounts.set_role, admin, "ann", "dispatcher")
    assert refusal.code == "invalid_input"
    assert fresh_user("ann").role == "biller"


def test_changing_an_unknown_user_is_not_found(admin):
    refusal = refused(accounts.disable_user, admin, "ghost")
    assert (refusal.code, refusal.status) == ("not_found", 404)


def test_add_area_upper_cases_and_audits(admin):
    area = accounts.add_area(db.session, admin, " east-1 ", "East dock")
    assert (area.code, area.name) == ("EAST-1", "East dock")
    assert accounts.add_area(db.session, admin, "WEST").name == "WEST"
    assert [entry.target for entry in db.session.scalars(select(AuditEntry).order_by(AuditEntry.id))] == [
        "EAST-1",
        "WEST",
    ]


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("", "An area code is 1 to 20 characters of A-Z, 0-9, '_' and '-'."),
        ("A" * 21, "An area code is 1 to 20 characters of A-Z, 0-9, '_' and '-'."),
        ("NO RTH", "An area code is 1 to 20 characters of A-Z, 0-9, '_' and '-'."),
        ("-NORTH", "An area code is 1 to 20 characters of A-Z, 0-9, '_' and '-'."),
        ("\uff2e\uff2f\uff32\uff34\uff28", "An area code is 1 to 20 characters of A-Z, 0-9, '_' and '-'."),
        ("north", "Dispatch area NORTH already exists."),
    ],
)
def test_add_area_rules(admin, make_area, code, message):
    make_area("NORTH")
    refusal = refused(accounts.add_area, admin, code)
    assert (refusal.code, refusal.message) == ("invalid_input", message)
    assert db.session.scalars(select(DispatchArea.code)).all() == ["NORTH"]
