"""Rate-limit counters shared in Redis, spent by each worker from a local budget.

A fixed-window counter in Redis costs every limited request a round trip,
though almost no request comes near its limit. Here each worker keeps, per
counter, the count Redis last gave it and the hits it has admitted since,
and tells Redis only when those local hits reach its *budget*: a sixteenth
of what was left of the limit at the last exchange. A scanner's 300 scans a
minute are then counted in Redis every eighteen scans or so at the start of
a window, and on every scan as the limit nears; a limit of 16 or fewer (the
login limits) is counted in Redis on every hit, exactly as before.

What that costs in precision: hits admitted by other workers are seen only
at the next exchange, so when one counter is spent through several workers
at once a window can admit up to (workers − 1) sixteenths of its limit more
than the limit. A window's end is taken from Redis's own expiry. When Redis
fails, the exchange raises and Flask-Limiter counts in memory, as before.

The scheme is ``bagtrack+redis://`` (or ``bagtrack+rediss://``): the rest
of the address is Redis's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from limits.storage import RedisStorage

SCHEME_PREFIX = "bagtrack+"
# A worker may admit this share of what is left of a window before it counts in Redis.
BUDGET_SHARE = 16
# Windows a worker remembers; past this, the ended ones are dropped.
WINDOWS_MAX = 10_000

# Add hits to a counter, start its window if they are the first, and say how many and until when.
EXCHANGE = """
local count = redis.call('INCRBY', KEYS[1], ARGV[1])
if count == tonumber(ARGV[1]) then
    redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return {count, redis.call('PTTL', KEYS[1])}
"""


def limit_of(key: str) -> int:
    """The limit a counter's key is for: ``limits`` ends every key with amount, multiples and granularity."""
    return int(key.rsplit("/", 3)[1])


@dataclass
class Window:
    """One counter as a worker sees it: Redis's count at the last exchange and the hits admitted since."""

    ends_at: float
    counted: int = 0
    pending: int = 0
    budget: int = 0


class BudgetedRedisStorage(RedisStorage):
    """``limits``' Redis storage, with fixed-window counting spent from local budgets."""

    STORAGE_SCHEME = ["bagtrack+redis", "bagtrack+rediss"]

    def __init__(self, uri: str, **options) -> None:
        super().__init__(uri.removeprefix(SCHEME_PREFIX), **options)
        self.windows: dict[str, Window] = {}

    def initialize_storage(self, uri: str) -> None:
        super().initialize_storage(uri)
        self.exchange = self.get_connection().register_script(EXCHANGE)

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.monotonic()
        window = self.windows.get(key)
        if window is None or window.ends_at <= now:
            if len(self.windows) >= WINDOWS_MAX:
                self.windows = {name: kept for name, kept in self.windows.items() if kept.ends_at > now}
            window = self.windows[key] = Window(ends_at=now + expiry)
        if window.pending + amount <= window.budget:
            window.pending += amount
            return window.counted + window.pending
        # Taken out first: other greenlets of this worker go on counting while Redis answers.
        sent, window.pending, window.budget = window.pending + amount, 0, 0
        try:
            count, ttl_ms = self.exchange([self.prefixed_key(key)], [sent, expiry])
        except Exception:
            window.pending += sent
            raise
        window.counted = max(window.counted, int(count))
        if int(ttl_ms) > 0:
            window.ends_at = now + int(ttl_ms) / 1000
        window.budget = max(0, limit_of(key) - window.counted) // BUDGET_SHARE
        return window.counted + window.pending

    def get(self, key: str) -> int:
        window = self.windows.get(key)
        pending = window.pending if window is not None and window.ends_at > time.monotonic() else 0
        return super().get(key) + pending

    def clear(self, key: str) -> None:
        self.windows.pop(key, None)
        super().clear(key)

    def reset(self) -> int | None:
        self.windows.clear()
        return super().reset()
