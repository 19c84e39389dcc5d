"""Logging in and out through a real gunicorn with two gevent workers on PostgreSQL."""

from __future__ import annotations

import re
import time

import pyotp
import pytest
import requests
from helpers import CSRF_META, PASSWORD
from servers import Gunicorn, flask_command, http_login, on_redis

# Each request on a new connection, so both workers answer some of them.
NEW_CONNECTION = {"Connection": "close", "Accept": "application/json"}


def statuses(browser: requests.Session, url: str, count: int) -> list[int]:
    answers = (browser.get(url, headers=NEW_CONNECTION, timeout=5, allow_redirects=False) for _ in range(count))
    return [answer.status_code for answer in answers]


@pytest.fixture
def two_workers(database_url, tmp_path):
    environment = {
        "DATABASE_URL": database_url,
        "REDIS_URL": "",
        "SECRET_KEY": "login-serving-test-secret-login-serving",
        # Long enough that a snapshot taken before the sessions ended is still held when the new cookie arrives.
        "BAGTRACK_USER_CACHE_S": "30",
    }
    server = Gunicorn(tmp_path / "gunicorn.log", environment, "-w", "2")
    try:
        yield server
    finally:
        server.kill()


@pytest.mark.postgres
@pytest.mark.slow
def test_a_new_login_after_its_sessions_ended_is_served_by_every_worker(two_workers, make_user):
    make_user("floor")
    base = two_workers.base
    old = http_login(base, "floor", PASSWORD, json=False)
    assert set(statuses(old, f"{base}/api/stats", 20)) == {200}
    old_cookie = old.cookies.get("session")

    response = old.post(f"{base}/account/logout-everywhere", allow_redirects=False, timeout=5)
    assert response.status_code == 303
    new = http_login(base, "floor", PASSWORD, json=False)
    assert set(statuses(new, f"{base}/api/stats", 32)) == {200}

    stale = requests.Session()
    stale.cookies.set("session", old_cookie)
    assert set(statuses(stale, f"{base}/api/stats", 10)) == {401}


@pytest.mark.postgres
@pytest.mark.slow
def test_logging_out_one_device_leaves_the_other_served_by_every_worker(two_workers, make_user):
    make_user("floor")
    base = two_workers.base
    handheld, office = http_login(base, "floor", PASSWORD, json=False), http_login(base, "floor", PASSWORD, json=False)
    assert set(statuses(handheld, f"{base}/api/stats", 10)) == {200}
    assert handheld.post(f"{base}/logout", allow_redirects=False, timeout=5).status_code == 303
    assert set(statuses(office, f"{base}/api/stats", 20)) == {200}


@pytest.mark.postgres
@pytest.mark.slow
def test_a_two_factor_login_through_the_server(two_workers, make_user):
    make_user("boss", role="admin", area=None)
    base = two_workers.base
    browser = http_login(base, "boss", PASSWORD, json=False)
    page = browser.get(f"{base}/account/2fa", timeout=5).text
    secret = re.search(r'<code class="totp-secret">([A-Z2-7]+)</code>', page).group(1)
    # The enrolment secret waits in this session's cookie: whichever worker answers knows it.
    enrolled = browser.post(f"{base}/account/2fa", data={"code": pyotp.TOTP(secret).now()}, timeout=5)
    assert enrolled.status_code == 200 and "recovery-code" in enrolled.text

    second = requests.Session()
    token = CSRF_META.search(second.get(f"{base}/login", timeout=5).text).group(1)
    answer = second.post(
        f"{base}/login",
        data={"username": "boss", "password": PASSWORD, "csrf_token": token},
        allow_redirects=False,
        timeout=5,
    )
    assert answer.status_code == 303 and answer.headers["Location"] == "/login/code"
    assert set(statuses(second, f"{base}/api/stats", 4)) == {401}
    token = CSRF_META.search(second.get(f"{base}/login/code", timeout=5).text).group(1)
    code = pyotp.TOTP(secret).at(time.time() + 30)
    answer = second.post(
        f"{base}/login/code", data={"code": code, "csrf_token": token}, allow_redirects=False, timeout=5
    )
    assert answer.status_code == 303 and answer.headers["Location"] == "/"
    assert set(statuses(second, f"{base}/api/stats", 10)) == {200}


# The snapshot's one statement: the user's row with its live login sessions.
USER_READ = "FROM app_user LEFT OUTER JOIN login_session"


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_workers_keep_a_user_until_a_change_is_told_and_see_it_at_once(database_url, make_user, tmp_path):
    """With Redis, an unchanged user is not read again per request; a disable from the command line reaches both
    workers within ``BAGTRACK_USER_CACHE_S``, though their snapshots could live a minute."""
    make_user("floor")
    environment = on_redis(
        database_url,
        "login-serving-test-secret-login-serving",
        BAGTRACK_USER_CACHE_S="0.2",
        # Every statement is logged, so the log shows each read of the user.
        BAGTRACK_SLOW_QUERY_MS="0.001",
    )
    server = Gunicorn(tmp_path / "gunicorn.log", environment, "-w", "2")
    try:
        browser = http_login(server.base, "floor", PASSWORD)
        reads = server.log().count(USER_READ)
        for _ in range(3):
            assert set(statuses(browser, f"{server.base}/api/stats", 10)) == {200}
            time.sleep(0.5)
        # Each worker read the user once, though every batch came after the snapshot's short life.
        assert server.log().count(USER_READ) - reads <= 2

        # The command tells the change where the server looks: the same Redis and key prefix.
        flask_command(database_url, "users", "disable", "floor", environment=environment)
        time.sleep(0.5)
        assert set(statuses(browser, f"{server.base}/api/stats", 10)) == {401}
    finally:
        server.kill()
