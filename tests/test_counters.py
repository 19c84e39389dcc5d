"""Rate-limit counters in Redis, spent by each worker from a local budget: limits hold across workers."""

from __future__ import annotations

import os
import time
import uuid

import pytest
from limits import parse
from limits.strategies import FixedWindowRateLimiter
from redis.exceptions import ConnectionError as RedisConnectionError

from bagtrack.counters import BudgetedRedisStorage

pytestmark = pytest.mark.redis


@pytest.fixture
def workers():
    """Make storages as gunicorn's workers would, all on one Redis, under a prefix of this test's own."""
    prefix = f"bagtrack-test-{uuid.uuid4().hex[:8]}:limits"
    made = []

    def make(count: int = 1) -> list[FixedWindowRateLimiter]:
        storages = [
            BudgetedRedisStorage(f"bagtrack+{os.environ['REDIS_URL']}", key_prefix=prefix) for _ in range(count)
        ]
        made.extend(storages)
        return [FixedWindowRateLimiter(storage) for storage in storages]

    yield make
    if made:
        made[0].reset()


def exchanges_of(limiter: FixedWindowRateLimiter) -> list[int]:
    """Count the storage's round trips to Redis from now on."""
    storage, calls = limiter.storage, []
    exchange = storage.exchange

    def counted(*args, **kwargs):
        calls.append(1)
        return exchange(*args, **kwargs)

    storage.exchange = counted
    return calls


def admitted(limiters, rate: str, hits: int, who: str = "user:1") -> int:
    """Hit one counter ``hits`` times, taking the workers in turn; how many hits were let through."""
    limit = parse(rate)
    return sum(limiters[number % len(limiters)].hit(limit, who, "scan") for number in range(hits))


def test_one_worker_admits_exactly_the_limit_and_rarely_asks_redis(workers):
    (worker,) = workers()
    calls = exchanges_of(worker)
    assert admitted([worker], "300/minute", 300) == 300
    # Budgets of a sixteenth of what is left: 18 hits per exchange at first, one when fewer than 16 are left.
    assert len(calls) <= 65
    assert admitted([worker], "300/minute", 100) == 0


def test_a_small_limit_is_exact_across_workers(workers):
    # Limits of 16 or fewer, the login limits among them, are counted in Redis on every hit.
    assert admitted(workers(3), "10/minute", 30) == 10


def test_a_large_limit_spent_through_several_workers_overshoots_by_at_most_their_budgets(workers):
    limiters = workers(3)
    let_through = admitted(limiters, "320/minute", 600)
    # Each of the other two workers may hold up to a sixteenth of the limit it has not yet reported.
    assert 320 <= let_through <= 320 + 2 * 320 // 16
    # Another user's allowance is untouched.
    assert admitted(limiters, "320/minute", 10, who="user:2") == 10


def test_a_new_window_starts_when_redis_ends_the_old_one(workers):
    (worker,) = workers()
    assert admitted([worker], "3/second", 5) == 3
    time.sleep(1.1)
    assert admitted([worker], "3/second", 5) == 3


def test_hits_counted_while_redis_is_away_are_reported_when_it_answers(workers):
    first, second = workers(2)
    limit = parse("320/minute")
    assert all(first.hit(limit, "user:1", "scan") for _ in range(10))
    exchange = first.storage.exchange

    def unreachable(*_args, **_kwargs):
        raise RedisConnectionError("Redis is away")

    first.storage.exchange = unreachable
    # The budget runs out: the exchange fails and the hits stay counted locally (the limiter then counts in memory).
    with pytest.raises(Exception, match="Redis is away"):
        for _ in range(40):
            first.hit(limit, "user:1", "scan")
    first.storage.exchange = exchange
    assert first.hit(limit, "user:1", "scan")
    # The other worker sees every hit the first one admitted.
    seen = second.get_window_stats(limit, "user:1", "scan").remaining
    assert seen == 320 - first.storage.get(limit.key_for("user:1", "scan"))
    assert seen <= 320 - 11


@pytest.mark.postgres
@pytest.mark.slow
def test_a_scan_limit_holds_across_gunicorn_workers(database_url, make_user, make_parent, tmp_path):
    """Two gevent workers on PostgreSQL and Redis: the scan limit holds, the dashboard is served from the cache."""
    from helpers import PASSWORD
    from servers import Gunicorn, http_login, on_redis

    parent_qr = make_parent().qr
    make_user("handheld")
    environment = on_redis(database_url, "counters-serving-test-secret-counters", BAGTRACK_LIMIT_SCAN="20/minute")
    server = Gunicorn(tmp_path / "gunicorn.log", environment, "-w", "2")
    try:
        scanner = http_login(server.base, "handheld", PASSWORD)
        # A new connection each time, so both workers count some of the scans.
        answers = [
            scanner.post(
                f"{server.base}/scan/child",
                data={"parent": parent_qr, "qr": f"LIMITED{number:03d}"},
                headers={"Connection": "close"},
                timeout=5,
            ).status_code
            for number in range(28)
        ]
        charts = [
            scanner.get(f"{server.base}/dashboard/live", headers={"Connection": "close"}, timeout=5).status_code
            for _ in range(4)
        ]
    finally:
        server.terminate(timeout=30)
    accepted = answers.count(201)
    # One other worker may hold a sixteenth of what was left unreported: at most one scan over.
    assert 20 <= accepted <= 21, answers
    assert set(answers) == {201, 429}
    assert charts == [200] * 4
