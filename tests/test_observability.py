"""Request ids and the JSON log lines an operator reads."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest
from flask import g
from flask_login import login_required
from helpers import PASSWORD, BagtrackClient

from bagtrack.observability import JsonFormatter


@pytest.fixture
def log_lines():
    """What the app writes to stderr during the test, as parsed JSON objects."""
    handler = next(h for h in logging.getLogger().handlers if isinstance(h.formatter, JsonFormatter))
    stream = io.StringIO()
    previous = handler.setStream(stream)

    def read() -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    yield read
    handler.setStream(previous)


def request_lines(lines: list[dict]) -> list[dict]:
    return [line for line in lines if line["logger"] == "bagtrack.request"]


def test_request_id_is_generated_and_echoed(client):
    first = client.get("/health").headers["X-Request-ID"]
    second = client.get("/health").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert first != second


def test_sane_incoming_request_id_is_kept(client):
    response = client.get("/health", headers={"X-Request-ID": "lb-7f3a.42_x"})
    assert response.headers["X-Request-ID"] == "lb-7f3a.42_x"


@pytest.mark.parametrize("offered", ["a" * 65, "has space", "semi;colon", "<script>", "ünïcode"])
def test_insane_incoming_request_id_is_replaced(client, offered):
    response = client.get("/health", headers={"X-Request-ID": offered})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


def test_request_id_is_in_flask_g_for_the_audit_log(make_app):
    app = make_app()

    @app.get("/test/request-id")
    def show_request_id():
        return {"request_id": g.request_id}

    response = app.test_client().get("/test/request-id", headers={"X-Request-ID": "abc-123"})
    assert response.get_json() == {"request_id": "abc-123"}
    assert response.headers["X-Request-ID"] == "abc-123"


def test_one_json_line_per_request(client, log_lines):
    response = client.get("/health", headers={"X-Request-ID": "trace-1"})
    [line] = [line for line in request_lines(log_lines()) if line.get("request_id") == "trace-1"]
    assert line["level"] == "INFO"
    assert line["method"] == "GET" and line["path"] == "/health"
    assert line["status"] == response.status_code == 200
    assert line["endpoint"] == "ops.health"
    assert isinstance(line["duration_ms"], float)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["time"])
    assert line["message"] == "GET /health 200"
    assert "user" not in line


def test_log_line_names_the_logged_in_user(make_app, make_user, log_lines):
    app = make_app()

    @app.get("/test/whoami")
    @login_required
    def whoami():
        return "ok"

    user = make_user("logger", role="admin", area=None)
    app.test_client_class = BagtrackClient
    client = app.test_client()
    client.fetch_csrf_token()
    assert client.post("/login", data={"username": "logger", "password": PASSWORD}).status_code == 303
    client.get("/test/whoami", headers={"X-Request-ID": "whoami-1"})
    [line] = [line for line in request_lines(log_lines()) if line.get("request_id") == "whoami-1"]
    assert line["user"] == user.username


def test_slow_request_is_a_warning_with_where_its_time_went(make_app, log_lines):
    app = make_app(BAGTRACK_SLOW_REQUEST_MS=0.001)
    app.test_client().get("/ready", headers={"X-Request-ID": "slow-1"})
    [line] = [
        line
        for line in request_lines(log_lines())
        if line.get("request_id") == "slow-1" and not line["message"].startswith("slow garbage collection")
    ]
    assert line["level"] == "WARNING"
    assert line["message"].startswith("slow request GET /ready 200")
    phases = line["phases"]
    assert phases["queries"] >= 1 and phases["query_ms"] > 0
    assert phases["gc_ms"] >= 0 and phases["gc_collections"] >= 0
    assert phases["query_ms"] + phases["gc_ms"] + phases["rest_ms"] == pytest.approx(line["duration_ms"], abs=0.01)
    # Without gevent there are no other greenlets to wait for, and no run clock.
    assert "ran_ms" not in phases


def test_a_collection_as_long_as_a_slow_request_is_logged_by_the_next_request(make_app, log_lines):
    """A collection stalls every greenlet of a worker: one as long as a slow request is a warning of its own."""
    import gc

    app = make_app(BAGTRACK_SLOW_REQUEST_MS=0.001)
    gc.collect()
    app.test_client().get("/health", headers={"X-Request-ID": "after-gc-1"})
    lines = [line for line in request_lines(log_lines()) if line["message"].startswith("slow garbage collection")]
    assert lines, request_lines(log_lines())
    assert lines[0]["level"] == "WARNING" and lines[0]["duration_ms"] > 0
    assert "(generation 2)" in lines[-1]["message"]
    make_app()  # the default threshold again for the tests that follow


def test_fast_request_stays_quiet_at_warning_level(make_app, log_lines):
    app = make_app(BAGTRACK_LOG_LEVEL="WARNING")
    app.test_client().get("/health", headers={"X-Request-ID": "quiet-1"})
    assert not [line for line in log_lines() if line.get("request_id") == "quiet-1"]
    make_app()  # back to the default level for the tests that follow


def test_slow_query_is_a_warning_with_its_statement(make_app, log_lines):
    app = make_app(BAGTRACK_SLOW_QUERY_MS=0.001)
    app.test_client().get("/ready", headers={"X-Request-ID": "query-1"})
    queries = [line for line in log_lines() if line["logger"] == "bagtrack.sql" and line["request_id"] == "query-1"]
    assert queries, log_lines()
    assert queries[-1]["level"] == "WARNING"
    assert queries[-1]["statement"] == "SELECT 1"
    assert queries[-1]["message"].startswith("slow query")


def test_errors_are_logged_with_their_traceback(make_app, log_lines):
    app = make_app(PROPAGATE_EXCEPTIONS=False)

    @app.get("/test/boom")
    def boom():
        raise RuntimeError("kaboom")

    response = app.test_client().get("/test/boom", headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500
    assert response.headers["X-Request-ID"] == "boom-1"
    lines = [line for line in log_lines() if line.get("request_id") == "boom-1"]
    [error] = [line for line in lines if line["level"] == "ERROR"]
    assert "RuntimeError: kaboom" in error["exception"]
    [request_line] = request_lines(lines)
    assert request_line["status"] == 500
