"""Sessions (idle and absolute expiry, fixation), cookies, security headers, static file
caching, compression and the reverse proxy, as a browser or a proxy sees them."""

from __future__ import annotations

import gzip
import hashlib
import re
import time
from pathlib import Path

import brotli
import itsdangerous.timed
import pytest
from flask import Response, request, stream_with_context
from helpers import JSON, PASSWORD, BagtrackClient

from bagtrack import config as settings
from bagtrack import security

STATIC = Path(security.__file__).resolve().parent / "static"
CSS_VERSION = hashlib.sha256((STATIC / "bagtrack.css").read_bytes()).hexdigest()[:12]
EXPECTED_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'self'; object-src 'none'"
)


def session_cookie(response) -> str:
    cookies = [value for value in response.headers.getlist("Set-Cookie") if value.startswith("session=")]
    assert cookies, "no session cookie was set"
    return cookies[-1]


def log_in(app, user, **client_options) -> tuple[BagtrackClient, object]:
    app.test_client_class = BagtrackClient
    client = app.test_client(**client_options)
    client.fetch_csrf_token()
    response = client.post("/login", data={"username": user.username, "password": PASSWORD})
    assert response.status_code == 303
    client.fetch_csrf_token()
    return client, response


def test_every_answer_carries_the_security_headers(client):
    response = client.get("/login")
    assert response.headers["Content-Security-Policy"] == EXPECTED_CSP
    assert "unsafe-inline" not in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert "Strict-Transport-Security" not in response.headers
    error = client.get("/no-such-page")
    assert error.status_code == 404
    assert error.headers["Content-Security-Policy"] == EXPECTED_CSP


def test_https_answers_add_strict_transport_security(app):
    response = app.test_client().get("/login", base_url="https://localhost")
    assert response.headers["Strict-Transport-Security"].startswith("max-age=31536000")


def test_pages_with_user_data_are_never_stored(make_user, login_as):
    client = login_as(make_user())
    for path in ("/", "/scan", "/api/stats"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["Cache-Control"] == "no-store", path


def test_static_files_are_fingerprinted_and_cached_forever(client):
    page = client.get("/login").get_data(as_text=True)
    assert f'href="/static/bagtrack.css?v={CSS_VERSION}"' in page
    fingerprinted = client.get(f"/static/bagtrack.css?v={CSS_VERSION}")
    assert fingerprinted.status_code == 200
    assert fingerprinted.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    for url in ("/static/bagtrack.css", "/static/bagtrack.css?v=0123456789ab"):
        response = client.get(url)
        assert response.status_code == 200
        assert "immutable" not in response.headers.get("Cache-Control", ""), url


def test_scripts_are_fingerprinted_too(make_user, login_as):
    version = hashlib.sha256((STATIC / "scan.js").read_bytes()).hexdigest()[:12]
    page = login_as(make_user()).get("/scan").get_data(as_text=True)
    assert f'src="/static/scan.js?v={version}"' in page


def test_session_cookie_is_httponly_and_lax_and_not_secure_on_plain_http(app, make_user):
    _, response = log_in(app, make_user())
    cookie = session_cookie(response)
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie


def test_session_cookie_is_secure_when_configured(make_app, make_user):
    app = make_app(SESSION_COOKIE_SECURE=True)
    make_user()
    _, response = log_in(app, make_user("second"))
    assert "Secure" in session_cookie(response)


def test_session_cookie_is_secure_on_https(app, make_user):
    app.test_client_class = BagtrackClient
    client = app.test_client()
    page = client.get("/login", base_url="https://localhost")
    token = re.search(r'name="csrf-token" content="([^"]+)"', page.get_data(as_text=True)).group(1)
    response = client.post(
        "/login",
        data={"username": make_user().username, "password": PASSWORD},
        base_url="https://localhost",
        headers={"X-CSRFToken": token, "Referer": "https://localhost/login"},
    )
    assert response.status_code == 303
    assert "Secure" in session_cookie(response)


def test_login_starts_a_new_session(app, make_user):
    user = make_user()
    app.test_client_class = BagtrackClient
    client = app.test_client()
    client.fetch_csrf_token()
    with client.session_transaction() as session:
        session["planted"] = "by someone else"
    before = client.get_cookie("session").value
    response = client.post("/login", data={"username": user.username, "password": PASSWORD})
    assert response.status_code == 303
    assert client.get_cookie("session").value != before
    with client.session_transaction() as session:
        assert "planted" not in session
        assert session[security.LOGIN_AT] == pytest.approx(time.time(), abs=5)


def shift_clocks(client, *, login_ago: float, seen_ago: float) -> None:
    now = time.time()
    with client.session_transaction() as session:
        session[security.LOGIN_AT] = int(now - login_ago)
        session[security.SEEN_AT] = int(now - seen_ago)


def test_an_idle_session_expires_with_a_clear_message(make_user, login_as):
    client = login_as(make_user())
    shift_clocks(client, login_ago=3600, seen_ago=31 * 60)
    response = client.get("/scan")
    assert response.status_code == 303
    assert response.headers["Location"].startswith("/login")
    page = client.get(response.headers["Location"])
    assert "Your session expired — log in again." in page.get_data(as_text=True)
    assert client.get("/api/stats").status_code == 401


def test_an_idle_session_answers_json_clients_with_401(make_user, login_as):
    client = login_as(make_user())
    shift_clocks(client, login_ago=3600, seen_ago=31 * 60)
    response = client.get("/api/stats")
    assert response.status_code == 401
    assert response.get_json() == {
        "ok": False,
        "error": "session_expired",
        "message": "Your session expired — log in again.",
    }


def test_a_session_ends_after_a_shift_even_when_busy(make_user, login_as, make_parent):
    parent = make_parent()
    client = login_as(make_user())
    shift_clocks(client, login_ago=12 * 3600 + 1, seen_ago=10)
    response = client.post("/scan/child", data={"parent": parent.qr, "qr": "CHILD0001"}, headers=JSON)
    assert response.status_code == 401
    assert response.get_json()["error"] == "session_expired"


def test_a_scan_posted_after_the_session_expired_logs_in_again_to_the_same_parent(make_user, login_as, make_parent):
    parent = make_parent()
    client = login_as(make_user())
    shift_clocks(client, login_ago=3600, seen_ago=31 * 60)
    response = client.post("/scan/child", data={"parent": f" {parent.qr.lower()}\r", "qr": "CHILD0001"})
    assert response.status_code == 303
    assert response.headers["Location"] == f"/login?next=/scan?parent%3D{parent.qr}"
    login_page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert f'value="/scan?parent={parent.qr}"' in login_page


def test_a_recent_session_goes_on_and_notes_its_use_once_a_minute(make_user, login_as):
    client = login_as(make_user())
    shift_clocks(client, login_ago=3600, seen_ago=29 * 60)
    renewed = client.get("/api/stats")
    assert renewed.status_code == 200
    assert "Set-Cookie" in renewed.headers
    with client.session_transaction() as session:
        assert session[security.SEEN_AT] == pytest.approx(time.time(), abs=5)
    again = client.get("/api/stats")
    assert again.status_code == 200
    assert "Set-Cookie" not in again.headers


def test_csrf_tokens_do_not_expire_during_a_shift(make_user, login_as, make_parent, monkeypatch):
    assert settings.load({})["WTF_CSRF_TIME_LIMIT"] is None
    parent = make_parent()
    client = login_as(make_user())

    signed_at = itsdangerous.timed.TimestampSigner.get_timestamp

    def twenty_hours_ago_for_csrf(signer):
        # Only the CSRF token is signed in the past; the session cookie stays current.
        shift = 20 * 3600 if signer.salt == b"wtf-csrf-token" else 0
        return signed_at(signer) - shift

    monkeypatch.setattr(itsdangerous.timed.TimestampSigner, "get_timestamp", twenty_hours_ago_for_csrf)
    client.fetch_csrf_token()
    monkeypatch.undo()
    response = client.post("/scan/parent", data={"qr": parent.qr}, headers=JSON)
    assert response.status_code == 200, response.get_json()


@pytest.mark.parametrize(("encoding", "decode"), [("br", brotli.decompress), ("gzip", gzip.decompress)])
def test_pages_are_compressed(client, encoding, decode):
    plain = client.get("/login").get_data()
    assert len(plain) > 500
    response = client.get("/login", headers={"Accept-Encoding": encoding})
    assert response.headers["Content-Encoding"] == encoding
    assert decode(response.get_data()) == plain


def test_small_answers_and_streams_are_left_alone(make_app):
    app = make_app()

    def stream():
        return Response(stream_with_context(f"line {number}\n" * 100 for number in range(3)), mimetype="text/plain")

    app.add_url_rule("/test-stream", "test_stream", stream)
    client = app.test_client()
    assert "Content-Encoding" not in client.get("/health", headers={"Accept-Encoding": "br, gzip"}).headers
    streamed = client.get("/test-stream", headers={"Accept-Encoding": "br, gzip"})
    assert "Content-Encoding" not in streamed.headers
    assert streamed.is_streamed


def remote_address_app(make_app, **config):
    app = make_app(**config)

    def address():
        return {"address": request.remote_addr, "https": request.is_secure}

    app.add_url_rule("/test-address", "test_address", address)
    return app


def test_proxy_fix_takes_the_client_address_from_the_proxy(make_app):
    app = remote_address_app(make_app, BAGTRACK_PROXY_FIX={"x_for": 1, "x_proto": 1})
    headers = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    response = app.test_client().get("/test-address", headers=headers)
    assert response.get_json() == {"address": "203.0.113.7", "https": True}
    assert "Strict-Transport-Security" in response.headers


def test_without_proxy_fix_forwarded_headers_are_ignored(make_app):
    app = remote_address_app(make_app, BAGTRACK_PROXY_FIX={})
    response = app.test_client().get("/test-address", headers={"X-Forwarded-For": "203.0.113.7"})
    assert response.get_json() == {"address": "127.0.0.1", "https": False}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", {}),
        ("0", {}),
        ("1", {"x_for": 1, "x_proto": 1}),
        ("x_for=1,x_proto=1,x_host=1", {"x_for": 1, "x_proto": 1, "x_host": 1}),
        ("x_for=2, x_prefix=0", {"x_for": 2}),
    ],
)
def test_proxy_fix_setting(raw, expected):
    assert settings.load({"BAGTRACK_PROXY_FIX": raw})["BAGTRACK_PROXY_FIX"] == expected


@pytest.mark.parametrize("raw", ["x_for", "x_real=1", "x_for=yes"])
def test_a_bad_proxy_fix_setting_is_refused(raw):
    with pytest.raises(settings.ConfigError, match="BAGTRACK_PROXY_FIX"):
        settings.load({"BAGTRACK_PROXY_FIX": raw})


def test_a_bad_rate_setting_is_refused():
    with pytest.raises(settings.ConfigError, match="BAGTRACK_LIMIT_SCAN"):
        settings.load({"BAGTRACK_LIMIT_SCAN": "lots"})


@pytest.mark.parametrize("secret_key", ["x", "ci-only-not-secret", "a" * 31])
def test_production_refuses_a_secret_key_shorter_than_32_characters(secret_key):
    production = {"DATABASE_URL": "postgresql://db.example/bagtrack", "SECRET_KEY": secret_key}

    with pytest.raises(settings.ConfigError, match="SECRET_KEY must be at least 32 characters"):
        settings.load(production)
    assert settings.load({**production, "SECRET_KEY": "a" * 32})["SECRET_KEY"] == "a" * 32
    # The embedded default (no DATABASE_URL) is a developer's machine.
    assert settings.load({"SECRET_KEY": secret_key})["SECRET_KEY"] == secret_key
