"""Reads of lists, searches and exports routed to a replica, and back to the primary when it lags or fails.

A real standby is what ``make cluster`` runs. Here the "replica" is a second
database on the same server, holding rows the primary does not: a page shows
which database served it. On a server that is no standby the lag query
answers "not in recovery", which counts as no lag.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from helpers import PASSWORD, log_in
from servers import Gunicorn, fetch, http_login
from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.engine import make_url

from bagtrack import accounts, queries, replica
from bagtrack.extensions import db
from bagtrack.models import AuditEntry, Bag, DispatchArea, Scan, User
from bagtrack.replica import reads, reads_from_replica

UNREACHABLE_REPLICA = "postgresql+psycopg2://postgres@127.0.0.1:1/replica"


def _database(database_url: str, suffix: str, with_tables: bool):
    url = make_url(database_url)
    name = f"{url.database}_{suffix}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    replica_url = url.set(database=name).render_as_string(hide_password=False)
    if with_tables:
        engine = create_engine(replica_url)
        db.metadata.create_all(engine)
        engine.dispose()
    return admin, name, replica_url


@pytest.fixture(scope="module")
def replica_url(database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("needs PostgreSQL: set DATABASE_URL")
    admin, name, url = _database(database_url, "replica", with_tables=True)
    yield url
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def replica_rows(app, replica_url):
    """Copy the primary's areas and users to the replica, then add ``rows`` there only."""
    engine = create_engine(replica_url)

    def add(*rows: tuple) -> None:
        with engine.begin() as connection:
            for model in (User, DispatchArea):
                connection.execute(model.__table__.delete())
            for model in (DispatchArea, User):
                copied = [dict(row._mapping) for row in db.session.execute(select(model.__table__))]
                if copied:
                    connection.execute(insert(model.__table__), copied)
            for model, values in rows:
                connection.execute(insert(model.__table__), values)

    yield add
    with engine.begin() as connection:
        for table in reversed(db.metadata.sorted_tables):
            connection.execute(table.delete())
    engine.dispose()


_engines: list = []


def replica_app(make_app, url: str):
    """An app reading from the replica at ``url``; its replica pool is closed after the test."""
    app = make_app(BAGTRACK_REPLICA_URL=url)
    _engines.append(app.extensions[replica.EXTENSION].engine)
    return app


@pytest.fixture(autouse=True)
def dispose_replica_engines():
    yield
    while _engines:
        _engines.pop().dispose()


def replica_bag(qr: str, area_id: int) -> tuple:
    now = datetime.now(UTC).replace(tzinfo=None)
    return Bag, {
        "id": 900_001,
        "qr": qr,
        "kind": "parent",
        "status": "open",
        "area_id": area_id,
        "capacity": 30,
        "child_count": 0,
        "created_at": now,
    }


@pytest.mark.postgres
def test_bag_list_reads_from_a_fresh_replica(make_app, make_user, make_parent, replica_url, replica_rows):
    admin = make_user("boss", role="admin", area=None)
    make_parent("SB10001")
    replica_rows(replica_bag("SB20002", db.session.scalar(select(DispatchArea.id))))
    app = replica_app(make_app, replica_url)

    page = log_in(app, admin).get("/bags").get_data(as_text=True)

    assert "SB20002" in page and "SB10001" not in page
    ready = app.test_client().get("/ready").get_json()
    assert ready["status"] == "ok"
    assert ready["replica"] == {"configured": True, "reads": "replica", "lag_s": 0.0, "max_lag_s": 5.0}


@pytest.mark.postgres
def test_scan_log_api_and_export_read_from_the_replica(make_app, make_user, make_parent, replica_url, replica_rows):
    admin = make_user("boss", role="admin", area=None)
    make_parent("SB10001")
    area_id = db.session.scalar(select(DispatchArea.id))
    scan = {"id": 900_001, "at": datetime.now(UTC).replace(tzinfo=None), "kind": "parent", "outcome": "ok"}
    replica_rows((Scan, {**scan, "qr": "SB20002", "area_id": area_id, "user_id": admin.id}))
    client = log_in(replica_app(make_app, replica_url), admin)

    api = client.get("/api/scans").get_json()
    export = client.get("/exports/scans.csv").get_data(as_text=True)

    assert [row["qr"] for row in api["scans"]] == ["SB20002"]
    assert "SB20002" in client.get("/scans").get_data(as_text=True)
    assert "SB20002" in export and "SB10001" not in export
    # The export's audit entry is written on the primary all the same.
    assert db.session.scalar(select(AuditEntry.action).where(AuditEntry.action == "export.scans")) == "export.scans"


@pytest.mark.postgres
def test_a_lagging_replica_sends_reads_to_the_primary(
    make_app, make_user, make_parent, replica_url, replica_rows, monkeypatch
):
    admin = make_user("boss", role="admin", area=None)
    make_parent("SB10001")
    replica_rows(replica_bag("SB20002", db.session.scalar(select(DispatchArea.id))))
    # What a standby 12.5 s behind answers.
    monkeypatch.setattr(replica, "LAG_QUERY", text("SELECT true, 12.5"))
    app = replica_app(make_app, replica_url)

    page = log_in(app, admin).get("/bags").get_data(as_text=True)

    assert "SB10001" in page and "SB20002" not in page
    ready = app.test_client().get("/ready").get_json()
    assert ready["replica"]["reads"] == "primary" and ready["replica"]["lag_s"] == 12.5
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert "bagtrack_replica_lag_seconds 12.5" in metrics
    assert "bagtrack_replica_serving 0.0" in metrics


@pytest.mark.postgres
def test_an_unreachable_replica_sends_reads_to_the_primary_at_once(make_app, make_user, make_parent):
    admin = make_user("boss", role="admin", area=None)
    make_parent("SB10001")
    app = replica_app(make_app, UNREACHABLE_REPLICA)
    client = log_in(app, admin)

    started = time.perf_counter()
    response = client.get("/bags")
    elapsed = time.perf_counter() - started

    assert response.status_code == 200 and "SB10001" in response.get_data(as_text=True)
    # Refused on loopback: no waiting for the connect timeout.
    assert elapsed < 1
    ready = app.test_client().get("/ready")
    assert ready.status_code == 200
    assert ready.get_json()["replica"] == {
        "configured": True,
        "reads": "primary",
        "lag_s": None,
        "max_lag_s": 5.0,
        "error": "OperationalError",
    }


@pytest.mark.postgres
def test_a_replica_failing_under_a_list_reruns_it_on_the_primary(make_app, make_user, make_parent, database_url):
    admin = make_user("boss", role="admin", area=None)
    make_parent("SB10001")
    # A server that answers the lag check but has no tables: every read of the page fails there.
    server, name, broken_url = _database(database_url, "replica_broken", with_tables=False)
    try:
        app = replica_app(make_app, broken_url)
        client = log_in(app, admin)
        response = client.get("/bags")
        assert response.status_code == 200 and "SB10001" in response.get_data(as_text=True)
        assert app.test_client().get("/ready").get_json()["replica"]["reads"] == "primary"
    finally:
        while _engines:
            _engines.pop().dispose()
        with server.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()


@pytest.mark.postgres
def test_reads_after_a_write_in_the_same_request_come_from_the_primary(make_app, make_user, replica_url, replica_rows):
    admin = make_user("boss", role="admin", area=None)
    replica_rows()
    app = replica_app(make_app, replica_url)

    @app.get("/areas-after-adding-one")
    @reads_from_replica
    def areas_after_adding_one():
        before = [area.code for area in queries.areas_for(reads(), admin)]
        accounts.add_area(db.session, None, "FRESH")
        after = [area.code for area in queries.areas_for(reads(), admin)]
        return {"before": before, "after": after}

    answer = app.test_client().get("/areas-after-adding-one").get_json()

    assert "FRESH" not in answer["before"] and "FRESH" in answer["after"]


def test_config_refuses_a_replica_without_a_primary_or_not_postgresql():
    from bagtrack.config import ConfigError, load

    with pytest.raises(ConfigError, match="DATABASE_REPLICA_URL needs DATABASE_URL"):
        load({"DATABASE_REPLICA_URL": "postgresql://replica/db"})
    with pytest.raises(ConfigError, match="must be a postgresql:// URL"):
        load({"DATABASE_URL": "postgresql://p/db", "SECRET_KEY": "x" * 32, "DATABASE_REPLICA_URL": "mysql://r/db"})
    assert load({"DATABASE_URL": "postgresql://p/db", "SECRET_KEY": "x" * 32})["BAGTRACK_REPLICA_URL"] is None


@pytest.mark.postgres
@pytest.mark.slow
def test_gunicorn_reports_replica_reads_in_ready_and_metrics(
    make_user, make_area, replica_url, replica_rows, database_url, tmp_path
):
    make_user("boss", role="admin", area=None)
    replica_rows(replica_bag("SB20002", make_area("NORTH").id))
    environment = {
        "DATABASE_URL": database_url,
        "DATABASE_REPLICA_URL": replica_url,
        "SECRET_KEY": "replica-test-secret-replica-test-secret",
        "REDIS_URL": "",
    }
    server = Gunicorn(tmp_path / "gunicorn.log", environment, "-w", "2")
    try:
        session = http_login(server.base, "boss", PASSWORD)
        pages = [session.get(f"{server.base}/bags", headers={"Accept": "text/html"}, timeout=5) for _ in range(4)]
        status, _, body = fetch(f"{server.base}/ready")
        _, _, metrics = fetch(f"{server.base}/metrics")
    finally:
        server.kill()
    assert all(page.status_code == 200 and "SB20002" in page.text for page in pages)
    assert status == 200 and b'"reads":"replica"' in body
    assert 'bagtrack_routed_reads_total{database="replica"} 4.0' in metrics.decode()
