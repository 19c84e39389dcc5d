"""The dashboard figures and charts, served from the cache and invalidated by the events that change them.

Figures, and the dashboard's charts (rendered), are cached per area scope (one entry
per dispatch area, one for all areas). An entry is fresh for ``BAGTRACK_STATS_TTL_S`` seconds (5 by default)
and only while nothing it sums has changed since: the office's writes
(bills, loading, closing a parent short, imports) announce, after their
commit, which tallies they changed (:func:`announce`), and
that stamps a new random token on the area's and on the bills' figures. An
entry remembers the tokens it was computed under, so a write that commits
during a recomputation still makes the result stale.

Scans on the floor (parents, children, undo) arrive many times a second and
announce nothing to Redis: the figures they change are at most one TTL old,
which is what the dashboard promises, and a scan costs no Redis write.

The dashboard's latest scans (rendered) are cached the same way, per area
scope: they are figures of the floor like the others, a few seconds fresh.

Each worker also keeps the figures, charts and latest scans it last saw for
``BAGTRACK_STATS_LOCAL_S`` seconds (1 s by default), so a dashboard polled by
many screens costs no round trip to Redis; a write in the same worker drops
them at once (a floor scan, only the figures), a write in another worker is
seen within that second.

When an entry is stale, one worker (the holder of a short lock) recomputes it
while the others serve the stale entry; with no entry at all they wait briefly
for the holder. An entry that is only old (nothing it sums was announced
since), or stale by another user's write, is recomputed beside the request
that found it, in a greenlet of its own under gevent, and that request
serves the old entry; the writer's own requests wait for the recomputation,
so the next page of whoever made a write shows it (within a worker's
remembered second when the page lands on another worker).

Every cache call fails open: a Redis error means a direct query, and Redis
is left alone for ``BAGTRACK_REDIS_RETRY_S`` seconds so an outage costs one
timeout, not one per request.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable

from flask import copy_current_request_context, current_app, has_request_context, render_template
from flask_login import current_user
from markupsafe import Markup

from . import floor, observability, queries, stats
from .access import area_scope
from .extensions import cache, cache_redis
from .models import OFFICE_TALLY

log = logging.getLogger(__name__)

# Bump when the shape of a cached entry changes: a deploy then never reads the old shape.
CACHE_SCHEMA = 3
NAMESPACE = f"v{CACHE_SCHEMA}:figures"
# A recomputation takes milliseconds; the lock only outlives a worker that died holding it.
LOCK_MS = 2000
# Without any entry to serve, wait this long for the lock holder, then query directly.
WAIT_S = 0.25
POLL_S = 0.01
# Stale entries are kept this many TTLs so they can be served during a recomputation.
KEEP_TTLS = 12
# The dashboard's latest scans.
LATEST_SCANS = 20


def dashboard_figures(session, area_id: int | None) -> dict:
    """The figures of ``/api/stats`` for one area (``None``: all areas), at most a TTL old.

    A figure never stays stale after the write that changed it has been
    announced, except for the few milliseconds its recomputation takes. A
    cache failure falls back to computing the figures.
    """
    scope = "all" if area_id is None else str(area_id)
    return _served(scope, scope, lambda: stats.tally_figures(session, area_id))


def floor_charts(session, area_id: int | None, *, with_bills: bool) -> Markup:
    """The dashboard's charts (:func:`floor.floor_charts`) as HTML, cached like the figures of the same scope.

    Drawing them takes seven statements, and rendering their bars and tables
    costs more than the rest of the dashboard: the entry holds the rendered
    HTML, so each is drawn and rendered once per entry, whichever worker
    serves the screens. Screens poll the dashboard every few seconds; scans
    on the floor leave a worker's remembered charts to their second (some
    scan lands in every second); office writes drop them with the figures.
    """
    scope = "all" if area_id is None else str(area_id)
    name = _charts_key(scope, with_bills)

    def draw() -> str:
        charts = floor.floor_charts(session, area_id, with_bills=with_bills)
        return render_template("dashboard/_charts.html", charts=charts, with_bills=with_bills)

    return Markup(_served(name, scope, draw))


def latest_scans(session, user) -> Markup:
    """The latest scans ``user`` may see as the dashboard's table, cached per area scope like the charts.

    Twenty rows with their links cost a dashboard more to fetch and render
    than everything else on it but the charts; a busy floor changes them
    many times a second, and screens poll them every few seconds. Like the
    figures they may be a TTL old, and an office write makes them stale at
    once. ``user`` must be a plain user object (not the request's proxy):
    the table may be drawn in a greenlet of its own. Its rows depend on the
    user's area scope alone, so every user of a scope shares one table.
    """
    area_id = area_scope(user)
    scope = "all" if area_id is None else str(area_id)

    def draw() -> str:
        rows = queries.scan_rows(session, user, limit=LATEST_SCANS)
        return render_template("dashboard/_scan_table.html", scans=rows)

    return Markup(_served(_scans_key(scope), scope, draw))


def _served(name: str, scope: str, compute):
    """The cached value ``name`` of an area ``scope``, computed by one worker at a time when it is stale."""
    seen = _state()["seen"].get(name)
    if seen is not None and seen[0] > time.monotonic():
        observability.count_cache(hit=True)
        return seen[1]
    keys = (_entry_key(name), _token_key(scope), _token_key("bills"))
    entry, *tokens = _read(keys)
    if entry is not None and _current(entry, tokens):
        observability.count_cache(hit=True)
        return _remember(name, entry["value"])
    lock = _take_lock(name)
    if lock is None:
        # Another worker is recomputing (or the cache is down): serve what there is.
        served = entry["value"] if entry is not None else _wait_for_entry(keys)
        observability.count_cache(hit=served is not None)
        return served if served is not None else compute()
    if (
        entry is not None
        and not _written_by_this_user(entry, tokens)
        and _recompute_beside(keys[0], tokens, compute, lock)
    ):
        # Only old, or changed by someone else's write: this request serves it.
        observability.count_cache(hit=True)
        return _remember(name, entry["value"])
    observability.count_cache(hit=False)
    try:
        value = compute()
        _store(keys[0], {"value": value, "at": time.time(), "tokens": tokens})
    finally:
        _release(lock)
    return _remember(name, value)


def _recompute_beside(key: str, tokens: list, compute, lock: str) -> bool:
    """Recompute an entry in a greenlet of its own, beside the request that found it old (False: not under gevent).

    A recomputation on the request path made that request the floor's
    slowest; under gevent the request serves the old entry at once and the
    worker recomputes it while the request's answer goes out. After an
    announced write the writer's own requests still recompute on the request
    path, so the writer's next page shows its write; everyone else's are
    served the old entry, as they are while another worker recomputes it.
    """
    if not (_under_gevent() and has_request_context()):
        return False
    import gevent

    @copy_current_request_context
    def recompute() -> None:
        try:
            _store(key, {"value": compute(), "at": time.time(), "tokens": tokens})
        except Exception:
            log.exception("recomputing %s failed; the next request tries again", key)
        finally:
            _release(lock)

    gevent.spawn(recompute)
    return True


def _written_by_this_user(entry: dict, tokens: list) -> bool:
    """Whether a token that changed since ``entry`` was computed was stamped by the current user's write."""
    writer = _writer()
    if writer is None:
        return False
    mark = f":{writer}"
    return any(token != seen and str(token).endswith(mark) for token, seen in zip(tokens, entry["tokens"], strict=True))


def _writer() -> str | None:
    """Who the current request acts for, as written into the tokens its writes stamp (None: no user)."""
    if not has_request_context() or not current_user.is_authenticated:
        return None
    return str(current_user.get_id())


def _under_gevent() -> bool:
    """Whether this process runs on gevent (gunicorn's gevent workers patch the socket module)."""
    try:
        from gevent import monkey
    except ImportError:
        return False
    return monkey.is_module_patched("socket")


def _remember(name: str, value):
    local_s = current_app.config["BAGTRACK_STATS_LOCAL_S"]
    if local_s > 0:
        _state()["seen"][name] = (time.monotonic() + local_s, value)
    return value


# Scans on the floor: many a second, so they drop only this worker's remembered figures.
FLOOR_SCANS = ("parent", "child", "undo")


def _charts_key(scope: str, with_bills: bool) -> str:
    return f"charts:{scope}:{'bills' if with_bills else 'floor'}"


def _scans_key(scope: str) -> str:
    return f"scans:{scope}"


def announce(scan_kind: str | None, area_ids: Iterable[int]) -> None:
    """Called by the ledger after a commit that changed the tallies of ``area_ids`` (one scan of ``scan_kind``).

    A scan on the floor (a parent started or resumed, a child put into or
    taken out of one) drops this worker's remembered figures of its area
    (its charts and latest scans keep their second); the shared entry
    expires within its TTL. Any other write (closing a
    parent short, loading or unloading one, corrections, imports, and with
    no scan kind) stamps a new token on its area's figures; a change to the
    office tally (bills created, closed, reopened or cancelled) on the bill
    figures that every scope shows. The write is committed by then: nothing
    here may turn it into an error.
    """
    try:
        for area_id in area_ids:
            if area_id == OFFICE_TALLY:
                _write_tokens(["bills"])
            elif scan_kind in FLOOR_SCANS:
                _forget_seen([str(area_id), "all"], charts=False)
            else:
                _write_tokens([str(area_id), "all"])
    except Exception:
        log.exception("announcing changed figures failed")


def _forget_seen(scopes: list[str], *, charts: bool = True) -> None:
    seen = _state()["seen"]
    if "bills" in scopes:
        seen.clear()  # every scope shows the bill figures
    for scope in scopes:
        seen.pop(scope, None)
        if charts:
            seen.pop(_charts_key(scope, True), None)
            seen.pop(_charts_key(scope, False), None)
            seen.pop(_scans_key(scope), None)


def _entry_key(scope: str) -> str:
    return f"{NAMESPACE}:entry:{scope}"


def _token_key(scope: str) -> str:
    return f"{NAMESPACE}:token:{scope}"


def _lock_key(scope: str) -> str:
    return f"{NAMESPACE}:lock:{scope}"


def _current(entry: dict, tokens: list) -> bool:
    ttl = current_app.config["BAGTRACK_STATS_TTL_S"]
    return entry.get("tokens") == tokens and time.time() - entry.get("at", 0) < ttl


def _state() -> dict:
    return current_app.extensions.setdefault("bagtrack.figures", {"down_until": 0.0, "seen": {}})


def _available() -> bool:
    return time.monotonic() >= _state()["down_until"]


def _failed(action: str) -> None:
    log.warning("cache %s failed; using the database directly", action, exc_info=True)
    _state()["down_until"] = time.monotonic() + current_app.config["BAGTRACK_REDIS_RETRY_S"]


def _read(keys: tuple[str, ...]) -> list:
    if _available():
        try:
            return cache.get_many(*keys)
        except Exception:
            _failed("read")
    return [None] * len(keys)


def _store(key: str, entry: dict) -> None:
    if not _available():
        return
    keep = max(30, int(current_app.config["BAGTRACK_STATS_TTL_S"] * KEEP_TTLS))
    try:
        cache.set(key, entry, timeout=keep)
    except Exception:
        _failed("write")


def _write_tokens(scopes: list[str]) -> None:
    _forget_seen(scopes)
    if not _available():
        return
    # A fresh random token can never equal one an entry was computed under,
    # even after Redis evicted or lost the previous token. It ends with the
    # writer, whose next requests then wait for the figures that show the write.
    token = f"{secrets.token_hex(8)}:{_writer() or ''}"
    client = cache_redis()
    try:
        if client is not None:
            # One MSET: every scan announces, and a pipeline costs more than a command.
            dump = cache.cache.serializer.dumps(token)
            prefix = current_app.config["CACHE_KEY_PREFIX"]
            client.mset({prefix + _token_key(scope): dump for scope in scopes})
        else:
            cache.set_many({_token_key(scope): token for scope in scopes}, timeout=0)
    except Exception:
        _failed("invalidation")


def _take_lock(scope: str) -> str | None:
    """The lock's key when this worker may recompute ``scope`` (``SET NX PX`` on Redis), else None."""
    if not _available():
        return None
    key = _lock_key(scope)
    try:
        client = cache_redis()
        if client is not None:
            taken = client.set(current_app.config["CACHE_KEY_PREFIX"] + key, b"1", nx=True, px=LOCK_MS)
        else:
            taken = cache.add(key, 1, timeout=max(1, LOCK_MS // 1000))
    except Exception:
        _failed("lock")
        return None
    return key if taken else None


def _release(lock_key: str) -> None:
    try:
        cache.delete(lock_key)
    except Exception:
        _failed("unlock")


def _wait_for_entry(keys: tuple[str, ...]) -> dict | None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and _available():
        time.sleep(POLL_S)
        entry, *tokens = _read(keys)
        if entry is not None and _current(entry, tokens):
            return entry["value"]
    return None
