"""What each layer of a request costs in worker CPU, by profiling requests in-process.

    DATABASE_URL=postgresql://... REDIS_URL=redis://.../n python scripts/request_costs.py [--requests 2000]

Builds bagtrack on a scratch database of its own (``<database>_costs``, made
and dropped here), logs a dispatcher in through the test client and sends
child scans (each a new child into an open parent), ``/api/stats``
requests, and three pages: the dashboard, a filled parent's page and the
scan log (``--kinds`` picks some). Each kind is first timed without the profiler (process CPU per
request, the least of ``--rounds`` rounds), then profiled with cProfile on the process CPU clock; each
function's own time is summed by the package it lives in, and the shares are
applied to the unprofiled CPU, so the table shows microseconds per request by
layer. Redis commands
and database statements per request are counted too.

The test client stands in for gunicorn: the server's own parsing and
gevent's scheduling are not in these figures.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg2  # noqa: E402
import redis  # noqa: E402
from sqlalchemy import event  # noqa: E402

# Where a function's own time goes, by the first matching piece of its file path (or name).
LAYERS = (
    (
        "session cookie",
        (
            "flask/sessions.py",
            "itsdangerous",
            "bagtrack/security.py:enforce_session_lifetime",
            "bagtrack/security.py:open_session",
            "bagtrack/security.py:_signing",
            "bagtrack/security.py:get_signing_serializer",
        ),
    ),
    ("CSRF", ("flask_wtf",)),
    ("login / user snapshot", ("flask_login", "bagtrack/signin.py")),
    (
        "limiter",
        (
            "flask_limiter",
            "/limits/",
            "bagtrack/limits.py",
            "bagtrack/counters.py",
            "bagtrack/extensions.py",
        ),
    ),
    ("Redis client", ("/redis/", "hiredis")),
    ("cache (figures)", ("flask_caching", "bagtrack/figures.py", "cachelib")),
    ("SQLAlchemy", ("sqlalchemy", "flask_sqlalchemy")),
    ("database driver", ("psycopg2", "psycopg")),
    ("Prometheus metrics", ("prometheus_client",)),
    ("JSON log line", ("logging/", "bagtrack/observability.py", "json/")),
    ("security headers", ("bagtrack/security.py",)),
    ("compression", ("flask_compress", "gzip", "zlib", "brotli")),
    ("templates", ("jinja2", "markupsafe", "bagtrack/templates/")),
    ("domain (bagtrack)", ("bagtrack/",)),
    ("Flask / Werkzeug", ("flask/", "werkzeug", "blinker", "click")),
)


FIRST_PARENT = 10_000
KINDS = ("child scan", "parent scan", "/api/stats", "dashboard", "bag page", "scan log")


def layer_of(filename: str, function: str) -> str:
    where = f"{filename}:{function}"
    for layer, marks in LAYERS:
        if any(mark in where for mark in marks):
            return layer
    return "other (stdlib, builtins)"


def scratch_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"{parts.path}_costs"))


def recreate(url: str, *, drop_only: bool = False) -> None:
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = psycopg2.connect(host=parts.hostname, port=parts.port or 5432, user=parts.username, dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not drop_only:
            cursor.execute(f'CREATE DATABASE "{name}"')
    admin.close()


class RedisCounter:
    """Counts round trips to Redis: a command, or a whole pipeline."""

    def __init__(self):
        self.trips = 0
        self._command = redis.client.Redis.execute_command
        self._pipeline = redis.client.Pipeline.execute

    def __enter__(self):
        counter = self

        def command(client, *args, **options):
            counter.trips += 1
            return counter._command(client, *args, **options)

        def pipeline(pipe, *args, **options):
            counter.trips += 1
            return counter._pipeline(pipe, *args, **options)

        redis.client.Redis.execute_command = command
        redis.client.Pipeline.execute = pipeline
        return self

    def __exit__(self, *_exc):
        redis.client.Redis.execute_command = self._command
        redis.client.Pipeline.execute = self._pipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests of each kind (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each kind; the least counts (3)")
    parser.add_argument("--top", type=int, default=0, help="also print the N costliest functions of each kind")
    parser.add_argument("--dump", metavar="DIR", help="also write each kind's profile to DIR (pstats files)")
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"comma-separated requests to measure, of: {', '.join(KINDS)} (default: all)",
    )
    args = parser.parse_args(argv)
    args.kinds = [kind.strip() for kind in args.kinds.split(",") if kind.strip()]
    unknown = set(args.kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds: {', '.join(sorted(unknown))}")
    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith("postgresql") or not os.environ.get("REDIS_URL"):
        raise SystemExit("request_costs: set DATABASE_URL (PostgreSQL) and REDIS_URL")
    url = scratch_url(base)
    recreate(url)
    os.environ.update(
        DATABASE_URL=url,
        BAGTRACK_LIMIT_SCAN="1000000/minute",
        BAGTRACK_LIMIT_DEFAULT="1000000/minute",
        BAGTRACK_LOG_LEVEL=os.environ.get("BAGTRACK_LOG_LEVEL", "INFO"),
    )
    # The app logs one JSON line per request to stderr; keep it, but out of the terminal.
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115
    try:
        return measure(args)
    finally:
        sys.stderr = sys.__stderr__
        recreate(url, drop_only=True)


def measure(args) -> int:
    from flask_migrate import upgrade

    from bagtrack import create_app, scanning
    from bagtrack.accounts import create_user
    from bagtrack.extensions import db
    from bagtrack.models import DispatchArea

    app = create_app()
    with app.app_context():
        upgrade(directory=str(ROOT / "migrations"))
        area = DispatchArea(code="COSTS", name="Costs")
        db.session.add(area)
        db.session.commit()
        user, _ = create_user(
            db.session, None, "costs", "dispatcher", password="costs-password-1234", area_code="COSTS"
        )
        db.session.commit()
        engine = db.engine
        user_id = user.id

    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = page.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
    client.post("/login", data={"username": "costs", "password": "costs-password-1234", "csrf_token": token})
    page = client.get("/scan").get_data(as_text=True)
    headers = {"Accept": "application/json", "X-CSRFToken": page.split('name="csrf-token" content="')[1].split('"')[0]}
    # As a browser and the load generator ask: compressed answers, when worth it.
    client.environ_base["HTTP_ACCEPT_ENCODING"] = "gzip, deflate, br"

    numbers = iter(range(10**9))
    parents = iter(range(FIRST_PARENT, 99_999))
    state = {"parent": None, "filled": 0}

    def child_scan():
        if state["parent"] is None or state["filled"] >= 29:
            # A fresh parent outside the measured requests' count: made through the domain.
            with app.app_context():
                qr = f"SB{next(parents):05d}"
                scanning.scan_parent(db.session, db.session.get(scanning.User, user_id), qr)
                db.session.remove()
            state.update(parent=qr, filled=0)
        form = {"parent": state["parent"], "qr": f"K{next(numbers):09d}"}
        response = client.post("/scan/child", data=form, headers=headers)
        assert response.status_code == 201, response.get_data(as_text=True)
        state["filled"] += 1

    def parent_scan():
        # As a handheld resumes the parent it is filling.
        response = client.post("/scan/parent", data={"qr": f"SB{FIRST_PARENT:05d}"}, headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)

    def stats():
        response = client.get("/api/stats", headers={"Accept": "application/json"})
        assert response.status_code == 200

    def page(path: str):
        def get():
            response = client.get(path() if callable(path) else path)
            assert response.status_code == 200, response.status_code

        return get

    def full_parent() -> str:
        # The first parent the child scans filled: its page lists its children and its latest scans.
        return f"/bags/SB{FIRST_PARENT:05d}"

    statements = Counter()

    @event.listens_for(engine, "before_cursor_execute")
    def count(_conn, _cursor, _statement, *_args):
        statements["now"] += 1

    print(f"{args.requests} requests of each kind, in-process (test client), PostgreSQL + Redis\n")
    results = {}
    kinds = {
        "child scan": child_scan,
        "parent scan": parent_scan,
        "/api/stats": stats,
        "dashboard": page("/"),
        "bag page": page(full_parent),
        "scan log": page("/scans"),
    }
    for _ in range(60):
        child_scan()  # a filled parent and a scan log for the pages to show
    for name, request in ((name, kinds[name]) for name in args.kinds):
        for _ in range(200):
            request()  # warm: statement caches, the figures' cache, the user snapshot
        # The least of several timed rounds: on a shared machine other work only ever adds to a round.
        rounds = []
        for _ in range(args.rounds):
            statements.clear()
            with RedisCounter() as trips:
                started = time.process_time()
                for _ in range(args.requests):
                    request()
                rounds.append((time.process_time() - started) * 1e6 / args.requests)
        cpu_us = min(rounds)
        round_trips = {"redis": trips.trips / args.requests, "database": statements["now"] / args.requests}
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        for _ in range(args.requests):
            request()
        profiler.disable()
        stats_ = pstats.Stats(profiler)
        if args.dump:
            Path(args.dump).mkdir(parents=True, exist_ok=True)
            stats_.dump_stats(str(Path(args.dump) / f"{name.strip('/').replace('/', '_').replace(' ', '_')}.pstats"))
        by_layer: Counter = Counter()
        for (filename, _line, function), (_cc, _nc, tottime, _ct, _callers) in stats_.stats.items():
            by_layer[layer_of(filename, function)] += tottime
        total = sum(by_layer.values())
        results[name] = (cpu_us, round_trips, {layer: cpu_us * t / total for layer, t in by_layer.items()})
        if args.top:
            stats_.sort_stats("tottime").print_stats(args.top)

    layers = [layer for layer, _ in LAYERS] + ["other (stdlib, builtins)"]
    names = list(results)
    print("| layer | " + " | ".join(f"{name} µs" for name in names) + " |")
    print("|---|" + "---:|" * len(names))
    for layer in layers:
        print(f"| {layer} | " + " | ".join(f"{results[n][2].get(layer, 0):.0f}" for n in names) + " |")
    print("| **worker CPU per request** | " + " | ".join(f"**{results[n][0]:.0f}**" for n in names) + " |")
    print("| Redis round trips per request | " + " | ".join(f"{results[n][1]['redis']:.2f}" for n in names) + " |")
    print("| database statements per request | " + " | ".join(f"{results[n][1]['database']:.2f}" for n in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
