"""A person's own account: password change, logging out, two-factor login; and what admins cannot undo."""

from __future__ import annotations

import re
import time

import pyotp
import pytest
from helpers import JSON, PASSWORD, log_in, new_client
from sqlalchemy import select

from bagtrack import accounts, config, signin, twofactor
from bagtrack.extensions import db
from bagtrack.models import RecoveryCode, User

NEW_PASSWORD = "a-brand-new-secret"
SECRET_ON_PAGE = re.compile(r'<code class="totp-secret">([A-Z2-7]+)</code>')
RECOVERY_ON_PAGE = re.compile(r'<code class="recovery-code">([A-Z0-9-]+)</code>')


def row(username: str) -> User:
    db.session.expire_all()
    return db.session.scalar(select(User).where(User.username == username))


def change(client, current=PASSWORD, new=NEW_PASSWORD, repeated=NEW_PASSWORD, headers=None):
    return client.post(
        "/account/password", data={"current": current, "new": new, "repeated": repeated}, headers=headers or {}
    )


def password_login(app, username: str, password: str = PASSWORD):
    client = new_client(app)
    response = client.post("/login", data={"username": username, "password": password})
    # A login starts a new session, and with it a new CSRF token.
    client.fetch_csrf_token()
    return client, response


# Password


def test_changing_your_password_keeps_this_device_and_ends_the_others(app, make_user):
    make_user()
    here, elsewhere = log_in(app, "worker"), log_in(app, "worker")
    response = change(here)
    assert response.status_code == 303 and response.headers["Location"] == "/account/password"
    assert "Your password is changed" in here.get("/account/password").get_data(as_text=True)
    assert here.get("/api/stats").status_code == 200
    assert elsewhere.get("/api/stats").status_code == 401
    assert password_login(app, "worker")[1].status_code == 401
    assert password_login(app, "worker", NEW_PASSWORD)[1].status_code == 303


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"current": "not-my-password"}, "Your current password is not right."),
        ({"repeated": "something-else-entirely"}, "The new password and its repetition differ."),
        ({"new": "short-one", "repeated": "short-one"}, "A password has at least 10 characters."),
        ({"new": "Password1234", "repeated": "Password1234"}, "That password is too common to be safe"),
        ({"new": PASSWORD + "x" * 300, "repeated": PASSWORD + "x" * 300}, "Fill in your current password"),
        ({"new": PASSWORD, "repeated": PASSWORD}, "The new password must differ from the current one."),
    ],
)
def test_a_refused_password_change_says_why_and_changes_nothing(app, make_user, fields, message):
    make_user()
    client = log_in(app, "worker")
    before = row("worker").password_hash
    page = change(client, **fields)
    assert page.status_code == 400
    assert message in page.get_data(as_text=True)
    answer = change(client, **fields, headers=JSON)
    assert answer.status_code == 400
    assert answer.get_json()["error"] == "invalid_input" and message in answer.get_json()["message"]
    assert row("worker").password_hash == before
    assert client.get("/api/stats").status_code == 200


def test_a_wrong_current_password_counts_as_a_failed_login(app, make_user):
    make_user()
    client = log_in(app, "worker")
    change(client, current="not-my-password")
    assert row("worker").failed_logins == 1


def test_the_common_password_list_is_shipped_and_long_passwords_only():
    common = accounts.common_passwords()
    assert 1000 < len(common) < 5000
    assert all(len(password) >= accounts.MIN_PASSWORD_LENGTH for password in common)
    assert "password1234" in common and "qwertyuiop" in common


# Logging in: timing and what is told


def test_an_unknown_username_costs_a_password_hash_too(app, make_user, monkeypatch):
    checked = []
    real = signin.check_password_hash
    monkeypatch.setattr(signin, "check_password_hash", lambda *args: checked.append(args) or real(*args))
    _, response = password_login(app, "nobody-at-all", "some-password")
    assert response.status_code == 401 and len(checked) == 1


def test_a_device_that_logged_in_before_gets_past_a_strangers_lockout(app, make_user):
    make_user()
    own_device, _ = password_login(app, "worker")
    own_device.post("/logout")
    own_device.fetch_csrf_token()
    stranger = new_client(app, "203.0.113.9")
    for _ in range(6):
        assert stranger.post("/login", data={"username": "worker", "password": "guess-guess"}).status_code == 401
    assert row("worker").is_locked()
    refused = stranger.post("/login", data={"username": "worker", "password": PASSWORD})
    assert refused.status_code == 401 and "locked until" in refused.get_data(as_text=True)
    assert own_device.post("/login", data={"username": "worker", "password": PASSWORD}).status_code == 303
    assert not row("worker").is_locked()


# Admins cannot take away the last admin, nor themselves


def test_an_admin_cannot_disable_or_demote_themself(app, make_user):
    make_user("boss", role="admin", area=None)
    make_user("deputy", role="admin", area=None)
    boss = log_in(app, "boss")
    for path, form in (("/admin/users/boss/disable", {}), ("/admin/users/boss/role", {"role": "biller"})):
        page = boss.post(path, data=form)
        assert page.status_code == 409 and "You cannot disable or demote yourself" in page.get_data(as_text=True)
        answer = boss.post(path, data=form, headers=JSON)
        assert answer.status_code == 409 and answer.get_json()["error"] == "last_admin"
    assert (row("boss").role, row("boss").active) == ("admin", True)
    assert boss.post("/admin/users/deputy/disable").status_code == 303


def test_the_last_active_admin_stays(app, runner, make_user):
    make_user("boss", role="admin", area=None)
    for args in (["users", "disable", "boss"], ["users", "set-role", "boss", "biller"]):
        result = runner.invoke(args=args)
        assert result.exit_code == 1 and "boss is the last active admin" in result.output
    assert (row("boss").role, row("boss").active) == ("admin", True)
    make_user("deputy", role="admin", area=None)
    assert runner.invoke(args=["users", "set-role", "boss", "biller"]).exit_code == 0


def test_users_enable_lets_a_disabled_user_log_in_again(app, runner, make_user):
    make_user()
    assert runner.invoke(args=["users", "disable", "worker"]).exit_code == 0
    assert password_login(app, "worker")[1].status_code == 401
    result = runner.invoke(args=["users", "enable", "worker"])
    assert (result.exit_code, result.output) == (0, "worker is enabled.\n")
    assert password_login(app, "worker")[1].status_code == 303
    assert runner.invoke(args=["users", "enable", "nobody"]).exit_code == 1


# Two-factor login


def enrol(client) -> tuple[str, list[str]]:
    """Turn on two-factor login through the page; the secret and the recovery codes."""
    page = client.get("/account/2fa").get_data(as_text=True)
    assert "<svg" in page
    secret = SECRET_ON_PAGE.search(page).group(1)
    answer = client.post("/account/2fa", data={"code": pyotp.TOTP(secret).now()})
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    codes = RECOVERY_ON_PAGE.findall(answer.get_data(as_text=True))
    assert len(codes) == 10 and len(set(codes)) == 10
    return secret, codes


def next_code(secret: str) -> str:
    """The code of the next 30-second step (the current one was spent enrolling)."""
    return pyotp.TOTP(secret).at(time.time() + 30)


def test_enrolling_then_logging_in_asks_for_the_code_after_the_password(app, make_user):
    make_user()
    secret, _ = enrol(log_in(app, "worker"))
    stored = row("worker").totp_secret
    assert secret not in stored and twofactor.decrypt(stored) == secret
    client, response = password_login(app, "worker")
    assert response.status_code == 303 and response.headers["Location"] == "/login/code"
    # Not logged in yet.
    assert client.get("/api/stats").status_code == 401
    wrong = client.post("/login/code", data={"code": "000000"})
    assert wrong.status_code == 401 and "That code is not right" in wrong.get_data(as_text=True)
    assert row("worker").failed_logins == 1
    code = next_code(secret)
    assert client.post("/login/code", data={"code": code}).status_code == 303
    assert client.get("/api/stats").status_code == 200
    # A code is good for one login.
    again, _ = password_login(app, "worker")
    assert again.post("/login/code", data={"code": code}).status_code == 401


def test_a_recovery_code_logs_in_once(app, make_user):
    make_user()
    _, codes = enrol(log_in(app, "worker"))
    client, _ = password_login(app, "worker")
    assert client.post("/login/code", data={"code": codes[3].lower().replace("-", " ")}).status_code == 303
    assert client.get("/api/stats").status_code == 200
    assert db.session.scalar(select(db.func.count()).select_from(RecoveryCode)) == 9
    other, _ = password_login(app, "worker")
    assert other.post("/login/code", data={"code": codes[3]}).status_code == 401


def test_the_code_step_needs_the_password_first(app, make_user):
    client = new_client(app)
    response = client.post("/login/code", data={"code": "123456"})
    assert response.status_code == 303 and response.headers["Location"] == "/login"


def test_a_secret_under_another_key_reads_as_none(app):
    token = twofactor.encrypt("JBSWY3DPEHPK3PXP")
    app.config["BAGTRACK_2FA_KEY"] = "another key entirely, for this test"
    assert twofactor.decrypt(token) is None


def test_reset_2fa_lets_the_user_in_with_the_password_alone(app, runner, make_user):
    make_user()
    enrol(log_in(app, "worker"))
    result = runner.invoke(args=["users", "reset-2fa", "worker"])
    assert (result.exit_code, result.output) == (0, "Two-factor login of worker is off.\n")
    assert db.session.scalar(select(db.func.count()).select_from(RecoveryCode)) == 0
    _, response = password_login(app, "worker")
    assert response.status_code == 303 and response.headers["Location"] == "/"


def test_a_role_that_requires_two_factor_enrols_before_anything_else(make_app, make_user):
    app = make_app(BAGTRACK_2FA_REQUIRED_ROLES=frozenset({"admin"}))
    with app.app_context():
        make_user("boss", role="admin", area=None)
        make_user("floor")
        client, response = password_login(app, "boss")
        assert response.headers["Location"] == "/account/2fa"
        assert client.get("/bills").headers["Location"] == "/account/2fa"
        refused = client.get("/api/stats")
        assert refused.status_code == 403 and "two-factor" in refused.get_json()["message"]
        enrol(client)
        assert client.get("/bills").status_code == 200
        # Roles not listed are not asked.
        assert password_login(app, "floor")[1].headers["Location"] == "/"


def test_required_roles_must_exist():
    with pytest.raises(config.ConfigError, match="BAGTRACK_2FA_REQUIRED_ROLES"):
        config.load({"BAGTRACK_2FA_REQUIRED_ROLES": "admin,boss"})
    assert config.load({"BAGTRACK_2FA_REQUIRED_ROLES": " Admin , biller"})["BAGTRACK_2FA_REQUIRED_ROLES"] == {
        "admin",
        "biller",
    }
