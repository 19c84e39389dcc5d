"""Request ids, structured JSON logs, slow-request logging, readiness and Prometheus metrics.

Every request gets an id (a sane incoming ``X-Request-ID`` is kept, so a
proxy's id follows the request through), stored in ``flask.g.request_id``,
echoed in the response and written on every log line of that request.

Metrics work across gunicorn workers: when ``PROMETHEUS_MULTIPROC_DIR`` is
set (``gunicorn.conf.py`` sets it) each worker writes its samples there and
``/metrics`` adds them up; otherwise the process's default registry is used.
Labels are the Flask endpoint name, never the raw path, so their number stays
bounded whatever URLs clients send.
"""

from __future__ import annotations

import gc
import hmac
import ipaddress
import json
import logging
import os
import re
import sys
import threading
import uuid
from datetime import UTC, datetime
from time import perf_counter

import greenlet
from flask import Flask, current_app, g, has_request_context, request, request_started
from flask_login import AnonymousUserMixin
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from .extensions import db

REQUEST_ID_HEADER = "X-Request-ID"
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Any other method is counted as OTHER: a client inventing methods must not invent label values.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

request_log = logging.getLogger("bagtrack.request")
query_log = logging.getLogger("bagtrack.sql")

# Buckets around the targets: a few milliseconds on the floor, nothing over a second at saturation.
REQUEST_SECONDS = Histogram(
    "bagtrack_request_duration_seconds",
    "Time to answer a request, by Flask endpoint, method and status (its _count is the request count).",
    ["endpoint", "method", "status"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
POOL_SIZE = Gauge("bagtrack_db_pool_size", "Configured database pool size.", multiprocess_mode="livesum")
POOL_CONNECTIONS = Gauge(
    "bagtrack_db_pool_connections", "Open database connections held by the pool.", multiprocess_mode="livesum"
)
POOL_CHECKED_OUT = Gauge(
    "bagtrack_db_pool_checked_out", "Database connections in use by requests.", multiprocess_mode="livesum"
)
POOL_OVERFLOW = Gauge(
    "bagtrack_db_pool_overflow", "Open connections beyond the pool size.", multiprocess_mode="livesum"
)
CACHE_LOOKUPS = Counter("bagtrack_cache_lookups_total", "Cache lookups by result (hit or miss).", ["result"])
RATE_LIMITED = Counter("bagtrack_rate_limited_total", "Requests refused by a rate limit, by limit scope.", ["scope"])
REPLICA_LAG = Gauge(
    "bagtrack_replica_lag_seconds",
    "Replay lag of the read replica as last checked, the worst worker's (-1: unknown or unreachable).",
    multiprocess_mode="livemax",
)
REPLICA_SERVING = Gauge(
    "bagtrack_replica_serving",
    "1 while every worker sends routed reads to the replica, 0 while any sends them to the primary.",
    multiprocess_mode="livemin",
)
ROUTED_READS = Counter(
    "bagtrack_routed_reads_total",
    "Requests of the views that may read from the replica (lists, searches, exports), by the database that served.",
    ["database"],
)


def count_cache(hit: bool) -> None:
    """Count one cache lookup as a hit or a miss."""
    CACHE_LOOKUPS.labels("hit" if hit else "miss").inc()


def count_rate_limited(scope: str) -> None:
    """Count one request refused by the rate limit named ``scope`` (a fixed name such as "login")."""
    RATE_LIMITED.labels(scope).inc()


def count_routed_read(database: str) -> None:
    """Count one request of a routed view as served by ``database`` ("replica" or "primary")."""
    ROUTED_READS.labels(database).inc()


def publish_replica(serving: bool, lag_s: float | None) -> None:
    """Publish whether this worker reads from the replica, and the lag it last saw."""
    REPLICA_SERVING.set(1 if serving else 0)
    REPLICA_LAG.set(-1 if lag_s is None else lag_s)


class PoolUsage:
    """Follows one engine's pool through its events and publishes it as gauges.

    Counting events, rather than reading the pool's status inside them, stays
    exact: SQLAlchemy fires ``checkin`` before the connection is back in the
    queue and ``close`` before an overflow slot is released.
    """

    def __init__(self, size: int):
        self.size = size
        self.connections = 0
        self.checked_out = 0
        self.lock = threading.Lock()
        POOL_SIZE.set(size)
        self.publish()

    def change(self, connections: int = 0, checked_out: int = 0) -> None:
        """Count an event; only the gauges it moves are written (a checkout and a checkin per request)."""
        with self.lock:
            self.connections += connections
            self.checked_out += checked_out
            if connections:
                self.publish()
            else:
                POOL_CHECKED_OUT.set(self.checked_out)

    def publish(self) -> None:
        POOL_CONNECTIONS.set(self.connections)
        POOL_CHECKED_OUT.set(self.checked_out)
        POOL_OVERFLOW.set(max(0, self.connections - self.size))


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus text format, summed over all workers in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST


# A request that came through a proxy shows the proxy's address, which is
# usually on the allow-list; such requests need the token.
FORWARDING_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")


def may_scrape(token: str | None, allowed_networks: tuple) -> bool:
    """Metrics are served to a request bearing the metrics token, or coming
    straight (not through a proxy) from an allow-listed address."""
    if token:
        scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(offered.strip().encode(), token.encode()):
            return True
    if any(header in request.headers for header in FORWARDING_HEADERS):
        return False
    try:
        address = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return False
    return any(address in network for network in allowed_networks)


def readiness() -> dict:
    """Readiness: ``unavailable`` when the database does not answer, ``degraded``
    when only Redis does not (the site works without it, slower and with looser
    limits), else ``ok``. Each check carries its time in milliseconds."""
    database = _probe_database()
    redis_check = _probe_redis()
    if not database["ok"]:
        status = "unavailable"
    elif not redis_check["ok"]:
        status = "degraded"
    else:
        status = "ok"
    return {"status": status, "database": database, "redis": redis_check}


def _probe_database() -> dict:
    # Through the app's pool, as requests go: it proves the pool can hand out
    # a working connection, and bounded by the pool and connect timeouts.
    started = perf_counter()
    try:
        with db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as error:
        current_app.logger.warning("readiness: database check failed: %s", describe_database_error(error))
        return {"ok": False, "ms": _ms_since(started), "error": error.__class__.__name__}
    return {"ok": True, "ms": _ms_since(started)}


def describe_database_error(error: Exception) -> str:
    """The error's class and the driver's first line: no SQL, no parameters, no traceback
    (an outage repeats it on every request)."""
    cause = getattr(error, "orig", None) or error
    first_line = (str(cause).strip().splitlines() or [""])[0]
    return f"{error.__class__.__name__}: {first_line[:200]}"


def _probe_redis() -> dict:
    url = current_app.config.get("REDIS_URL")
    if not url:
        return {"ok": True, "ms": 0.0, "configured": False}
    import redis

    client = current_app.extensions.get("bagtrack_ready_redis")
    if client is None:
        timeout = current_app.config["BAGTRACK_READY_TIMEOUT_S"]
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        current_app.extensions["bagtrack_ready_redis"] = client
    started = perf_counter()
    try:
        client.ping()
    except redis.RedisError as error:
        current_app.logger.warning("readiness: Redis check failed: %s", error.__class__.__name__)
        return {"ok": False, "ms": _ms_since(started), "configured": True, "error": error.__class__.__name__}
    return {"ok": True, "ms": _ms_since(started), "configured": True}


def _ms_since(started: float) -> float:
    return round((perf_counter() - started) * 1000, 3)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request's id, method and path when there is one."""

    EXTRA_FIELDS = ("status", "duration_ms", "user", "endpoint", "statement", "phases")

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if has_request_context():
            current = request._get_current_object()
            entry["request_id"] = g.get("request_id")
            entry["method"] = current.method
            entry["path"] = current.path
        for field in self.EXTRA_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    """Send every log record to stderr as JSON; ``level`` applies to bagtrack's own loggers.

    The handler goes on the root logger once per process, next to any handler
    already there (a test's log capture keeps working).
    """
    from flask.logging import default_handler

    root = logging.getLogger()
    if not any(isinstance(handler.formatter, JsonFormatter) for handler in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    bagtrack_logger = logging.getLogger("bagtrack")
    bagtrack_logger.removeHandler(default_handler)
    bagtrack_logger.setLevel(level)
    # logging.config.fileConfig (Alembic's env.py runs it) disables every logger
    # that exists at the time, bagtrack's own included.
    for logger in (bagtrack_logger, request_log, query_log):
        logger.disabled = False


def request_id() -> str:
    """This request's id, made when first asked for."""
    context = g._get_current_object()
    found = context.get("request_id")
    if found is None:
        offered = request.headers.get(REQUEST_ID_HEADER, "")
        found = context.request_id = offered if SANE_REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex
    return found


# Garbage collection in this process, for the phases of slow requests: a
# collection stalls every greenlet of the worker, whichever request set it off.
# Collections as long as a slow request wait in "long" until a request logs them.
_collections = {"ms": 0.0, "count": 0, "started": 0.0, "slow_ms": 0.0, "long": []}


def _on_collection(phase: str, info: dict) -> None:
    if phase == "start":
        _collections["started"] = perf_counter()
        return
    ms = (perf_counter() - _collections["started"]) * 1000
    _collections["ms"] += ms
    _collections["count"] += 1
    if 0 < _collections["slow_ms"] <= ms and len(_collections["long"]) < 100:
        _collections["long"].append((info.get("generation"), round(ms, 3)))


def _log_long_collections() -> None:
    """Log the collections that took as long as a slow request; the collector's callback only notes them."""
    long, _collections["long"] = _collections["long"], []
    for generation, ms in long:
        request_log.warning(
            "slow garbage collection %.1f ms (generation %s)", ms, generation, extra={"duration_ms": ms}
        )


# Under gevent, how long each request's own greenlet ran, for the phases of slow
# requests: a request waits not only for its statements but for the turns of
# the worker's other greenlets, and only the switches between greenlets tell
# the two apart. Keyed by greenlet: [when it last started running, seconds run].
_run_clocks: dict = {}


def _on_switch(event: str, args) -> None:
    if event not in ("switch", "throw"):
        return
    origin, target = args
    now = perf_counter()
    clock = _run_clocks.get(origin)
    if clock is not None:
        clock[1] += now - clock[0]
    clock = _run_clocks.get(target)
    if clock is not None:
        clock[0] = now


def _time_greenlet_runs() -> bool:
    """Follow greenlet switches in this worker (only under gevent; False: not traced)."""
    try:
        from gevent import monkey
    except ImportError:
        return False
    if not monkey.is_module_patched("socket"):
        return False
    previous = greenlet.gettrace()
    if previous is None:
        greenlet.settrace(_on_switch)
    elif _on_switch not in (previous, getattr(previous, "__wrapped__", None)):

        def both(event, args):
            _on_switch(event, args)
            previous(event, args)

        both.__wrapped__ = _on_switch
        greenlet.settrace(both)
    return True


def _start_run_clock(_sender: Flask, **_extra) -> None:
    _run_clocks[greenlet.getcurrent()] = [perf_counter(), 0.0]


def _stop_run_clock(_error=None) -> None:
    _run_clocks.pop(greenlet.getcurrent(), None)


def _ran_ms() -> float | None:
    """How long this request's greenlet has run so far (None: not traced)."""
    clock = _run_clocks.get(greenlet.getcurrent())
    if clock is None:
        return None
    return (clock[1] + perf_counter() - clock[0]) * 1000


def count_query(duration_ms: float) -> None:
    """Add one statement's time to the request it ran in (outside requests: nothing)."""
    if has_request_context():
        g.query_ms = g.get("query_ms", 0.0) + duration_ms
        g.queries = g.get("queries", 0) + 1


def _phases(duration_ms: float) -> dict:
    """Where a slow request's time went: statements, garbage collection, and the rest.

    "rest" is the request's own CPU, Redis, and waiting for the worker's other
    greenlets (or for a pool connection). Under gevent "ran_ms" is how long
    the request's own greenlet ran (its CPU, the client side of its
    statements, and collections it set off); the remainder of the duration
    it spent waiting: for the database and Redis to answer, and for the
    worker's other greenlets to yield.
    """
    gc_ms = _collections["ms"] - g.get("gc_ms_at_start", _collections["ms"])
    query_ms = g.get("query_ms", 0.0)
    phases = {
        "queries": g.get("queries", 0),
        "query_ms": round(query_ms, 3),
        "gc_ms": round(gc_ms, 3),
        "gc_collections": _collections["count"] - g.get("gc_count_at_start", _collections["count"]),
        "rest_ms": round(max(0.0, duration_ms - query_ms - gc_ms), 3),
    }
    ran_ms = _ran_ms()
    if ran_ms is not None:
        phases["ran_ms"] = round(min(ran_ms, duration_ms), 3)
    return phases


def _start_request(sender: Flask, **_extra) -> None:
    context = g._get_current_object()
    context.request_started = perf_counter()
    context.gc_ms_at_start = _collections["ms"]
    context.gc_count_at_start = _collections["count"]
    request_id()


def _finish_request(response):
    started = g.get("request_started", perf_counter())
    duration_ms = round((perf_counter() - started) * 1000, 3)
    response.headers[REQUEST_ID_HEADER] = request_id()
    current = request._get_current_object()
    endpoint = current.endpoint or "unmatched"
    method = current.method if current.method in KNOWN_METHODS else "OTHER"
    status = response.status_code
    _request_timer(endpoint, method, status).observe(duration_ms / 1000)

    slow_ms = current_app.config["BAGTRACK_SLOW_REQUEST_MS"]
    slow = bool(slow_ms) and duration_ms >= slow_ms
    if _collections["long"]:
        _log_long_collections()
    level = logging.WARNING if slow else logging.INFO
    if request_log.isEnabledFor(level):
        prefix = "slow request " if slow else ""
        request_log.log(
            level,
            "%s%s %s %s",
            prefix,
            current.method,
            current.path,
            status,
            extra={
                "status": status,
                "duration_ms": duration_ms,
                "endpoint": endpoint,
                "user": _username(),
                "phases": _phases(duration_ms) if slow else None,
            },
        )
    return response


# The histogram's child per label set, looked up once: endpoints, methods and statuses are few.
_request_timers: dict[tuple[str, str, int], object] = {}


def _request_timer(endpoint: str, method: str, status: int):
    key = (endpoint, method, status)
    timer = _request_timers.get(key)
    if timer is None:
        timer = _request_timers[key] = REQUEST_SECONDS.labels(endpoint, method, str(status))
    return timer


def _username() -> str | None:
    # flask-login keeps the user it loaded in g (a snapshot, see
    # signin.SignedInUser); reading it from there never queries the database.
    user = g.get("_login_user")
    if user is None or isinstance(user, AnonymousUserMixin):
        return None
    return getattr(user, "username", None)


def log_slow_query(statement: str, duration_ms: float) -> None:
    """Warn about one statement that took ``duration_ms`` (its text, never its parameters)."""
    query_log.warning(
        "slow query %.1f ms", duration_ms, extra={"duration_ms": round(duration_ms, 3), "statement": statement[:500]}
    )


def init_app(app: Flask) -> None:
    configure_logging(app.config["BAGTRACK_LOG_LEVEL"])
    _collections["slow_ms"] = app.config["BAGTRACK_SLOW_REQUEST_MS"] or 0.0
    if _on_collection not in gc.callbacks:
        gc.callbacks.append(_on_collection)
    # request_started fires before any before_request function, so even a
    # request the rate limiter refuses has its id and start time.
    request_started.connect(_start_request, app)
    app.after_request(_finish_request)
    if app.config["BAGTRACK_SLOW_REQUEST_MS"] and _time_greenlet_runs():
        request_started.connect(_start_run_clock, app)
        app.teardown_request(_stop_run_clock)
