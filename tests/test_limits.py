"""Rate limits (login by address and by username, scans by user, a default, exemptions) and
request size limits, as a client meets them: 429 with Retry-After, 413, clear pages and JSON."""

from __future__ import annotations

import io
import uuid

import helpers
import pytest
from flask import request
from helpers import JSON, PASSWORD, BagtrackClient, log_in
from prometheus_client import REGISTRY

from bagtrack.extensions import limiter
from bagtrack.limits import accepts_upload

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture(autouse=True)
def limiter_storage_alive(monkeypatch):
    # The limiter is one object for the process; an outage test leaves it counting in
    # memory, and every test here starts with the app's own storage.
    monkeypatch.setattr(limiter, "_storage_dead", False)


@pytest.fixture
def limited_app(make_app):
    """An app with rate limits on, counting under a prefix of its own."""

    def build(**overrides):
        prefix = f"bagtrack-test-{uuid.uuid4().hex[:8]}:"
        return make_app(RATELIMIT_ENABLED=True, CACHE_KEY_PREFIX=prefix, **overrides)

    return build


def new_client(app, address: str = "10.0.0.1") -> BagtrackClient:
    return helpers.new_client(app, address)


def logged_in(app, user, address: str = "10.0.0.1") -> BagtrackClient:
    return log_in(app, user, address)


def attempt(client, username: str, password: str = "wrong-password", headers=None):
    return client.post("/login", data={"username": username, "password": password}, headers=headers or {})


def test_login_from_one_address_is_limited(limited_app, make_user):
    app = limited_app(BAGTRACK_LIMIT_LOGIN_IP="30/minute")
    guesser = new_client(app, "10.0.1.1")
    for number in range(30):
        response = attempt(guesser, f"nobody{number}")
        assert response.status_code == 401, (number, response.status_code)
    refused = attempt(guesser, "nobody-else")
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0
    page = refused.get_data(as_text=True)
    assert "Too many login attempts from this address." in page
    assert "<html" in page
    other_address = new_client(app, "10.0.1.2")
    assert attempt(other_address, "nobody").status_code == 401


def test_the_account_lockout_comes_before_the_address_limit(limited_app, make_user):
    app = limited_app()
    user = make_user("target")
    guesser = new_client(app, "10.0.2.1")
    for _ in range(5):
        assert attempt(guesser, user.username).status_code == 401
    locked = attempt(guesser, user.username, PASSWORD)
    assert locked.status_code == 401
    assert "locked until" in locked.get_data(as_text=True)
    for number in range(14):
        assert attempt(guesser, f"someone{number}").status_code == 401


def test_a_shift_of_handhelds_behind_one_address_logs_in_while_one_username_stays_stopped(limited_app, make_user):
    app = limited_app()
    users = [make_user(f"handheld{number:03d}") for number in range(100)]
    target = make_user("target")
    floor = "10.0.10.1"
    guesser = new_client(app, floor)
    for _ in range(5):
        assert attempt(guesser, target.username).status_code == 401
    for user in users:
        response = attempt(new_client(app, floor), user.username, PASSWORD)
        assert response.status_code == 303, (user.username, response.status_code)
    # The lockout holds the guessed account (even its right password logs nobody in)...
    assert attempt(new_client(app, floor), target.username, PASSWORD).status_code == 401
    # ...and the per-username limit stops the guessing itself.
    for _ in range(4):
        attempt(guesser, target.username)
    refused = attempt(guesser, target.username)
    assert refused.status_code == 429
    assert "for this username" in refused.get_data(as_text=True)


def test_a_strangers_guessing_leaves_the_users_own_device_its_allowance(limited_app, make_user):
    app = limited_app()
    make_user("boss", role="admin", area=None)
    own_device = new_client(app, "10.0.11.1")
    assert attempt(own_device, "boss", PASSWORD).status_code == 303
    own_device.post("/logout")
    own_device.fetch_csrf_token()
    stranger = new_client(app, "198.51.100.20")
    statuses = [attempt(stranger, "boss").status_code for _ in range(12)]
    assert 429 in statuses and set(statuses[: statuses.index(429)]) == {401}
    # The account is locked and the username's allowance spent, for strangers only.
    assert attempt(stranger, "boss", PASSWORD).status_code == 429
    assert attempt(own_device, "boss", PASSWORD).status_code == 303


def test_login_for_one_username_is_limited_across_addresses(limited_app, make_user):
    app = limited_app(BAGTRACK_LOCKOUT_ATTEMPTS=100)
    make_user("popular")
    for number in range(10):
        response = attempt(new_client(app, f"10.0.3.{number + 1}"), "popular")
        assert response.status_code == 401
    refused = attempt(new_client(app, "10.0.3.100"), " POPULAR ", headers=JSON)
    assert refused.status_code == 429
    body = refused.get_json()
    assert body["ok"] is False and body["error"] == "rate_limited"
    assert "for this username" in body["message"]
    assert int(refused.headers["Retry-After"]) > 0
    assert attempt(new_client(app, "10.0.3.101"), "someone-else").status_code == 401


def test_scans_are_limited_per_user_not_per_address(limited_app, make_user, make_parent):
    app = limited_app(BAGTRACK_LIMIT_SCAN="4/minute")
    parent = make_parent()
    first = logged_in(app, make_user("first"), "10.0.4.1")
    second = logged_in(app, make_user("second"), "10.0.4.1")
    for number in range(4):
        response = first.post("/scan/child", data={"parent": parent.qr, "qr": f"CHILD{number:04d}"}, headers=JSON)
        assert response.status_code == 201, response.get_json()
    # The parent, child and undo routes draw on one allowance.
    refused = first.post("/scan/parent", data={"qr": parent.qr}, headers=JSON)
    assert refused.status_code == 429
    assert refused.get_json() == {
        "ok": False,
        "error": "rate_limited",
        "message": refused.get_json()["message"],
    }
    assert refused.get_json()["message"].startswith("Too many scans in a short time.")
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    page = first.post("/scan/child", data={"parent": parent.qr, "qr": "CHILD9999"})
    assert page.status_code == 429
    assert "Too many scans in a short time." in page.get_data(as_text=True)
    assert page.headers["Retry-After"]
    assert second.post("/scan/parent", data={"qr": parent.qr}, headers=JSON).status_code == 200


def test_loading_bills_has_a_limit_of_its_own(limited_app, make_user, make_parent, make_bill):
    app = limited_app(BAGTRACK_LIMIT_BILL_LOAD="2/minute")
    make_bill("B-7", capacity=10)
    parents = [make_parent(children=1) for _ in range(3)]
    office = logged_in(app, make_user("office", role="biller", area=None), "10.0.8.1")
    for parent in parents[:2]:
        loaded = office.post("/bills/B-7/parents", data={"qr": parent.qr, "confirm": "1"}, headers=JSON)
        assert loaded.status_code == 200
    refused = office.post("/bills/B-7/parents", data={"qr": parents[2].qr, "confirm": "1"}, headers=JSON)
    assert refused.status_code == 429
    assert refused.get_json()["message"].startswith("Too many parents loaded in a short time.")
    assert office.get("/bills/B-7", headers=JSON).status_code != 429


def test_refusals_are_counted_by_scope(limited_app):
    app = limited_app(BAGTRACK_LIMIT_LOGIN_IP="1/minute")
    before = REGISTRY.get_sample_value("bagtrack_rate_limited_total", {"scope": "login_ip"}) or 0
    guesser = new_client(app, "10.0.9.1")
    attempt(guesser, "nobody")
    assert attempt(guesser, "nobody").status_code == 429
    assert REGISTRY.get_sample_value("bagtrack_rate_limited_total", {"scope": "login_ip"}) == before + 1


def test_default_limit_spares_health_and_static(limited_app, make_user):
    app = limited_app(BAGTRACK_LIMIT_DEFAULT="3/minute")
    client = new_client(app, "10.0.5.1")  # one GET /login counted
    for _ in range(6):
        assert client.get("/health").status_code == 200
        assert client.get("/static/bagtrack.css").status_code == 200
    assert client.get("/login").status_code == 200
    assert client.get("/login").status_code == 200
    assert client.get("/login").status_code == 429


def test_scans_keep_working_and_stay_limited_when_redis_is_down(limited_app, make_user, make_parent):
    app = limited_app(
        REDIS_URL=UNREACHABLE_REDIS,
        CACHE_TYPE="RedisCache",
        CACHE_REDIS_URL=UNREACHABLE_REDIS,
        RATELIMIT_STORAGE_URI=f"bagtrack+{UNREACHABLE_REDIS}",
        BAGTRACK_LIMIT_SCAN="3/minute",
    )
    parent = make_parent()
    scanner = logged_in(app, make_user(), "10.0.6.1")
    for number in range(3):
        response = scanner.post("/scan/child", data={"parent": parent.qr, "qr": f"CHILD{number:04d}"}, headers=JSON)
        assert response.status_code == 201, response.get_json()
    assert scanner.post("/scan/child", data={"parent": parent.qr, "qr": "CHILD0100"}, headers=JSON).status_code == 429


def test_limits_can_be_switched_off(make_app, make_user):
    app = make_app(RATELIMIT_ENABLED=False, BAGTRACK_LIMIT_LOGIN_IP="1/minute")
    client = new_client(app, "10.0.7.1")
    for _ in range(3):
        assert attempt(client, "nobody").status_code == 401


def test_a_body_over_one_mebibyte_is_refused(app, make_user, login_as, make_parent):
    parent = make_parent()
    client = login_as(make_user())
    big = "X" * (1024 * 1024 + 1)
    answer = client.post("/scan/child", data={"parent": parent.qr, "qr": big}, headers=JSON)
    assert answer.status_code == 413
    assert answer.get_json()["error"] == "too_large"
    assert "1 MiB" in answer.get_json()["message"]
    page = client.post("/scan/child", data={"parent": parent.qr, "qr": big})
    assert page.status_code == 413
    assert "The request is too large" in page.get_data(as_text=True)


def test_upload_routes_accept_larger_bodies(make_app):
    app = make_app(WTF_CSRF_ENABLED=False, BAGTRACK_MAX_UPLOAD_BYTES=4 * 1024 * 1024)

    @accepts_upload
    def upload():
        return {"bytes": len(request.files["file"].read())}

    def plain():
        return {"bytes": len(request.get_data())}

    app.add_url_rule("/test-upload", "test_upload", upload, methods=["POST"])
    app.add_url_rule("/test-plain", "test_plain", plain, methods=["POST"])
    client = app.test_client()
    payload = b"x" * (2 * 1024 * 1024)
    accepted = client.post("/test-upload", data={"file": (io.BytesIO(payload), "bags.csv")}, headers=JSON)
    assert accepted.status_code == 200
    assert accepted.get_json() == {"bytes": len(payload)}
    assert client.post("/test-plain", data=payload, headers=JSON).status_code == 413
    too_big = b"x" * (5 * 1024 * 1024)
    refused = client.post("/test-upload", data={"file": (io.BytesIO(too_big), "bags.csv")}, headers=JSON)
    assert refused.status_code == 413
    assert "4 MiB" in refused.get_json()["message"]
