"""The dashboard figures cache: hits, invalidation by the office's writes, scans seen within the
TTL, one recomputation per expiry across workers, and a Redis outage that only makes the site slower."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from helpers import JSON, log_in, statements_sent
from prometheus_client import REGISTRY

from bagtrack import figures, stats
from bagtrack.extensions import cache, db

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


def tally_queries(app):
    """Collects the statements that read the tally (the figures' only source)."""
    return statements_sent(
        app, lambda statement: "tally" in statement.lower() and statement.lstrip().upper().startswith("SELECT")
    )


def client_area(app, username: str) -> int:
    from bagtrack.models import User

    with app.app_context():
        return db.session.query(User).filter_by(username=username).one().area_id


@pytest.fixture
def fresh_prefix():
    """A cache namespace of its own, so entries of other tests are never read."""
    return f"bagtrack-test-{uuid.uuid4().hex[:8]}:"


def test_second_request_is_served_from_the_cache(make_app, make_user, make_parent, fresh_prefix):
    app = make_app(CACHE_KEY_PREFIX=fresh_prefix)
    make_parent(children=3)
    client = log_in(app, make_user())
    with tally_queries(app) as queries:
        first = client.get("/api/stats")
        assert len(queries) == 1
        second = client.get("/api/stats")
        assert len(queries) == 1, "the second request queried the tally again"
    assert first.status_code == second.status_code == 200
    assert second.get_json() == first.get_json()
    assert first.get_json()["bags"] == {"parents": 1, "children": 3}
    area_id = client_area(app, "worker")
    with app.app_context():
        entry = cache.get(f"v{figures.CACHE_SCHEMA}:figures:entry:{area_id}")
    assert entry["value"]["bags"] == {"parents": 1, "children": 3}


def test_hits_and_misses_are_counted(make_app, make_user, fresh_prefix):
    app = make_app(CACHE_KEY_PREFIX=fresh_prefix, BAGTRACK_STATS_TTL_S=60.0)
    client = log_in(app, make_user())

    def counted(result: str) -> float:
        return REGISTRY.get_sample_value("bagtrack_cache_lookups_total", {"result": result}) or 0

    hits, misses = counted("hit"), counted("miss")
    client.get("/api/stats")
    client.get("/api/stats")
    client.get("/api/stats")
    assert (counted("hit") - hits, counted("miss") - misses) == (2, 1)


def test_a_child_scan_shows_in_the_figures_within_the_ttl(make_app, make_user, make_parent, fresh_prefix):
    app = make_app(CACHE_KEY_PREFIX=fresh_prefix, BAGTRACK_STATS_TTL_S=0.2, BAGTRACK_STATS_LOCAL_S=0)
    parent = make_parent(children=2)
    client = log_in(app, make_user())
    before = client.get("/api/stats").get_json()
    assert before["bags"]["children"] == 2
    scan = client.post("/scan/child", data={"parent": parent.qr, "qr": "CHILD0001"}, headers=JSON)
    assert scan.status_code == 201, scan.get_json()
    time.sleep(0.25)
    after = client.get("/api/stats").get_json()
    assert after["bags"]["children"] == 3
    assert after["scans"]["total"] == before["scans"]["total"] + 1


def test_an_office_change_in_one_area_shows_at_once_and_leaves_the_other_areas_cached(
    make_app, make_user, make_parent, fresh_prefix
):
    app = make_app(CACHE_KEY_PREFIX=fresh_prefix, BAGTRACK_STATS_TTL_S=60.0)
    north_parent = make_parent(area="NORTH", children=1)
    make_parent(area="SOUTH", children=4)
    north = log_in(app, make_user("north", area="NORTH"))
    south = log_in(app, make_user("south", area="SOUTH"))
    office = log_in(app, make_user("office", role="biller", area=None))
    assert south.get("/api/stats").get_json()["parents"]["complete"] == 0
    assert north.get("/api/stats").get_json()["parents"]["complete"] == 0
    closed = office.post(f"/bags/{north_parent.qr}/close", headers=JSON)
    assert closed.status_code == 200, closed.get_json()
    with tally_queries(app) as queries:
        assert south.get("/api/stats").get_json()["parents"]["complete"] == 0
        assert queries == []
        assert north.get("/api/stats").get_json()["parents"]["complete"] == 1
        assert len(queries) == 1


def test_a_scan_writes_nothing_to_redis_and_its_worker_drops_what_it_remembered(
    make_app, make_user, make_parent, fresh_prefix
):
    app = make_app(CACHE_KEY_PREFIX=fresh_prefix, BAGTRACK_STATS_TTL_S=60.0, BAGTRACK_STATS_LOCAL_S=30)
    parent = make_parent(children=1)
    client = log_in(app, make_user())
    assert client.get("/api/stats").get_json()["bags"]["children"] == 1
    with app.app_context():
        tokens = cache.get_many(f"{figures.NAMESPACE}:token:all")
    scan = client.post("/scan/child", data={"parent": parent.qr, "qr": "CHILD0003"}, headers=JSON)
    assert scan.status_code == 201, scan.get_json()
    with app.app_context():
        assert cache.get_many(f"{figures.NAMESPACE}:token:all") == tokens
    # The shared entry is still within its TTL: this worker reads it again instead of its own memory.
    with tally_queries(app) as queries:
        assert client.get("/api/stats").get_json()["bags"]["children"] == 1
        assert queries == []


def test_a_new_bill_shows_at_once_to_the_office_and_never_to_a_dispatcher(make_app, make_user, fresh_prefix):
    app = make_app(CACHE_KEY_PREFIX=fresh_prefix, BAGTRACK_STATS_TTL_S=60.0)
    dispatcher = log_in(app, make_user())
    office = log_in(app, make_user("office", role="biller", area=None))
    assert "bills" not in dispatcher.get("/api/stats").get_json()
    assert office.get("/api/stats").get_json()["bills"] == {"open": 0, "closed": 0}
    created = office.post("/bills", data={"bill_no": "B-100", "capacity": "5"}, headers=JSON)
    assert created.status_code == 201, created.get_json()
    assert "bills" not in dispatcher.get("/api/stats").get_json()
    assert office.get("/api/stats").get_json()["bills"] == {"open": 1, "closed": 0}


def test_figures_expire_after_the_ttl(make_app, make_user, fresh_prefix):
    app = make_app(CACHE_KEY_PREFIX=fresh_prefix, BAGTRACK_STATS_TTL_S=0.2, BAGTRACK_STATS_LOCAL_S=0)
    client = log_in(app, make_user())
    with tally_queries(app) as queries:
        client.get("/api/stats")
        client.get("/api/stats")
        assert len(queries) == 1
        time.sleep(0.25)
        client.get("/api/stats")
        assert len(queries) == 2


@pytest.mark.redis
def test_each_worker_reuses_the_figures_it_read_for_a_moment(make_app, make_user, make_parent, fresh_prefix):
    app = make_app(CACHE_KEY_PREFIX=fresh_prefix, BAGTRACK_STATS_LOCAL_S=30)
    client = log_in(app, make_user())
    client.get("/api/stats")
    with app.app_context():
        # Another worker's write: it changes the tokens in Redis, not this worker's memory.
        cache.set(f"{figures.NAMESPACE}:token:all", "changed elsewhere", timeout=0)
    reads = []
    with app.app_context():  # the writes below run in this worker
        original = cache.get_many
        cache.get_many = lambda *keys: reads.append(keys) or original(*keys)
        try:
            assert client.get("/api/stats").status_code == 200
            assert reads == []
            # A scan in this worker drops what it remembered at once: the next answer comes from Redis.
            make_parent("SB00009", children=1)
            assert client.get("/api/stats").status_code == 200
            assert reads
        finally:
            cache.get_many = original


def slow_counted(monkeypatch, seconds: float) -> list:
    calls = []
    original = stats.tally_figures

    def counted(session, area_id):
        calls.append(area_id)
        time.sleep(seconds)
        return original(session, area_id)

    monkeypatch.setattr(stats, "tally_figures", counted)
    return calls


def figures_from_threads(app, count: int) -> list[dict]:
    answers: list[dict] = []
    start = threading.Barrier(count)

    def ask():
        with app.app_context():
            start.wait()
            answers.append(figures.dashboard_figures(db.session, None))
            db.session.remove()

    threads = [threading.Thread(target=ask) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


@pytest.mark.redis
def test_an_expired_entry_is_recomputed_once_across_workers(make_app, monkeypatch, fresh_prefix):
    app = make_app(CACHE_KEY_PREFIX=fresh_prefix, BAGTRACK_STATS_TTL_S=0.2, BAGTRACK_STATS_LOCAL_S=0)
    with app.app_context():
        figures.dashboard_figures(db.session, None)
    time.sleep(0.25)
    calls = slow_counted(monkeypatch, 0.1)
    answers = figures_from_threads(app, 12)
    assert len(calls) == 1
    assert len(answers) == 12


@pytest.mark.redis
def test_without_any_entry_the_others_wait_for_the_one_recomputing(make_app, monkeypatch, fresh_prefix):
    app = make_app(CACHE_KEY_PREFIX=fresh_prefix)
    calls = slow_counted(monkeypatch, 0.1)
    answers = figures_from_threads(app, 12)
    assert len(calls) == 1
    assert {answer["generated_at"] for answer in answers} == {answers[0]["generated_at"]}


@pytest.mark.redis
def test_entries_live_under_a_versioned_prefix_in_redis(make_app, make_user, fresh_prefix):
    import redis

    app = make_app(CACHE_KEY_PREFIX=fresh_prefix)
    log_in(app, make_user()).get("/api/stats")
    keys = redis.Redis.from_url(app.config["REDIS_URL"]).keys(f"{fresh_prefix}*")
    assert f"{fresh_prefix}v{figures.CACHE_SCHEMA}:figures:entry:{client_area(app, 'worker')}".encode() in keys


def test_a_redis_outage_means_direct_queries_not_errors(make_app, make_user, make_parent):
    app = make_app(
        REDIS_URL=UNREACHABLE_REDIS,
        CACHE_TYPE="RedisCache",
        CACHE_REDIS_URL=UNREACHABLE_REDIS,
        RATELIMIT_STORAGE_URI=f"bagtrack+{UNREACHABLE_REDIS}",
    )
    parent = make_parent(children=1)
    client = log_in(app, make_user())
    started = time.perf_counter()
    first = client.get("/api/stats")
    assert first.status_code == 200 and first.get_json()["bags"]["children"] == 1
    scan = client.post("/scan/child", data={"parent": parent.qr, "qr": "CHILD0003"}, headers=JSON)
    assert scan.status_code == 201, scan.get_json()
    second = client.get("/api/stats")
    assert second.status_code == 200 and second.get_json()["bags"]["children"] == 2
    assert time.perf_counter() - started < 2


def test_each_worker_reuses_the_charts_it_drew_while_scans_arrive(
    make_app, make_user, make_parent, fresh_prefix, monkeypatch
):
    from bagtrack import floor

    app = make_app(CACHE_KEY_PREFIX=fresh_prefix, BAGTRACK_STATS_LOCAL_S=30)
    client = log_in(app, make_user())
    drawn = []
    original = floor.floor_charts
    monkeypatch.setattr(floor, "floor_charts", lambda *args, **kwargs: drawn.append(1) or original(*args, **kwargs))
    assert client.get("/dashboard/live").status_code == 200
    assert client.get("/").status_code == 200
    assert len(drawn) == 1
    with app.app_context():  # the scans below run in this worker
        # The floor scans all the time: its scans leave the charts to their reuse time.
        make_parent("SB00009", children=1)
        assert client.get("/dashboard/live").status_code == 200
    assert len(drawn) == 1
    # An office write changes what the charts show: they are drawn again.
    with app.app_context():
        figures.announce(None, [client_area(app, "worker")])
    assert client.get("/dashboard/live").status_code == 200
    assert len(drawn) == 2


@pytest.mark.redis
def test_workers_share_the_charts_one_of_them_drew(make_app, make_user, fresh_prefix, monkeypatch):
    from bagtrack import floor

    drawn = []
    original = floor.floor_charts
    monkeypatch.setattr(floor, "floor_charts", lambda *args, **kwargs: drawn.append(1) or original(*args, **kwargs))
    first, second = (make_app(CACHE_KEY_PREFIX=fresh_prefix) for _ in range(2))
    make_user()
    for app in (first, second, first):
        assert log_in(app, "worker").get("/dashboard/live").status_code == 200
    assert len(drawn) == 1


def scan_ids(page) -> list[str]:
    """The scan ids of the latest-scans table on a dashboard page, in order."""
    import re

    return re.findall(r'data-scan-id="(\d+)"', page.get_data(as_text=True))


@pytest.mark.redis
def test_the_latest_scans_are_drawn_once_per_area_scope_and_shared_by_workers(
    make_app, make_user, make_parent, fresh_prefix, monkeypatch
):
    from bagtrack import queries

    drawn = []
    original = queries.scan_rows
    monkeypatch.setattr(queries, "scan_rows", lambda *args, **kwargs: drawn.append(1) or original(*args, **kwargs))
    north_parent = make_parent(area="NORTH", children=2)
    make_parent(area="SOUTH", children=1)
    make_user("north", area="NORTH")
    make_user("north2", area="NORTH")
    make_user("south", area="SOUTH")
    first, second = (make_app(CACHE_KEY_PREFIX=fresh_prefix, BAGTRACK_STATS_TTL_S=60.0) for _ in range(2))

    north_pages = [log_in(app, name).get("/") for app, name in ((first, "north"), (second, "north2"), (first, "north"))]
    assert len(drawn) == 1, "one table for the area, whichever worker and user asked"
    assert {tuple(scan_ids(page)) for page in north_pages} == {tuple(scan_ids(north_pages[0]))}
    assert len(scan_ids(north_pages[0])) == 3  # the parent and its two children
    assert north_parent.qr in north_pages[0].get_data(as_text=True)

    south_page = log_in(second, "south").get("/dashboard/live")
    assert len(drawn) == 2
    assert len(scan_ids(south_page)) == 2 and north_parent.qr not in south_page.get_data(as_text=True)


def test_the_latest_scans_show_a_scan_within_the_ttl_and_an_office_write_at_once_to_its_writer(
    make_app, make_user, make_parent, fresh_prefix
):
    app = make_app(CACHE_KEY_PREFIX=fresh_prefix, BAGTRACK_STATS_TTL_S=0.3, BAGTRACK_STATS_LOCAL_S=0)
    parent = make_parent(area="NORTH", children=2)
    floor_user = log_in(app, make_user("north", area="NORTH"))
    before = scan_ids(floor_user.get("/"))
    scan = floor_user.post("/scan/child", data={"parent": parent.qr, "qr": "CHILD0009"}, headers=JSON)
    assert scan.status_code == 201, scan.get_json()
    time.sleep(0.35)
    after = floor_user.get("/").get_data(as_text=True)
    assert "CHILD0009" in after and len(scan_ids(floor_user.get("/"))) == len(before) + 1

    slow = make_app(CACHE_KEY_PREFIX=fresh_prefix, BAGTRACK_STATS_TTL_S=60.0)
    office = log_in(slow, make_user("office", role="biller", area=None))
    shown = scan_ids(office.get("/"))
    closed = office.post(f"/bags/{parent.qr}/close", headers=JSON)
    assert closed.status_code == 200, closed.get_json()
    # The writer's next dashboard waits for a new table that shows the write.
    assert scan_ids(office.get("/"))[0] not in shown


def figures_server(database_url, tmp_path, secret: str, ttl_s: str):
    """Two gevent workers on PostgreSQL and Redis that log every request and every statement with its request id."""
    from servers import Gunicorn, on_redis

    environment = on_redis(
        database_url,
        secret,
        BAGTRACK_STATS_TTL_S=ttl_s,
        BAGTRACK_STATS_LOCAL_S="0",
        BAGTRACK_SLOW_REQUEST_MS="0.001",
        BAGTRACK_SLOW_QUERY_MS="0.001",
    )
    return Gunicorn(tmp_path / "gunicorn.log", environment, "-w", "2")


def stats_requests_and_figures_statements(server) -> tuple[list[str], set[str]]:
    """The ids of the ``/api/stats`` requests in order, and of the requests that ran the figures' statement."""
    import json

    entries = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    stats_requests = [entry["request_id"] for entry in entries if entry.get("endpoint") == "api.stats"]
    figures_statements = {
        entry.get("request_id") for entry in entries if "sum(CASE WHEN (tally." in entry.get("statement", "")
    }
    return stats_requests, figures_statements


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_an_old_entry_is_recomputed_beside_the_request_that_found_it(database_url, make_user, make_parent, tmp_path):
    """Under gunicorn's gevent workers: past its TTL the entry is served at once and recomputed in a greenlet of
    its own, so no request but the very first waits for the figures' statement; the new figures follow."""
    from helpers import PASSWORD
    from servers import http_login

    parent_qr = make_parent().qr
    make_user("floor")
    server = figures_server(database_url, tmp_path, "figures-serving-test-secret-figures-serving", "0.5")
    try:
        browser = http_login(server.base, "floor", PASSWORD)
        stats_url = f"{server.base}/api/stats"
        before = browser.get(stats_url, timeout=5).json()["bags"]["children"]
        scan = browser.post(f"{server.base}/scan/child", data={"parent": parent_qr, "qr": "BESIDE001"}, timeout=5)
        assert scan.status_code == 201, scan.text
        time.sleep(0.7)
        seen, deadline = [], time.monotonic() + 5
        while time.monotonic() < deadline and (not seen or seen[-1] != before + 1):
            seen.append(browser.get(stats_url, timeout=5).json()["bags"]["children"])
            time.sleep(0.05)
        assert seen[-1] == before + 1, seen
    finally:
        server.terminate(timeout=30)
    stats_requests, figures_statements = stats_requests_and_figures_statements(server)
    assert len(stats_requests) == len(seen) + 1
    # The first request found no entry and computed it; every later one found one, fresh or only old.
    assert stats_requests[0] in figures_statements
    assert not figures_statements & set(stats_requests[1:]), figures_statements
    assert len(figures_statements) >= 2


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_an_office_write_waits_for_new_figures_only_for_its_writer(database_url, make_user, make_parent, tmp_path):
    """Under gunicorn's gevent workers: the biller who closed a parent sees it on their next request, which
    recomputes the figures; a dispatcher of that area is served the old figures at once while a greenlet
    recomputes them, and sees the close right after."""
    from helpers import PASSWORD
    from servers import http_login

    parent_qr = make_parent(area="NORTH", children=1).qr
    make_user("floor", area="NORTH")
    make_user("office", role="biller", area=None)
    server = figures_server(database_url, tmp_path, "figures-writer-test-secret-figures-writer-test", "60")
    try:
        stats_url = f"{server.base}/api/stats"
        floor = http_login(server.base, "floor", PASSWORD)
        office = http_login(server.base, "office", PASSWORD)
        assert floor.get(stats_url, timeout=5).json()["parents"]["complete"] == 0
        assert office.get(stats_url, timeout=5).json()["parents"]["complete"] == 0
        closed = office.post(f"{server.base}/bags/{parent_qr}/close", timeout=5)
        assert closed.status_code == 200, closed.text
        assert office.get(stats_url, timeout=5).json()["parents"]["complete"] == 1
        seen, deadline = [], time.monotonic() + 5
        while time.monotonic() < deadline and (not seen or seen[-1] != 1):
            seen.append(floor.get(stats_url, timeout=5).json()["parents"]["complete"])
            time.sleep(0.05)
    finally:
        server.terminate(timeout=30)
    assert seen[0] == 0 and seen[-1] == 1, seen
    stats_requests, figures_statements = stats_requests_and_figures_statements(server)
    assert len(stats_requests) == 3 + len(seen)
    # Both first requests computed their scope's figures, and so did the writer's request after the close.
    assert set(stats_requests[:3]) <= figures_statements, (stats_requests, figures_statements)
    # The dispatcher's requests never waited for a recomputation.
    assert not figures_statements & set(stats_requests[3:]), figures_statements
