"""Logging in and out through a real gunicorn with two gevent workers on PostgreSQL."""

from __future__ import annotations

import pytest
import requests
from conftest import CSRF_META, PASSWORD
from servers import Gunicorn

# Each request on a new connection, so both workers answer some of them.
NEW_CONNECTION = {"Connection": "close", "Accept": "application/json"}


def browser_login(base: str, username: str, password: str = PASSWORD) -> requests.Session:
    """A browser-like session logged in through the form, its CSRF token sent with every later post."""
    browser = requests.Session()
    token = CSRF_META.search(browser.get(f"{base}/login", timeout=5).text).group(1)
    response = browser.post(
        f"{base}/login",
        data={"username": username, "password": password, "csrf_token": token},
        allow_redirects=False,
        timeout=5,
    )
    assert response.status_code == 303, response.text
    browser.headers["X-CSRFToken"] = CSRF_META.search(browser.get(f"{base}/", timeout=5).text).group(1)
    return browser


def statuses(browser: requests.Session, url: str, count: int) -> list[int]:
    answers = (browser.get(url, headers=NEW_CONNECTION, timeout=5, allow_redirects=False) for _ in range(count))
    return [answer.status_code for answer in answers]


@pytest.fixture
def two_workers(database_url, tmp_path):
    environment = {
        "DATABASE_URL": database_url,
        "REDIS_URL": "",
        "SECRET_KEY": "login-serving-test-secret",
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
    old = browser_login(base, "floor")
    assert set(statuses(old, f"{base}/api/stats", 20)) == {200}
    old_cookie = old.cookies.get("session")

    response = old.post(f"{base}/account/logout-everywhere", allow_redirects=False, timeout=5)
    assert response.status_code == 303
    new = browser_login(base, "floor")
    assert set(statuses(new, f"{base}/api/stats", 32)) == {200}

    stale = requests.Session()
    stale.cookies.set("session", old_cookie)
    assert set(statuses(stale, f"{base}/api/stats", 10)) == {401}
