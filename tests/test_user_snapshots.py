"""Who is asking: requests share a snapshot of the logged-in user, and a change of a user reaches every worker.

With Redis a worker keeps a snapshot while the users' token that every change
stamps stays the same, looking at it at most every ``BAGTRACK_USER_CACHE_S``;
without Redis, or while it fails, a snapshot lives that long.
"""

from __future__ import annotations

import time
import uuid

import pytest
from helpers import log_in, statements_sent

from bagtrack import signin
from bagtrack.extensions import cache

SHORT_S = 0.2
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


def user_reads(app):
    """The statements that read a user's row, as the snapshot does."""
    return statements_sent(
        app, lambda statement: "FROM app_user" in statement and statement.lstrip().upper().startswith("SELECT")
    )


def stats_answers(client, count: int) -> list[int]:
    return [client.get("/api/stats").status_code for _ in range(count)]


def test_without_redis_a_snapshot_lives_its_short_life(make_app, make_user):
    app = make_app(REDIS_URL="", BAGTRACK_USER_CACHE_S=SHORT_S)
    client = log_in(app, make_user())
    with user_reads(app) as reads:
        assert stats_answers(client, 5) == [200] * 5
        assert len(reads) <= 1
        time.sleep(SHORT_S * 1.5)
        read_before = len(reads)
        assert stats_answers(client, 1) == [200]
    assert len(reads) == read_before + 1


@pytest.mark.redis
def test_with_redis_a_snapshot_is_kept_until_another_worker_tells_a_change(make_app, make_user):
    prefix = f"bagtrack-test-{uuid.uuid4().hex[:8]}:"
    app = make_app(CACHE_KEY_PREFIX=prefix, BAGTRACK_USER_CACHE_S=SHORT_S)
    other_worker = make_app(CACHE_KEY_PREFIX=prefix, BAGTRACK_USER_CACHE_S=SHORT_S)
    client = log_in(app, make_user())
    with user_reads(app) as reads:
        assert stats_answers(client, 3) == [200] * 3
        time.sleep(SHORT_S * 1.5)
        read_before = len(reads)
        assert stats_answers(client, 5) == [200] * 5
        # Past the short life, and the users' token is unchanged: nobody was read again.
        assert len(reads) == read_before
        with other_worker.app_context():
            # What forget_signed_in stamps after a change committed in another process.
            cache.set(signin.USERS_TOKEN_KEY, "changed elsewhere", timeout=0)
        time.sleep(SHORT_S * 1.5)
        assert stats_answers(client, 2) == [200] * 2
    assert len(reads) == read_before + 1


def test_while_redis_fails_a_snapshot_lives_its_short_life(make_app, make_user):
    app = make_app(
        REDIS_URL=UNREACHABLE_REDIS,
        CACHE_TYPE="RedisCache",
        CACHE_REDIS_URL=UNREACHABLE_REDIS,
        RATELIMIT_STORAGE_URI=f"bagtrack+{UNREACHABLE_REDIS}",
        BAGTRACK_USER_CACHE_S=SHORT_S,
    )
    client = log_in(app, make_user())
    with user_reads(app) as reads:
        assert stats_answers(client, 3) == [200] * 3
        time.sleep(SHORT_S * 1.5)
        read_before = len(reads)
        assert stats_answers(client, 1) == [200]
    assert len(reads) == read_before + 1
