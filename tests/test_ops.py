"""Liveness, readiness, metrics and the 503 a client gets when the database cannot serve it."""

from __future__ import annotations

import time

import pytest
from helpers import JSON, PASSWORD, BagtrackClient, log_in
from sqlalchemy import event, text

from bagtrack import observability
from bagtrack.config import engine_options
from bagtrack.extensions import db

UNREACHABLE_DATABASE = "postgresql+psycopg2://postgres@127.0.0.1:1/x"
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


def database_config(url: str, **pool) -> dict:
    """App config for the database at ``url``, with the production engine options plus ``pool``."""
    return {"SQLALCHEMY_DATABASE_URI": url, "SQLALCHEMY_ENGINE_OPTIONS": {**engine_options({}, url), **pool}}


def test_health_answers_even_without_a_database(make_app):
    app = make_app(**database_config(UNREACHABLE_DATABASE))
    started = time.perf_counter()
    response = app.test_client().get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
    assert time.perf_counter() - started < 0.5


def test_ready_reports_database_and_redis(client):
    response = client.get("/ready")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["database"]["ok"] is True and body["database"]["ms"] >= 0
    assert body["redis"]["ok"] is True
    assert body["redis"]["configured"] is bool(client.application.config["REDIS_URL"])
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.redis
def test_ready_pings_redis_when_configured(client):
    body = client.get("/ready").get_json()
    assert body["redis"] == {"ok": True, "ms": body["redis"]["ms"], "configured": True}
    assert body["redis"]["ms"] > 0


def test_ready_is_degraded_but_up_without_redis(make_app):
    app = make_app(REDIS_URL=UNREACHABLE_REDIS)
    response = app.test_client().get("/ready")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "degraded"
    assert body["database"]["ok"] is True
    assert body["redis"]["ok"] is False and body["redis"]["configured"] is True


def test_ready_is_unavailable_quickly_without_database(make_app):
    app = make_app(**database_config(UNREACHABLE_DATABASE))
    started = time.perf_counter()
    response = app.test_client().get("/ready")
    assert time.perf_counter() - started < 3
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert body["database"]["ok"] is False and body["database"]["error"] == "OperationalError"
    # The probe names the failure, never the database's address.
    assert "127.0.0.1" not in response.get_data(as_text=True)


def test_unreachable_database_answers_503_json_and_page(make_app, caplog):
    app = make_app(**database_config(UNREACHABLE_DATABASE))
    app.test_client_class = BagtrackClient
    client = app.test_client()
    client.fetch_csrf_token()
    started = time.perf_counter()
    response = client.post("/login", data={"username": "someone", "password": PASSWORD}, headers=JSON)
    assert time.perf_counter() - started < 3
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    body = response.get_json()
    assert body["ok"] is False and body["error"] == "unavailable"
    assert "Try again in a few seconds" in body["message"]

    page = client.post("/login", data={"username": "someone", "password": PASSWORD})
    assert page.status_code == 503
    assert page.headers["Retry-After"] == "5"
    assert "The database did not answer in time" in page.get_data(as_text=True)
    warnings = [record.getMessage() for record in caplog.records if record.name == "bagtrack"]
    assert warnings and warnings[0].startswith("database unavailable: OperationalError: connection to server")
    assert "SELECT" not in warnings[0]


def test_exhausted_pool_answers_503_within_the_pool_timeout(make_app, make_user, database_url):
    app = make_app(**database_config(database_url, pool_size=1, max_overflow=0, pool_timeout=0.2))
    user = make_user("pooled", role="admin", area=None)
    client = log_in(app, user)
    with app.app_context():
        held = db.engine.connect()
        try:
            started = time.perf_counter()
            response = client.get("/api/stats")
            elapsed = time.perf_counter() - started
        finally:
            held.close()
    assert response.status_code == 503
    assert response.get_json()["error"] == "unavailable"
    assert response.headers["Retry-After"] == "5"
    assert elapsed < 2
    # The connection is free again: the same client is served.
    assert client.get("/ready").status_code == 200


@pytest.mark.postgres
def test_statement_timeout_answers_503_and_the_connection_stays_usable(make_app, database_url):
    app = make_app(BAGTRACK_DB_STATEMENT_TIMEOUT_MS=100, **database_config(database_url, pool_size=1, max_overflow=0))

    @app.get("/test/slow-query")
    def slow_query():
        db.session.execute(text("SELECT pg_sleep(1)"))
        return "finished"

    @app.get("/test/timeouts")
    def timeouts():
        statement = db.session.execute(text("SHOW statement_timeout")).scalar_one()
        idle = db.session.execute(text("SHOW idle_in_transaction_session_timeout")).scalar_one()
        return {"statement_timeout": statement, "idle_in_transaction_session_timeout": idle}

    client = app.test_client()
    started = time.perf_counter()
    response = client.get("/test/slow-query", headers=JSON)
    assert time.perf_counter() - started < 0.9
    assert response.status_code == 503
    assert response.get_json()["error"] == "unavailable"

    # The pool's only connection was rolled back and reused, with the settings applied again.
    response = client.get("/test/timeouts")
    assert response.status_code == 200
    assert response.get_json() == {"statement_timeout": "100ms", "idle_in_transaction_session_timeout": "10s"}
    with app.app_context():
        assert db.engine.pool.checkedout() == 0


@pytest.mark.postgres
def test_request_timeouts_are_set_once_per_connection(make_app, database_url):
    """By default a connection keeps its timeouts: no extra round trip per transaction."""
    app = make_app(BAGTRACK_DB_STATEMENT_TIMEOUT_MS=1234, **database_config(database_url, pool_size=1, max_overflow=0))
    with app.test_request_context():
        with db.engine.connect() as connection:
            assert connection.execute(text("SHOW statement_timeout")).scalar_one() == "1234ms"
        with db.engine.connect() as connection:
            statements = []
            event.listen(connection, "before_cursor_execute", lambda *args: statements.append(args[2]))
            assert connection.execute(text("SHOW statement_timeout")).scalar_one() == "1234ms"
            assert statements == ["SHOW statement_timeout"]


@pytest.mark.postgres
def test_timeouts_end_with_the_transaction_behind_pgbouncer(make_app):
    """SET LOCAL leaves nothing on the server connection (safe behind PgBouncer)."""
    app = make_app(BAGTRACK_DB_STATEMENT_TIMEOUT_MS=1234, BAGTRACK_DB_PGBOUNCER=True)
    with app.test_request_context(), db.engine.connect() as connection:
        assert connection.execute(text("SHOW statement_timeout")).scalar_one() == "1234ms"
        connection.commit()
        raw = connection.connection.dbapi_connection
        cursor = raw.cursor()
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] != "1234ms"
        raw.rollback()


@pytest.mark.postgres
def test_cli_work_has_no_statement_timeout(make_app):
    """Migrations, seeding and exports may run one statement for longer than a request may."""
    app = make_app(BAGTRACK_DB_STATEMENT_TIMEOUT_MS=50)
    with app.app_context(), db.engine.connect() as connection:
        assert connection.execute(text("SHOW statement_timeout")).scalar_one() == "0"
        connection.execute(text("SELECT pg_sleep(0.1)"))


def metrics_text(client, **kwargs) -> str:
    response = client.get("/metrics", **kwargs)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    return response.get_data(as_text=True)


def test_metrics_count_requests_by_endpoint_not_path(client):
    client.get("/health")
    client.get("/ready")
    client.get("/no/such/page-abc123")
    body = metrics_text(client)
    health = 'endpoint="ops.health",le="0.002",method="GET",status="200"'
    assert f"bagtrack_request_duration_seconds_bucket{{{health}}}" in body
    assert 'endpoint="ops.ready"' in body
    assert 'bagtrack_request_duration_seconds_count{endpoint="unmatched",method="GET",status="404"}' in body
    assert "page-abc123" not in body


def test_pool_gauges_follow_connections_checkouts_and_overflow(client):
    """What an operator reads off the pool gauges as connections open, go out and come back."""

    def gauges() -> tuple:
        body = metrics_text(client)
        return tuple(
            float(body.split(f"\n{name} ", 1)[1].split("\n", 1)[0])
            for name in ("bagtrack_db_pool_connections", "bagtrack_db_pool_checked_out", "bagtrack_db_pool_overflow")
        )

    usage = observability.PoolUsage(size=1)
    usage.change(connections=1)
    usage.change(checked_out=1)
    assert gauges() == (1.0, 1.0, 0.0)
    usage.change(connections=1)
    usage.change(checked_out=1)
    assert gauges() == (2.0, 2.0, 1.0)
    usage.change(checked_out=-1)
    usage.change(connections=-1)
    usage.change(checked_out=-1)
    assert gauges() == (1.0, 0.0, 0.0)
    usage.change(connections=-1)
    assert gauges() == (0.0, 0.0, 0.0)


def test_metrics_show_pool_cache_and_rate_limits(client):
    client.get("/ready")
    observability.count_cache(hit=True)
    observability.count_cache(hit=False)
    observability.count_rate_limited("login")
    body = metrics_text(client)
    for name in ("bagtrack_db_pool_size", "bagtrack_db_pool_checked_out", "bagtrack_db_pool_overflow"):
        assert f"\n{name} " in body
    assert "\nbagtrack_db_pool_checked_out 0.0\n" in body
    assert 'bagtrack_cache_lookups_total{result="hit"}' in body
    assert 'bagtrack_cache_lookups_total{result="miss"}' in body
    assert 'bagtrack_rate_limited_total{scope="login"}' in body


def test_metrics_refused_to_other_addresses(client):
    response = client.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert response.status_code == 403
    assert response.get_json()["error"] == "forbidden"


def test_metrics_refused_through_a_proxy_without_token(client):
    response = client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    assert response.status_code == 403


def test_metrics_allow_list_takes_networks(make_app):
    from ipaddress import ip_network

    app = make_app(BAGTRACK_METRICS_ALLOW=(ip_network("10.0.0.0/8"),))
    client = app.test_client()
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 200
    assert client.get("/metrics").status_code == 403


def test_metrics_token_admits_any_address(make_app):
    app = make_app(BAGTRACK_METRICS_TOKEN="s3cret-token", BAGTRACK_METRICS_ALLOW=())
    client = app.test_client()
    remote = {"REMOTE_ADDR": "198.51.100.7"}
    assert metrics_text(client, headers={"Authorization": "Bearer s3cret-token"}, environ_base=remote)
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}, environ_base=remote).status_code == 403
    assert client.get("/metrics", environ_base=remote).status_code == 403
    assert client.get("/metrics").status_code == 403
