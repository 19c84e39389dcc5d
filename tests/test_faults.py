"""bagtrack through faults, with real servers on spare loopback ports: Redis
killed and restarted, PostgreSQL connections terminated, the database
unreachable, gunicorn stopped under load. The site keeps answering (slower,
with looser limits, or 503 "try again"), never 500, and every scan it
acknowledged is stored.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from contextlib import contextmanager

import pytest
import requests
from helpers import JSON, PASSWORD, BagtrackClient, listening, log_in, pool_config
from redis import Redis
from servers import Gunicorn, RedisServer, free_port, http_login, redis_server, scratch_database
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import aliased
from sqlalchemy.pool import NullPool

from bagtrack import figures
from bagtrack.extensions import db, limiter
from bagtrack.invariants import find_violations
from bagtrack.ledger import in_transaction, log_scan
from bagtrack.models import AuditEntry, Bag, Bill, Scan, Tally
from bagtrack.scanning import find_bag

Parent = aliased(Bag)
# Redis calls time out after 0.25 s; a request meeting an outage pays at most a few of them.
FAST_S = 1.5

needs_redis_server = pytest.mark.skipif(not RedisServer.available(), reason="needs the redis-server program")


def timed(call, *args, **kwargs):
    started = time.perf_counter()
    response = call(*args, **kwargs)
    elapsed = time.perf_counter() - started
    assert elapsed < FAST_S, f"{args[0]} took {elapsed:.2f} s"
    return response


@pytest.fixture
def limiter_storage_alive(monkeypatch):
    # The limiter is one object for the process; an outage here must not leave later tests counting in memory.
    monkeypatch.setattr(limiter, "_storage_dead", False)


def redis_app(make_app, url: str, **overrides):
    """An app whose cache and rate limits live in the Redis at ``url``."""
    return make_app(
        REDIS_URL=url,
        CACHE_TYPE="RedisCache",
        CACHE_REDIS_URL=url,
        RATELIMIT_STORAGE_URI=f"bagtrack+{url}",
        CACHE_KEY_PREFIX=f"bagtrack-faults-{uuid.uuid4().hex[:8]}:",
        **overrides,
    )


@needs_redis_server
@pytest.mark.slow
def test_redis_killed_mid_run_leaves_the_site_working(
    make_app, make_user, make_parent, tmp_path, limiter_storage_alive
):
    parent = make_parent()
    with redis_server(tmp_path) as redis:
        app = redis_app(
            make_app, redis.url, RATELIMIT_ENABLED=True, BAGTRACK_LIMIT_SCAN="8/minute", BAGTRACK_REDIS_RETRY_S=0.5
        )
        user = make_user()
        scanner = log_in(app, user)

        def scan(number: int):
            return timed(
                scanner.post, "/scan/child", data={"parent": parent.qr, "qr": f"KID{number:05d}"}, headers=JSON
            )

        assert scan(1).status_code == 201
        assert timed(scanner.get, "/api/stats").get_json()["bags"]["children"] == 1
        assert timed(scanner.get, "/ready").get_json()["status"] == "ok"

        redis.stop()
        for number in range(2, 10):
            response = scan(number)
            assert response.status_code == 201, response.get_json()
            stats = timed(scanner.get, "/api/stats")
            assert stats.status_code == 200 and stats.get_json()["bags"]["children"] == number
        # The limits now count in memory, from the outage on: 8 scans passed, the 9th is refused.
        refused = scan(10)
        assert refused.status_code == 429, refused.get_json()
        assert refused.get_json()["error"] == "rate_limited"
        assert int(refused.headers["Retry-After"]) > 0
        ready = timed(scanner.get, "/ready")
        assert ready.status_code == 200
        assert ready.get_json()["status"] == "degraded" and ready.get_json()["redis"]["ok"] is False
        assert log_in(app, make_user("second")).get("/api/stats").status_code == 200

        redis.start()
        time.sleep(0.6)
        assert timed(scanner.get, "/ready").get_json()["status"] == "ok"
        timed(scanner.get, "/api/stats")
        # The restarted Redis is empty: the figures are in it again, so the cache is in use.
        keys = redis_keys(redis.url)
        assert any(key.endswith(f"{figures.NAMESPACE}:entry:{user.area_id}") for key in keys), keys


def redis_keys(url: str) -> list[str]:
    client = Redis.from_url(url)
    try:
        return [key.decode() for key in client.keys("*")]
    finally:
        client.close()


# --- PostgreSQL connections terminated ---------------------------------------------------------


def database_name(database_url: str) -> str:
    return make_url(database_url).database


@contextmanager
def side_connection(database_url: str):
    """A connection of the test's own, outside the app's pool: it survives what it does to the others."""
    engine = create_engine(database_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def terminate_backends(connection, database: str, pids: list[int] | None = None) -> int:
    """Terminate the other sessions on ``database`` (only ``pids`` when given) and wait until they are gone."""
    query = (
        "SELECT pid FROM pg_stat_activity WHERE datname = :database AND pid <> pg_backend_pid()"
        " AND (CAST(:pids AS int[]) IS NULL OR pid = ANY(CAST(:pids AS int[])))"
    )
    targets = connection.execute(text(query), {"database": database, "pids": pids}).scalars().all()
    for pid in targets:
        connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    deadline = time.monotonic() + 5
    while targets and time.monotonic() < deadline:
        alive = connection.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(CAST(:pids AS int[]))"), {"pids": targets}
        ).scalar_one()
        if not alive:
            break
        time.sleep(0.01)
    return len(targets)


@contextmanager
def connection_killed_when(app, database_url: str, moment: str, matches=lambda statement: True):
    """Terminate, from outside, the connection a request is using at ``moment``, once.

    ``moment`` is ``"statement"`` (just before a statement that ``matches``),
    ``"commit"`` (just before COMMIT is sent) or ``"commit_reply_lost"`` (the
    server committed, then the connection died before the driver heard so:
    the outcome is unknown to the app). Yields the list of what was killed.
    """
    with app.app_context():
        engine = db.engine
    killed: list[str] = []

    def kill(dbapi_connection, what: str) -> None:
        killed.append(what)
        with side_connection(database_url) as side:
            assert terminate_backends(side, database_name(database_url), [dbapi_connection.get_backend_pid()]) == 1

    def before_statement(connection, _cursor, statement, *_args):
        if not killed and matches(statement):
            kill(connection.connection.dbapi_connection, statement)

    def before_commit(connection):
        if not killed:
            kill(connection.connection.dbapi_connection, "COMMIT")

    committing = engine.dialect.do_commit

    def commit_then_lose_the_reply(dbapi_connection):
        committing(dbapi_connection)
        if not killed:
            kill(dbapi_connection, "after COMMIT")
            # The driver's next word with the server meets the dead connection, as a lost reply would.
            dbapi_connection.cursor().execute("SELECT 1")

    if moment == "commit_reply_lost":
        engine.dialect.do_commit = commit_then_lose_the_reply
        try:
            yield killed
        finally:
            del engine.dialect.do_commit
        return
    name, listener = {"statement": ("before_cursor_execute", before_statement), "commit": ("commit", before_commit)}[
        moment
    ]
    event.listen(engine, name, listener)
    try:
        yield killed
    finally:
        event.remove(engine, name, listener)


def stored_parent(qr: str) -> tuple[int, int, list[str]]:
    """A parent's kept child_count, its recount, and its children, read fresh."""
    db.session.rollback()
    parent = db.session.scalars(select(Bag).where(Bag.qr == qr).execution_options(populate_existing=True)).one()
    children = db.session.scalars(select(Bag.qr).where(Bag.parent_id == parent.id).order_by(Bag.qr)).all()
    return parent.child_count, len(children), children


def accepted_scans(child_qr: str) -> int:
    return db.session.scalar(
        select(func.count()).select_from(Scan).where(Scan.qr == child_qr, Scan.kind == "child", Scan.outcome == "ok")
    )


@pytest.mark.postgres
def test_a_warm_pool_recovers_from_terminated_connections(make_app, make_user, make_parent, database_url):
    app = make_app(**pool_config(database_url, pool_size=4, max_overflow=0))
    parent = make_parent()
    scanner = log_in(app, make_user())
    for number in range(3):
        assert (
            scanner.post("/scan/child", data={"parent": parent.qr, "qr": f"WARM{number:04d}"}, headers=JSON).status_code
            == 201
        )
    with side_connection(database_url) as side:
        assert terminate_backends(side, database_name(database_url)) >= 1
    # Every pooled connection is dead: the first use finds out, the write is retried on a new connection
    # and the pool replaces every connection as old as the dead one.
    for number in range(3, 8):
        response = scanner.post("/scan/child", data={"parent": parent.qr, "qr": f"WARM{number:04d}"}, headers=JSON)
        assert response.status_code == 201, response.get_data(as_text=True)
        assert scanner.get("/api/stats").status_code == 200
    assert log_in(app, make_user("second")).get(f"/api/bags/{parent.qr}").get_json()["child_count"] == 8
    assert stored_parent(parent.qr)[:2] == (8, 8)
    assert find_violations(db.session) == []


@pytest.mark.postgres
def test_a_connection_killed_before_commit_answers_503_and_writes_nothing(
    make_app, make_user, make_parent, database_url
):
    app = make_app(**pool_config(database_url, pool_size=2, max_overflow=0))
    parent = make_parent(children=2)
    scanner = log_in(app, make_user())
    before = stored_parent(parent.qr)
    assert before[:2] == (2, 2)
    with connection_killed_when(app, database_url, "commit") as killed:
        response = scanner.post("/scan/child", data={"parent": parent.qr, "qr": "HALFWAY01"}, headers=JSON)
    assert killed, "the fault was not injected"
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.get_json()["error"] == "unavailable"
    assert response.headers["Retry-After"] == "5"
    assert stored_parent(parent.qr) == before
    assert accepted_scans("HALFWAY01") == 0
    assert find_violations(db.session) == []
    # The operator scans again: this time it is stored, once.
    again = scanner.post("/scan/child", data={"parent": parent.qr, "qr": "HALFWAY01"}, headers=JSON)
    assert again.status_code == 201 and again.get_json()["duplicate"] is False
    assert stored_parent(parent.qr)[:2] == (3, 3)
    assert find_violations(db.session) == []


def test_a_database_closing_every_new_connection_answers_503_not_500(app, make_user, make_parent):
    """The pool replaces a connection the server closed, three times, then gives up: that is an outage."""
    parent = make_parent()
    scanner = log_in(app, make_user())
    scanner.get("/api/stats")  # the user's snapshot is taken; the scan below needs a connection
    db.session.remove()  # and checks one out of the pool

    def closed_by_the_server(_dbapi_connection, _record, _proxy):
        raise DisconnectionError("the server closed this connection")

    with listening(app, "checkout", closed_by_the_server):
        response = scanner.post("/scan/child", data={"parent": parent.qr, "qr": "OUTAGE01"}, headers=JSON)
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.get_json()["error"] == "unavailable"
    assert response.headers["Retry-After"] == "5"
    again = scanner.post("/scan/child", data={"parent": parent.qr, "qr": "OUTAGE01"}, headers=JSON)
    assert again.status_code == 201, again.get_data(as_text=True)


# A new child is one statement; a loose child goes the long way: its row, then its scan's log and tally rows.
KILL_POINTS = {
    "before a new child's scan": (False, lambda sql: "INSERT INTO scan" in sql or "EXECUTE bagtrack_child_scan" in sql),
    "half-way through a loose child's scan": (
        True,
        lambda sql: "INSERT INTO scan" in sql and not sql.lstrip().startswith("PREPARE"),
    ),
}


@pytest.mark.postgres
@pytest.mark.parametrize("where", list(KILL_POINTS))
def test_a_connection_killed_mid_scan_is_retried_and_stores_the_scan_once(
    make_app, make_user, make_parent, database_url, where
):
    app = make_app(**pool_config(database_url, pool_size=2, max_overflow=0))
    parent = make_parent(children=2)
    scanner = log_in(app, make_user())
    loose, matches = KILL_POINTS[where]
    if loose:
        elsewhere = make_parent()
        packed = scanner.post("/scan/child", data={"parent": elsewhere.qr, "qr": "HALFWAY01"}, headers=JSON)
        assert packed.status_code == 201
        assert scanner.post("/scan/undo", data={"parent": elsewhere.qr}, headers=JSON).status_code == 200
    with connection_killed_when(app, database_url, "statement", matches) as killed:
        response = scanner.post("/scan/child", data={"parent": parent.qr, "qr": "HALFWAY01"}, headers=JSON)
    assert killed, "the fault was not injected"
    assert response.status_code == (200 if loose else 201), response.get_data(as_text=True)
    assert response.get_json()["duplicate"] is False
    assert stored_parent(parent.qr)[:2] == (3, 3)
    assert "HALFWAY01" in stored_parent(parent.qr)[2]
    assert accepted_scans("HALFWAY01") == (2 if loose else 1)
    assert find_violations(db.session) == []


@pytest.mark.postgres
def test_a_connection_killed_as_a_parent_is_loaded_is_retried_and_loads_it_once(
    make_app, make_user, make_parent, make_bill, database_url
):
    app = make_app(**pool_config(database_url, pool_size=2, max_overflow=0))
    parent = make_parent(children=30)
    bill = make_bill("FAULT-LOAD", capacity=5)
    biller = log_in(app, make_user("loader", role="biller", area=None))
    # On PostgreSQL the parent's and the bill's rows, the scan's log and tally rows and the audit entry go together.
    with connection_killed_when(app, database_url, "statement", lambda sql: "UPDATE bag SET bill_id" in sql) as killed:
        response = biller.post(f"/bills/{bill.bill_no}/parents", data={"qr": parent.qr}, headers=JSON)
    assert killed, "the fault was not injected"
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["duplicate"] is False
    assert response.get_json()["bill"]["parent_count"] == 1
    stored = db.session.execute(select(Bill.id, Bill.parent_count, Bill.child_count).where(Bill.id == bill.id)).one()
    assert (stored.parent_count, stored.child_count) == (1, 30)
    assert db.session.scalar(select(Bag.bill_id).where(Bag.qr == parent.qr)) == bill.id
    loads = select(func.count()).select_from(Scan).where(Scan.qr == parent.qr, Scan.kind == "load")
    assert db.session.scalar(loads) == 1
    entries = select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "bill.load_parent")
    assert db.session.scalar(entries) == 1
    assert find_violations(db.session) == []


@pytest.mark.postgres
def test_a_commit_whose_answer_was_lost_is_found_by_the_retry(make_app, make_user, make_parent, database_url):
    app = make_app(**pool_config(database_url, pool_size=2, max_overflow=0))
    parent = make_parent(children=2)
    scanner = log_in(app, make_user())
    with connection_killed_when(app, database_url, "commit_reply_lost") as killed:
        response = scanner.post("/scan/child", data={"parent": parent.qr, "qr": "UNKNOWN01"}, headers=JSON)
    assert killed == ["after COMMIT"]
    # The app cannot know whether the scan is stored: it must not claim success, nor a refusal.
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.get_json()["error"] == "unavailable"
    again = scanner.post("/scan/child", data={"parent": parent.qr, "qr": "UNKNOWN01"}, headers=JSON)
    assert again.status_code == 200, again.get_json()
    assert again.get_json()["duplicate"] is True
    assert stored_parent(parent.qr)[:2] == (3, 3)
    assert accepted_scans("UNKNOWN01") == 2
    assert find_violations(db.session) == []


@pytest.mark.postgres
def test_a_connection_dying_before_the_request_ends_does_not_fail_it(make_app, make_user, make_parent, database_url):
    app = make_app(**pool_config(database_url, pool_size=2, max_overflow=0))
    parent = make_parent(children=2)
    armed, killed = [], []

    # Registered last, so it runs first: the request's read transaction is still open, idle.
    @app.teardown_appcontext
    def kill_idle_connection(_error):
        if armed and not killed and db.session.registry.has() and db.session().in_transaction():
            killed.append(db.session.connection().connection.dbapi_connection.get_backend_pid())
            with side_connection(database_url) as side:
                terminate_backends(side, database_name(database_url), killed)

    reader = log_in(app, make_user())
    armed.append(True)
    response = reader.get(f"/api/bags/{parent.qr}")
    assert killed, "the fault was not injected"
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["child_count"] == 2
    scan = reader.post("/scan/child", data={"parent": parent.qr, "qr": "IDLE00001"}, headers=JSON)
    assert scan.status_code == 201, scan.get_data(as_text=True)
    assert stored_parent(parent.qr)[:2] == (3, 3)


@pytest.mark.postgres
@pytest.mark.parametrize("accept", ["json", "html"])
def test_a_refusal_is_answered_even_when_logging_it_fails(make_app, make_user, make_parent, database_url, accept):
    app = make_app(**pool_config(database_url, pool_size=2, max_overflow=0))
    parent = make_parent(children=1)
    other = make_parent(children=1)
    [packed] = stored_parent(other.qr)[2]
    scanner = log_in(app, make_user())
    headers = JSON if accept == "json" else {}
    with connection_killed_when(app, database_url, "statement", lambda s: "INSERT INTO scan" in s) as killed:
        response = scanner.post("/scan/child", data={"parent": parent.qr, "qr": packed}, headers=headers)
    assert killed, response.get_data(as_text=True)
    assert response.status_code == 409, response.get_data(as_text=True)
    if accept == "json":
        assert response.get_json()["error"] == "child_in_other_parent"
    else:
        assert f"already in parent bag {other.qr}" in response.get_data(as_text=True)
    assert stored_parent(parent.qr)[:2] == (1, 1)
    assert find_violations(db.session) == []
    # The next request is served normally.
    assert scanner.post("/scan/child", data={"parent": parent.qr, "qr": "AFTER0001"}, headers=JSON).status_code == 201


# --- The database unreachable --------------------------------------------------------------------


@needs_redis_server
def test_a_logged_in_scanner_gets_503_when_the_database_is_unreachable(
    make_app, make_user, make_parent, tmp_path, limiter_storage_alive
):
    parent = make_parent()
    user = make_user()
    with redis_server(tmp_path) as redis:
        working = redis_app(make_app, redis.url, RATELIMIT_ENABLED=True)
        scanner = log_in(working, user)
        unreachable = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/bagtrack"
        app = redis_app(make_app, redis.url, RATELIMIT_ENABLED=True, **pool_config(unreachable))
        app.test_client_class = BagtrackClient
        cut_off = app.test_client()
        cut_off.set_cookie("session", scanner.get_cookie("session").value)
        cut_off.csrf_token = scanner.csrf_token

        scan = timed(cut_off.post, "/scan/child", data={"parent": parent.qr, "qr": "NODB0001"}, headers=JSON)
        assert scan.status_code == 503, scan.get_data(as_text=True)
        assert scan.get_json()["error"] == "unavailable" and scan.headers["Retry-After"] == "5"
        page = timed(cut_off.get, f"/scan?parent={parent.qr}")
        assert page.status_code == 503
        assert "The database did not answer in time" in page.get_data(as_text=True)
        assert timed(cut_off.get, "/api/stats").status_code == 503
        assert timed(cut_off.get, "/ready").status_code == 503
        assert timed(cut_off.get, "/health").status_code == 200
        # The rate limits still count in Redis: a database outage is not a Redis outage.
        assert limiter._storage_dead is False


# --- Acknowledged means stored -----------------------------------------------------------------

SCANNERS = 6
PARENTS_EACH = 2
# Enough scans that the run outlasts several kills however fast a scan is.
CHILDREN_EACH = 24
KILL_EVERY_S = 0.1
RETRIES = 60


class Killer(threading.Thread):
    """Terminates every connection to the test database every ``KILL_EVERY_S``; stops Redis once, at the first kill."""

    def __init__(self, database_url: str, redis: RedisServer):
        super().__init__(daemon=True)
        self.database_url = database_url
        self.redis = redis
        self.done = threading.Event()
        self.killed = 0
        self.redis_stopped_at: float | None = None

    def run(self) -> None:
        with side_connection(self.database_url) as side:
            while not self.done.wait(KILL_EVERY_S):
                self.killed += terminate_backends(side, database_name(self.database_url))
                if self.redis_stopped_at is None:
                    self.redis.stop()
                    self.redis_stopped_at = time.monotonic()


@needs_redis_server
@pytest.mark.postgres
@pytest.mark.slow
def test_every_acknowledged_scan_is_stored_through_faults(make_app, make_user, make_parent, database_url, tmp_path):
    with redis_server(tmp_path) as redis:
        app = redis_app(make_app, redis.url, **pool_config(database_url, pool_size=4, max_overflow=2))
        plans = []
        for number in range(SCANNERS):
            scanner = log_in(app, make_user(f"scanner{number}"))
            parents = [make_parent().qr for _ in range(PARENTS_EACH)]
            children = [(qr, f"ACK{number}{qr[-3:]}{child:03d}") for qr in parents for child in range(CHILDREN_EACH)]
            plans.append((scanner, children))
        acknowledged: list[tuple[str, str]] = []
        unexpected: list[str] = []
        unavailable = [0]

        def scan_all(scanner, children) -> None:
            for parent_qr, child_qr in children:
                # A scanner operator scans again when told to try again.
                for _ in range(RETRIES):
                    response = scanner.post("/scan/child", data={"parent": parent_qr, "qr": child_qr}, headers=JSON)
                    if response.status_code != 503:
                        break
                    unavailable[0] += 1
                    time.sleep(0.02)
                body = response.get_json(silent=True) or {}
                if response.status_code in (200, 201) and body.get("ok") is True:
                    acknowledged.append((parent_qr, child_qr))
                else:
                    unexpected.append(f"{child_qr}: {response.status_code} {response.get_data(as_text=True)[:300]}")

        killer = Killer(database_url, redis)
        threads = [threading.Thread(target=scan_all, args=plan) for plan in plans]
        killer.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        finished_at = time.monotonic()
        killer.done.set()
        killer.join(10)

    assert not any(thread.is_alive() for thread in threads), "a scanner hung"
    assert unexpected == []
    assert killer.killed > 0 and unavailable[0] > 0, "no fault was met"
    assert killer.redis_stopped_at is not None and killer.redis_stopped_at < finished_at, "Redis outlived the run"
    assert len(acknowledged) == SCANNERS * PARENTS_EACH * CHILDREN_EACH
    db.session.rollback()
    linked = dict(
        db.session.execute(
            select(Bag.qr, Parent.qr).join(Parent, Parent.id == Bag.parent_id).where(Bag.kind == "child")
        ).all()
    )
    logged = set(
        db.session.execute(
            select(Bag.qr, Parent.qr)
            .join(Scan, Scan.bag_id == Bag.id)
            .join(Parent, Parent.id == Scan.parent_id)
            .where(Scan.kind == "child", Scan.outcome == "ok", Scan.reason.is_(None))
        ).all()
    )
    assert [pair for pair in acknowledged if linked.get(pair[1]) != pair[0]] == []
    assert [pair for pair in acknowledged if (pair[1], pair[0]) not in logged] == []
    assert find_violations(db.session) == []


# --- gunicorn stopped under load -----------------------------------------------------------------

GRACEFUL_TIMEOUT_S = 10
CLIENTS = 8


@pytest.mark.postgres
@pytest.mark.slow
def test_gunicorn_finishes_every_scan_in_flight_on_sigterm(make_app, database_url, tmp_path):
    name = f"{database_name(database_url)}_sigterm"
    with scratch_database(database_url, name) as scratch_url:
        scratch_app = make_app(SQLALCHEMY_DATABASE_URI=scratch_url)
        cli = scratch_app.test_cli_runner()
        for command in (
            ["areas", "add", "NORTH"],
            ["users", "create", "floor", "--role", "dispatcher", "--area", "NORTH", "--password", PASSWORD],
        ):
            result = cli.invoke(args=command)
            assert result.exit_code == 0, result.output
        environment = {
            "DATABASE_URL": scratch_url,
            "SECRET_KEY": "sigterm-test-secret-sigterm-test-secret",
            "GUNICORN_GRACEFUL_TIMEOUT": str(GRACEFUL_TIMEOUT_S),
            "BAGTRACK_LIMIT_SCAN": "100000/minute",
        }
        server = Gunicorn(tmp_path / "gunicorn.log", {**environment, "REDIS_URL": ""}, "-w", "2")
        try:
            clients = [http_login(server.base, "floor", PASSWORD) for _ in range(CLIENTS)]
            parents = [f"SB{90000 + number:05d}" for number in range(CLIENTS)]
            for client, parent in zip(clients, parents, strict=True):
                assert client.post(f"{server.base}/scan/parent", data={"qr": parent}, timeout=5).status_code == 201
            answers: list[tuple[str, str, int, dict, float]] = []
            failures: list[tuple[str, Exception, float]] = []

            def scan(client, parent: str, number: int) -> None:
                for child in range(30):
                    child_qr = f"TERM{number}{child:04d}"
                    request_id = uuid.uuid4().hex
                    try:
                        response = client.post(
                            f"{server.base}/scan/child",
                            data={"parent": parent, "qr": child_qr},
                            headers={"X-Request-ID": request_id},
                            timeout=GRACEFUL_TIMEOUT_S,
                        )
                    except requests.RequestException as error:
                        failures.append((request_id, error, time.monotonic()))
                        return
                    answers.append((parent, child_qr, response.status_code, response.json(), time.monotonic()))

            threads = [
                threading.Thread(target=scan, args=(c, p, n))
                for n, (c, p) in enumerate(zip(clients, parents, strict=True))
            ]
            for thread in threads:
                thread.start()
            time.sleep(0.3)
            sigterm_at = time.monotonic()
            returncode = server.terminate(GRACEFUL_TIMEOUT_S + 5)
            stopped_in = time.monotonic() - sigterm_at
            for thread in threads:
                thread.join(10)
        finally:
            server.kill()
        log = server.log()
        assert returncode == 0, log
        assert stopped_in < GRACEFUL_TIMEOUT_S
        assert [(qr, status) for _, qr, status, _, _ in answers if status not in (200, 201)] == []
        assert all(body["ok"] is True for _, _, _, body, _ in answers)
        assert any(at > sigterm_at for *_, at in answers), "no scan was in flight when SIGTERM came"
        # Once the shutdown began a client may find the server gone (refused, or reset while its
        # connection still waited to be accepted); none may lose the answer to a request the app handled.
        assert all(at > sigterm_at for _, _, at in failures)
        handled = {json.loads(line).get("request_id") for line in log.splitlines() if line.startswith("{")}
        assert [(request_id, repr(error)) for request_id, error, _ in failures if request_id in handled] == []

        with scratch_app.app_context():
            linked = dict(
                db.session.execute(
                    select(Bag.qr, Parent.qr).join(Parent, Parent.id == Bag.parent_id).where(Bag.kind == "child")
                ).all()
            )
            assert [(p, c) for p, c, *_ in answers if linked.get(c) != p] == []
            assert find_violations(db.session) == []
            db.session.remove()
            db.engine.dispose()


# --- A deadlock or a serialization failure is retried ------------------------------------------


@pytest.mark.postgres
def test_a_deadlock_is_retried_and_each_transaction_commits_once(app, make_parent):
    """Two transactions lock two parents in opposite orders; PostgreSQL aborts one, the ledger runs it again."""
    first, second = make_parent().qr, make_parent().qr
    both_hold_one = threading.Barrier(2, timeout=10)
    attempts: list[str] = []
    deadlocks: list[str] = []
    outcomes: dict[str, object] = {}

    def on_error(context) -> None:
        deadlocks.append(getattr(context.original_exception, "pgcode", None))

    def lock_both(name: str, order: tuple[str, str]) -> None:
        def work() -> str:
            attempts.append(name)
            find_bag(db.session, order[0], lock=True)
            if attempts.count(name) == 1:
                both_hold_one.wait()
            find_bag(db.session, order[1], lock=True)
            log_scan(db.session, user=None, kind="parent", qr=f"DEADLOCK-{name}")
            return name

        with app.app_context():
            try:
                outcomes[name] = in_transaction(db.session, work)
            except Exception as error:
                outcomes[name] = error
            finally:
                db.session.remove()

    event.listen(db.engine, "handle_error", on_error)
    try:
        threads = [
            threading.Thread(target=lock_both, args=("one", (first, second))),
            threading.Thread(target=lock_both, args=("two", (second, first))),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
    finally:
        event.remove(db.engine, "handle_error", on_error)
    assert outcomes == {"one": "one", "two": "two"}
    assert deadlocks == ["40P01"]
    # The aborted one ran twice, the other once.
    assert len(attempts) == 3 and set(attempts) == {"one", "two"}
    db.session.rollback()
    logged = db.session.scalars(select(Scan.qr).where(Scan.qr.like("DEADLOCK-%")).order_by(Scan.qr)).all()
    assert logged == ["DEADLOCK-one", "DEADLOCK-two"]


@contextmanager
def serialization_failure_once(table: str):
    """The next INSERT into ``table`` fails with SQLSTATE 40001, as a SERIALIZABLE conflict does; later ones pass.

    A sequence counts the trigger's calls: unlike a row, it is not rolled back with the failed transaction.
    """
    db.session.commit()
    with db.engine.begin() as connection:
        connection.execute(text("CREATE SEQUENCE serialization_fault_calls"))
        connection.execute(
            text(
                "CREATE FUNCTION serialization_fault() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                " IF nextval('serialization_fault_calls') = 1 THEN"
                " RAISE EXCEPTION 'could not serialize access (injected)' USING ERRCODE = '40001';"
                " END IF; RETURN NEW; END $$"
            )
        )
        connection.execute(
            text(
                f"CREATE TRIGGER serialization_fault BEFORE INSERT ON {table}"
                " FOR EACH ROW EXECUTE FUNCTION serialization_fault()"
            )
        )
    try:
        yield
    finally:
        db.session.rollback()
        with db.engine.begin() as connection:
            connection.execute(text(f"DROP TRIGGER serialization_fault ON {table}"))
            connection.execute(text("DROP FUNCTION serialization_fault()"))
            connection.execute(text("DROP SEQUENCE serialization_fault_calls"))


def tally_totals() -> dict[str, int]:
    db.session.rollback()
    fields = ("children", "scans_ok", "scans_rejected")
    row = db.session.execute(select(*(func.coalesce(func.sum(getattr(Tally, f)), 0) for f in fields))).one()
    return dict(zip(fields, row, strict=True))


@pytest.mark.postgres
def test_a_serialization_failure_is_retried_and_the_scan_counted_once(app, make_user, make_parent):
    """The scan-log INSERT of the first attempt fails with 40001 after the child was linked and counted;
    the ledger rolls that attempt back and runs the scan again."""
    parent = make_parent(children=2)
    scanner = log_in(app, make_user())
    before = stored_parent(parent.qr)
    tally_before = tally_totals()
    failures: list[str | None] = []

    def on_error(context) -> None:
        failures.append(getattr(context.original_exception, "pgcode", None))

    event.listen(db.engine, "handle_error", on_error)
    try:
        with serialization_failure_once("scan"):
            response = scanner.post("/scan/child", data={"parent": parent.qr, "qr": "RETRY0001"}, headers=JSON)
    finally:
        event.remove(db.engine, "handle_error", on_error)
    assert failures == ["40001"], "the fault was not injected once"
    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.get_json()["duplicate"] is False
    assert response.get_json()["parent"]["child_count"] == 3
    assert stored_parent(parent.qr) == (3, 3, sorted([*before[2], "RETRY0001"]))
    assert accepted_scans("RETRY0001") == 1
    assert db.session.scalar(select(func.count()).select_from(Scan).where(Scan.qr == "RETRY0001")) == 1
    tally_after = tally_totals()
    assert {name: tally_after[name] - tally_before[name] for name in tally_after} == {
        "children": 1,
        "scans_ok": 1,
        "scans_rejected": 0,
    }
    assert find_violations(db.session) == []
