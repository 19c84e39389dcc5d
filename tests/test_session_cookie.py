"""The signed session cookie: a cookie a worker has verified once is not verified again, and nothing else changes.

The same cookie is still refused once past the session's lifetime, a cookie
changed by one character is still refused, and a session changed by one
request never leaks into the next request that sends the same cookie.
"""

from __future__ import annotations

import time

from flask import request
from helpers import JSON, log_in

from bagtrack import security


def session_cookie(app, client) -> str:
    cookie = client.get_cookie(app.config["SESSION_COOKIE_NAME"])
    assert cookie is not None
    return cookie.value


def opened(app, value: str):
    """The session ``app`` opens for a request that carries ``value`` as its session cookie."""
    name = app.config["SESSION_COOKIE_NAME"]
    with app.test_request_context("/", headers={"Cookie": f"{name}={value}"}):
        return app.session_interface.open_session(app, request)


def test_a_verified_cookie_is_remembered_and_opens_the_same_session(app, make_user):
    client = log_in(app, make_user())
    value = session_cookie(app, client)
    first = opened(app, value)
    assert first.get("_user_id")
    assert value in app.extensions["bagtrack.session_signing"]["verified"]
    second = opened(app, value)
    assert dict(second) == dict(first)
    assert client.get("/api/stats", headers=JSON).status_code == 200


def test_a_change_to_a_remembered_session_does_not_reach_the_next_request(app, make_user):
    client = log_in(app, make_user())
    value = session_cookie(app, client)
    first = opened(app, value)
    first["_user_id"] = "someone else"
    first["added"] = "by one request"
    again = opened(app, value)
    assert again["_user_id"] != "someone else"
    assert "added" not in again


def test_a_remembered_cookie_is_refused_after_the_session_lifetime(app, make_user, monkeypatch):
    client = log_in(app, make_user())
    value = session_cookie(app, client)
    assert opened(app, value).get("_user_id")
    lifetime = app.permanent_session_lifetime.total_seconds()
    later = time.time() + lifetime + 5
    monkeypatch.setattr(security.time, "time", lambda: later)
    assert dict(opened(app, value)) == {}


def test_a_cookie_changed_by_one_character_is_refused_even_after_the_genuine_one(app, make_user):
    client = log_in(app, make_user())
    value = session_cookie(app, client)
    assert opened(app, value).get("_user_id")
    # The payload's first character, changed: the signature no longer matches.
    forged = ("A" if value[1] != "A" else "B").join((value[:1], value[2:]))
    assert forged != value
    assert dict(opened(app, forged)) == {}
    client.set_cookie(app.config["SESSION_COOKIE_NAME"], forged)
    assert client.get("/api/stats", headers=JSON).status_code == 401


def test_a_new_secret_forgets_every_remembered_cookie(app, make_user):
    client = log_in(app, make_user())
    value = session_cookie(app, client)
    assert opened(app, value).get("_user_id")
    app.secret_key = app.config["SECRET_KEY"] = "another-secret-another-secret-another-secret"
    assert dict(opened(app, value)) == {}
