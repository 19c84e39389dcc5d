"""The benchmark anyone can rerun: ``make bench`` (800,000 bags) or ``make bench SCALE=8000000``.

It prepares a database of its own (``bagtrack_bench``, ``bagtrack_bench_8m``,
...), migrates and seeds it once (timing the seed, and an import of as many
bags into a scratch database, and keeping both timings in the database for
later runs), starts bagtrack under the project's ``gunicorn.conf.py`` behind
a private nginx, as in production, and drives it with the virtual users of
``scripts/locustfile.py``: each user has an account of its own, logs in
through the form and keeps one keep-alive connection to nginx, as a
handheld's browser does. The phases have fixed lengths:

1. floor: 60 users, each acting about once a second (the real floor), for
   three minutes: the pages come once or twice a second, and in one minute
   an endpoint's 99th percentile was its slowest request or the one before;
2. mixed: the same 60 users with no pause (saturation);
3. scan / stats: the same users doing only child scans / only ``/api/stats``;
4. baseline: ``scripts/baseline_app.py`` under the same gunicorn settings and
   behind the same nginx, each of its routes (no-op, one Redis GET, one write
   transaction) hammered alone by the same generator;
5. paired rounds: with both apps up, the two rate ratios' sides (child scans
   and the write route, ``/api/stats`` and the Redis route) measured in short
   phases one right after the other, three times; the users of the side not
   being measured wait. The ratios' verdicts are the medians of the rounds,
   so a machine whose speed drifts between phases minutes apart cannot move
   them far.

``--direct`` leaves nginx out: every user then talks to gunicorn, which closes
the connection after each answer (``GUNICORN_KEEPALIVE=0``), so each request
pays a TCP connect and accept.

It records latency percentiles, throughput and errors per endpoint, CPU
seconds of the server, nginx, the load generator and the databases, and worker
memory, checks them against the targets of PRODUCT.md, and writes
``bench/results/<time>-<scale>.json`` and ``.md``.

The Redis database it uses (``--redis-url``, default db 1) is the benchmark's
own: it is emptied at the start of every run.
"""

from __future__ import annotations

# Locust patches the standard library for gevent when it is imported: first.
import locust  # isort: skip

import argparse
import contextlib
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import gevent
import psutil
import psycopg2
import redis
from locust.env import Environment
from werkzeug.security import generate_password_hash

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import baseline_app  # noqa: E402
import locustfile  # noqa: E402

RESULTS_DIR = ROOT / "bench" / "results"
WORK_DIR = ROOT / "bench" / "work"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1/bagtrack_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/1"
BENCH_PASSWORD = "bench-password-not-secret"
CHILDREN_PER_PARENT = 30
# Seeded parents go past SB99999 at 8,000,000 bags; the benchmark's own new
# parents use SB9000000 and up.
PARENT_QR = r"^SB\d{5,7}$"
BENCH_PARENTS_FROM = 9_000_000
# The limiter stays on, keyed by user as in production; a capacity benchmark
# runs users with no pause, past the per-user scan limit a person never
# reaches, and logs every user in from one address.
GENEROUS_LIMITS = {
    "BAGTRACK_LIMIT_LOGIN_IP": "1000/minute",
    "BAGTRACK_LIMIT_LOGIN_USER": "1000/minute",
    "BAGTRACK_LIMIT_SCAN": "200000/minute",
    "BAGTRACK_LIMIT_BILL_LOAD": "200000/minute",
    "BAGTRACK_LIMIT_DEFAULT": "200000/minute",
}

FULL = {"floor": 180, "mixed": 45, "scan": 20, "stats": 20, "baseline": 20, "pair": 8, "pair_rounds": 3}
QUICK = {"floor": 15, "mixed": 15, "scan": 10, "stats": 10, "baseline": 8, "pair": 5, "pair_rounds": 1}
SETTLE_S = 3
LOGINS_PER_S = 5
# Before the first measured phase the users run unmeasured for this long, so
# PostgreSQL's buffers and the workers' statement caches hold what the phases read.
WARMUP_S = 15
BASELINE_MODES = ("noop", "redis", "write")
SATURATION_PHASES = ("mixed", "scan", "stats")

TOPOLOGY_PROXIED = "users keep one connection each to nginx, which opens one to gunicorn per request"
TOPOLOGY_DIRECT = "users talk to gunicorn directly, which closes each connection after its answer"

FLOOR_P99_MS = 25.0
TAIL_RATIO = 4.0
SLOWEST_MS = 1000.0
SCAN_VS_WRITE = 0.5
STATS_VS_REDIS = 0.6
WORKER_RSS_MB = 200.0
# The two rate ratios: name, wanted, and each side's (mode, endpoint). On a machine whose speed drifts
# by tens of per cent within minutes, a ratio of phases minutes apart moves with the drift; paired
# rounds measure both sides in short phases one right after the other, several times, and the verdict
# is the median of the rounds' ratios.
RATIOS = (
    ("child scans vs one-transaction write", SCAN_VS_WRITE, ("scan", "/scan/child"), ("write", "baseline /write")),
    ("/api/stats vs one Redis GET", STATS_VS_REDIS, ("stats", "/api/stats"), ("redis", "baseline /redis")),
)


def log(message: str) -> None:
    print(f"[bench {datetime.now():%H:%M:%S}] {message}", flush=True)


def parse_bags(raw: str) -> int:
    """``800000``, ``800k``, ``8m`` or ``8_000_000``."""
    text = raw.strip().lower().replace("_", "").replace(",", "")
    factor = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    number = float(text[:-1] if factor > 1 else text)
    if number <= 0:
        raise argparse.ArgumentTypeError("the number of bags must be positive")
    return int(number * factor)


def scale_label(bags: int) -> str:
    for size, suffix in ((1_000_000, "m"), (1_000, "k")):
        if bags >= size and bags % size == 0:
            return f"{bags // size}{suffix}"
    return str(bags)


def bench_database_url(bags: int, explicit: str | None) -> str:
    """800,000 bags live in ``bagtrack_bench``; other scales get a suffix, so each keeps its data."""
    if explicit:
        return explicit
    base = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
    if bags == 800_000:
        return base
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=f"{parts.path}_{scale_label(bags)}"))


def without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    return urlunsplit(parts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bags", type=parse_bags, default=800_000, help="bags in the database (800k, 8m, ...)")
    parser.add_argument("--users", type=int, default=60, help="virtual users (default 60)")
    parser.add_argument("--quick", action="store_true", help="shorter phases, for a smoke run")
    parser.add_argument("--database-url", help="default: $BENCH_DATABASE_URL or " + DEFAULT_DATABASE_URL)
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL),
        help="a Redis database for the benchmark alone; it is emptied (default: $BENCH_REDIS_URL or db 1)",
    )
    parser.add_argument("--reseed", action="store_true", help="drop the benchmark database and seed it again")
    parser.add_argument(
        "--direct",
        action="store_true",
        help="no nginx: users talk to gunicorn directly, a new connection per request",
    )
    parser.add_argument(
        "--slow-ms",
        type=float,
        default=FLOOR_P99_MS,
        help=f"log where the time of every request this slow went (default {FLOOR_P99_MS:g} ms, the floor target)",
    )
    parser.add_argument(
        "--phases",
        default="floor,mixed,scan,stats,baseline",
        help="comma-separated subset of floor,mixed,scan,stats,baseline",
    )
    args = parser.parse_args(argv)
    args.database_url = bench_database_url(args.bags, args.database_url)
    args.phases = [phase.strip() for phase in args.phases.split(",") if phase.strip()]
    unknown = set(args.phases) - set(FULL)
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    return args


# --- The database -----------------------------------------------------------------------------------------


def connect(url: str, dbname: str | None = None):
    parts = urlsplit(url)
    connection = psycopg2.connect(
        host=parts.hostname or "localhost",
        port=parts.port or 5432,
        user=parts.username,
        password=parts.password,
        dbname=dbname or parts.path.lstrip("/"),
    )
    connection.autocommit = True
    return connection


def ensure_database(url: str, *, recreate: bool) -> None:
    name = urlsplit(url).path.lstrip("/")
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise SystemExit(f"bench: unusual database name {name!r}; use letters, digits and _")
    admin = connect(url, "postgres")
    try:
        with admin.cursor() as cursor:
            if recreate:
                log(f"dropping database {name}")
                cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cursor.fetchone() is None:
                log(f"creating database {name}")
                cursor.execute(f"CREATE DATABASE {name}")
    finally:
        admin.close()


def query(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    connection = connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


def app_environment(args: argparse.Namespace, secret_key: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": args.database_url,
        "REDIS_URL": args.redis_url,
        "SECRET_KEY": secret_key,
        "BAGTRACK_PARENT_QR": PARENT_QR,
        # Every request slower than the floor's target (or --slow-ms) is logged with where its time went.
        "BAGTRACK_SLOW_REQUEST_MS": str(args.slow_ms),
        **GENEROUS_LIMITS,
    }
    env.pop("FLASK_APP", None)
    return env


def flask(env: dict[str, str], *command: str, check: bool = True) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "bagtrack", *command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if check and completed.returncode != 0:
        raise SystemExit(f"bench: flask {' '.join(command)} failed:\n{completed.stdout}{completed.stderr}")
    return completed


# How long the seed and an import of as many bags took, kept in the benchmark database itself.
FACTS_TABLE = (
    "CREATE TABLE IF NOT EXISTS bench_fact (name text PRIMARY KEY, value double precision NOT NULL,"
    " measured_at timestamptz NOT NULL DEFAULT now())"
)
# An import of more than this many bags is not timed (the target is for 800,000).
IMPORT_BAGS_MAX = 800_000


def prepare_data(args: argparse.Namespace, env: dict[str, str]) -> dict:
    """Migrate, seed to ``args.bags`` unless the database holds that many already, and count.

    Seeding also times an import of as many bags (at most ``IMPORT_BAGS_MAX``)
    into a scratch database; both timings are stored in ``bench_fact`` and
    reported by every later run on the same database.
    """
    ensure_database(args.database_url, recreate=args.reseed)
    log("migrating (flask db upgrade)")
    flask(env, "db", "upgrade")
    bags = count_bags(args.database_url)
    # Each run adds a few thousand bags of its own: only a database well short of the size is seeded.
    if bags < args.bags * 0.98:
        if bags:
            log(f"the database holds {bags:,} bags, fewer than {args.bags:,}: recreating it")
            ensure_database(args.database_url, recreate=True)
            flask(env, "db", "upgrade")
        started = time.monotonic()
        bags = seed_to(args, env)
        seed_seconds = round(time.monotonic() - started, 1)
        query(args.database_url, "ANALYZE")
        import_bags = min(args.bags, IMPORT_BAGS_MAX)
        import_seconds = time_import(args, env, import_bags)
        store_facts(
            args.database_url,
            {
                "seed_seconds": seed_seconds,
                "seed_bags": bags,
                "import_seconds": import_seconds,
                "import_bags": import_bags,
            },
        )
    scans = query(args.database_url, "SELECT count(*) FROM scan")[0][0]
    log(f"database {urlsplit(args.database_url).path.lstrip('/')}: {bags:,} bags, {scans:,} scan rows")
    return {"bags": bags, "scans": scans, **stored_facts(args.database_url)}


def store_facts(url: str, facts: dict[str, float]) -> None:
    query(url, FACTS_TABLE)
    for name, value in facts.items():
        query(
            url,
            "INSERT INTO bench_fact (name, value) VALUES (%s, %s)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value, measured_at = now()",
            (name, value),
        )


def stored_facts(url: str) -> dict:
    """The seed and import timings of this database (None where never measured), and when."""
    query(url, FACTS_TABLE)
    rows = query(url, "SELECT name, value, measured_at FROM bench_fact")
    facts: dict = {"seed_seconds": None, "seed_bags": None, "import_seconds": None, "import_bags": None}
    for name, value, measured_at in rows:
        facts[name] = int(value) if name.endswith("_bags") else value
        facts["timed_at"] = measured_at.isoformat(timespec="seconds")
    return facts


def time_import(args: argparse.Namespace, env: dict[str, str], bags: int) -> float:
    """Seconds ``flask import bags`` takes for ``bags`` bags (parents of 30 children) into an empty database."""
    parts = urlsplit(args.database_url)
    url = urlunsplit(parts._replace(path=f"{parts.path}_import"))
    ensure_database(url, recreate=True)
    scratch = {**env, "DATABASE_URL": url, "BAGTRACK_DB_STATEMENT_TIMEOUT_MS": "0"}
    scratch["BAGTRACK_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS"] = "0"
    try:
        flask(scratch, "db", "upgrade")
        flask(scratch, "areas", "add", "IMPORT", "--name", "Imported floor")
        WORK_DIR.mkdir(parents=True, exist_ok=True)
        path = WORK_DIR / "import-bags.csv"
        with open(path, "w", encoding="utf-8") as out:
            out.write("qr,kind,area,parent\n")
            parents = math.ceil(bags / (CHILDREN_PER_PARENT + 1))
            written = 0
            for number in range(parents):
                parent = f"SB{number:07d}"
                out.write(f"{parent},parent,IMPORT,\n")
                written += 1
                for child in range(CHILDREN_PER_PARENT):
                    if written >= bags:
                        break
                    out.write(f"I{number:07d}C{child:02d},child,,{parent}\n")
                    written += 1
        log(f"timing flask import bags ({bags:,} bags into a scratch database)")
        started = time.monotonic()
        flask(scratch, "import", "bags", str(path))
        seconds = round(time.monotonic() - started, 1)
        imported = query(url, "SELECT count(*) FROM bag")[0][0]
        if imported != bags:
            raise SystemExit(f"bench: the import stored {imported:,} of {bags:,} bags")
        log(f"imported {bags:,} bags in {seconds} s")
        path.unlink()
        return seconds
    finally:
        admin = connect(url, "postgres")
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {parts.path.lstrip('/')}_import WITH (FORCE)")
        admin.close()


def count_bags(url: str) -> int:
    return query(url, "SELECT count(*) FROM bag")[0][0]


def seed_to(args: argparse.Namespace, env: dict[str, str]) -> int:
    """Seed until the database holds ``args.bags`` bags.

    Some seeded parents are left partly filled, so the first pass assumes full
    ones and a second pass (the seed adds to what is there) tops up at the
    rate the first one achieved.
    """
    # One long transaction of COPYs and set-based statements: the app's per-transaction
    # timeouts, right for requests, would cancel it at millions of rows.
    seed_env = {**env, "BAGTRACK_DB_STATEMENT_TIMEOUT_MS": "0", "BAGTRACK_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS": "0"}
    bags = count_bags(args.database_url)
    parents = math.ceil(args.bags / (CHILDREN_PER_PARENT + 1))
    for seed_value in (1, 2):
        log(f"seeding {parents:,} parents (flask seed --parents {parents})")
        started = time.monotonic()
        answer = flask(seed_env, "seed", "--parents", str(parents), "--seed", str(seed_value))
        summary = next((line for line in answer.stdout.splitlines() if line.startswith("Seeded")), "")
        log(f"seeded in {time.monotonic() - started:.1f} s: {summary}")
        before, bags = bags, count_bags(args.database_url)
        reported = re.search(r"\((\d+) bags\)", summary)
        if reported is None or bags - before != int(reported.group(1)):
            raise SystemExit(f"bench: the seed reported {summary!r} but the database gained {bags - before:,} bags")
        if bags >= args.bags:
            break
        parents = math.ceil((args.bags - bags) / ((bags - before) / parents)) + 1
    return bags


def biller_count(users: int) -> int:
    return max(1, round(users * 0.05))


def prepare_accounts(args: argparse.Namespace, env: dict[str, str]) -> tuple[list[tuple[str, str]], list[str]]:
    """An account per virtual user: dispatchers spread over the areas, and a few billers.

    Written straight into ``app_user`` with one password hash (creating sixty
    through the CLI would take minutes); each is unlocked and given the bench
    password again on every run.
    """
    areas = [row[0] for row in query(args.database_url, "SELECT code FROM dispatch_area ORDER BY code")]
    if not areas:
        flask(env, "areas", "add", "BENCH", "--name", "Benchmark floor")
        areas = ["BENCH"]
    billers = [f"bench-biller-{number}" for number in range(biller_count(args.users))]
    dispatchers = [
        (f"bench-{areas[number % len(areas)].lower()}-{number}", areas[number % len(areas)])
        for number in range(args.users - len(billers))
    ]
    password_hash = generate_password_hash(BENCH_PASSWORD)
    wanted = [(name, "dispatcher", area) for name, area in dispatchers] + [(name, "biller", None) for name in billers]
    connection = connect(args.database_url)
    try:
        with connection.cursor() as cursor:
            for username, role, area in wanted:
                cursor.execute(
                    "INSERT INTO app_user (username, password_hash, role, area_id, created_at)"
                    " VALUES (%s, %s, %s, (SELECT id FROM dispatch_area WHERE code = %s), now() at time zone 'utc')"
                    " ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash,"
                    " role = excluded.role, area_id = excluded.area_id, active = true, failed_logins = 0,"
                    " locked_until = NULL",
                    (username, password_hash, role, area),
                )
    finally:
        connection.close()
    log(f"accounts: {len(dispatchers)} dispatchers over {len(areas)} areas, {len(billers)} billers")
    return dispatchers, billers


def sample_bags(url: str, total: int, per_area: int = 2000) -> dict[str, list[str]]:
    """Random bags of each area, for lookups (a block sample: cheap at any size)."""
    percent = min(100.0, 100.0 * 20 * per_area / max(total, 1))
    rows = query(
        url,
        "SELECT a.code, b.qr FROM bag AS b TABLESAMPLE SYSTEM (%s) JOIN dispatch_area AS a ON a.id = b.area_id",
        (percent,),
    )
    by_area: dict[str, list[str]] = {}
    for area, qr in rows:
        if len(by_area.setdefault(area, [])) < per_area:
            by_area[area].append(qr)
    return by_area


def loadable_parents(url: str, limit: int = 20_000) -> list[str]:
    rows = query(
        url,
        "SELECT qr FROM bag WHERE kind = 'parent' AND status = 'complete' AND bill_id IS NULL LIMIT %s",
        (limit,),
    )
    return [row[0] for row in rows]


def first_free_parent_number(url: str) -> int:
    """Above every parent an earlier run created: each run scans codes nobody used."""
    rows = query(
        url,
        "SELECT qr FROM bag WHERE qr >= %s AND qr <= 'SB9999999' AND qr ~ '^SB[0-9]{7}$' ORDER BY qr DESC LIMIT 1",
        (f"SB{BENCH_PARENTS_FROM:07d}",),
    )
    return int(rows[0][0][2:]) + 1 if rows else BENCH_PARENTS_FROM


def run_tag() -> str:
    return locustfile.base36(int(time.time()))


# --- Servers ----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    """A gunicorn started with the project's ``gunicorn.conf.py``."""

    name: str
    process: subprocess.Popen
    port: int
    log_path: Path
    database: str
    proxy: Proxy | None = None

    @property
    def host(self) -> str:
        """Where the users connect: the proxy in front, or gunicorn itself."""
        return self.proxy.host if self.proxy else f"http://127.0.0.1:{self.port}"

    def workers(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        if self.proxy:
            self.proxy.stop()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NGINX_CONF = """worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream app {{ server 127.0.0.1:{upstream}; }}
    server {{
        listen 127.0.0.1:{port};
        # The handhelds' connections stay open between scans; each request to
        # gunicorn is a connection of its own (HTTP/1.0), closed after the answer.
        keepalive_timeout 75s;
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://app;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"""


@dataclass
class Proxy:
    """A private nginx in front of one gunicorn, as in production (see the README's deployment notes)."""

    process: subprocess.Popen
    port: int
    prefix: Path

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu(self) -> float:
        try:
            master = psutil.Process(self.process.pid)
            return cpu_seconds(master) + sum(cpu_seconds(worker) for worker in master.children())
        except psutil.NoSuchProcess:
            return 0.0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.prefix, ignore_errors=True)


def start_proxy(upstream: int) -> Proxy:
    port = free_port()
    prefix = Path(tempfile.mkdtemp(prefix="bagtrack-bench-nginx-"))
    (prefix / "nginx.conf").write_text(NGINX_CONF.format(prefix=prefix, upstream=upstream, port=port))
    command = [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")]
    process = subprocess.Popen(
        [*command, "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    proxy = Proxy(process, port, prefix)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"bench: nginx exited: {(prefix / 'error.log').read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            break
        time.sleep(0.1)
    else:
        proxy.stop()
        raise SystemExit("bench: nginx did not listen within 10 s")
    log(f"nginx on port {port} in front of port {upstream}")
    return proxy


def start_server(
    name: str, app_spec: str, env: dict[str, str], extra: list[str] | None = None, *, direct: bool = False
) -> Server:
    port = free_port()
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    log_path = WORK_DIR / f"{name}-gunicorn.log"
    command = [
        str(Path(sys.executable).with_name("gunicorn")),
        "-c",
        "gunicorn.conf.py",
        "-b",
        f"127.0.0.1:{port}",
        *(extra or []),
        app_spec,
    ]
    with open(log_path, "w", encoding="utf-8") as output:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    server = Server(name, process, port, log_path, urlsplit(env["DATABASE_URL"]).path.lstrip("/"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"bench: {name} server exited; see {log_path}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{server.host}{'/health' if name == 'bagtrack' else '/noop'}", timeout=2):
                break
        except OSError:
            time.sleep(0.3)
    else:
        server.stop()
        raise SystemExit(f"bench: {name} did not answer within 60 s; see {log_path}")
    # Give every worker time to boot: the first answer came from one of them.
    time.sleep(2)
    log(f"{name} up on port {port} with {len(server.workers())} workers (pid {process.pid})")
    if not direct:
        server.proxy = start_proxy(port)
    return server


# --- Measuring --------------------------------------------------------------------------------------------


def cpu_seconds(process: psutil.Process, *, with_reaped_children: bool = False) -> float:
    times = process.cpu_times()
    total = times.user + times.system
    if with_reaped_children:
        total += times.children_user + times.children_system
    return total


def tree_cpu(server: Server) -> float:
    """CPU of the master, its live workers and the workers it already reaped."""
    try:
        master = psutil.Process(server.process.pid)
        total = cpu_seconds(master, with_reaped_children=True)
    except psutil.NoSuchProcess:
        return 0.0
    for worker in server.workers():
        with contextlib.suppress(psutil.NoSuchProcess):
            total += cpu_seconds(worker)
    return total


def named_cpu(names: tuple[str, ...], title_word: str | None = None) -> dict[int, float]:
    """CPU of the processes called ``names`` whose title holds ``title_word`` (a database name, for backends)."""
    seconds = {}
    for process in psutil.process_iter(["name", "cmdline"]):
        title = " ".join(process.info["cmdline"] or []) + " "
        if process.info["name"] in names and (title_word is None or title_word in title):
            with contextlib.suppress(psutil.NoSuchProcess):
                seconds[process.pid] = cpu_seconds(process)
    return seconds


def machine_busy() -> tuple[float, float]:
    """CPU seconds the machine was busy (its processes, the kernel, and time the hypervisor took), and that last part.

    On a virtual machine, steal is time a vCPU was ready to run but the host
    ran something else: every process on that vCPU stood still.
    """
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0), getattr(times, "steal", 0.0)


@dataclass
class CpuMark:
    server: float
    proxy: float
    load_generator: float
    postgres: dict[int, float]
    redis: dict[int, float]
    machine: float
    steal: float

    @classmethod
    def now(cls, server: Server) -> CpuMark:
        return cls(
            server=tree_cpu(server),
            proxy=server.proxy.cpu() if server.proxy else 0.0,
            load_generator=cpu_seconds(psutil.Process()),
            # Only the backends of the benchmark database: the server may be shared.
            postgres=named_cpu(("postgres",), f" {server.database} "),
            redis=named_cpu(("redis-server",)),
            **dict(zip(("machine", "steal"), machine_busy(), strict=True)),
        )

    def since(self, start: CpuMark) -> dict[str, float]:
        def processes(after: dict[int, float], before: dict[int, float]) -> float:
            return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())

        spent = {
            "server": self.server - start.server,
            "proxy": self.proxy - start.proxy,
            "load_generator": self.load_generator - start.load_generator,
            "postgres": processes(self.postgres, start.postgres),
            "redis": processes(self.redis, start.redis),
        }
        machine, steal = self.machine - start.machine, self.steal - start.steal
        # Anything else busy on the machine (it may be shared) skews the figures: say how much.
        spent["other"] = max(0.0, machine - steal - sum(spent.values()))
        spent["machine"] = machine
        spent["steal"] = steal
        return {name: round(seconds, 2) for name, seconds in spent.items()}


@dataclass
class Recorder:
    """Every request of the measured window: exact latencies, not Locust's rounded histogram."""

    recording: bool = False
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: dict[str, dict[str, int]] = field(default_factory=dict)

    def reset(self) -> None:
        self.latencies, self.errors, self.error_samples = {}, {}, {}

    def on_request(self, name, response_time, exception=None, **_ignored) -> None:
        if not self.recording:
            return
        self.latencies.setdefault(name, []).append(response_time)
        if exception is not None:
            self.errors[name] = self.errors.get(name, 0) + 1
            samples = self.error_samples.setdefault(name, {})
            message = str(exception)[:160]
            if message in samples or len(samples) < 5:
                samples[message] = samples.get(message, 0) + 1


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest rank."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def summarise(recorder: Recorder, seconds: float) -> dict[str, dict]:
    endpoints = {}
    for name in sorted(recorder.latencies):
        ordered = sorted(recorder.latencies[name])
        p50 = percentile(ordered, 0.50)
        p99 = percentile(ordered, 0.99)
        endpoints[name] = {
            "requests": len(ordered),
            "rps": round(len(ordered) / seconds, 1),
            "p50_ms": round(p50, 2),
            "p95_ms": round(percentile(ordered, 0.95), 2),
            "p99_ms": round(p99, 2),
            "max_ms": round(ordered[-1], 2),
            "p99_over_p50": round(p99 / p50, 2) if p50 > 0 else None,
            "over_1s": sum(1 for value in ordered if value > SLOWEST_MS),
            "errors": recorder.errors.get(name, 0),
            "error_samples": recorder.error_samples.get(name, {}),
        }
    return endpoints


def measure(name: str, seconds: int, server: Server, recorder: Recorder, users: int) -> dict:
    """Record ``seconds`` of requests, sampling worker memory once a second."""
    log(f"phase {name}: measuring {seconds} s")
    rss_max: dict[int, int] = {}
    rss_start = {worker.pid: worker.memory_info().rss for worker in server.workers()}
    start_cpu = CpuMark.now(server)
    recorder.reset()
    recorder.recording = True
    started, started_at = time.monotonic(), datetime.now(UTC)
    while (left := seconds - (time.monotonic() - started)) > 0:
        gevent.sleep(min(1.0, left))
        for worker in server.workers():
            with contextlib.suppress(psutil.NoSuchProcess):
                rss_max[worker.pid] = max(rss_max.get(worker.pid, 0), worker.memory_info().rss)
    recorder.recording = False
    elapsed, ended_at = time.monotonic() - started, datetime.now(UTC)
    cpu = CpuMark.now(server).since(start_cpu)
    rss_end = {worker.pid: worker.memory_info().rss for worker in server.workers()}
    endpoints = summarise(recorder, elapsed)
    requests = sum(endpoint["requests"] for endpoint in endpoints.values())
    mb = 1024 * 1024
    phase = {
        "seconds": round(elapsed, 1),
        "window": [started_at.isoformat(timespec="milliseconds"), ended_at.isoformat(timespec="milliseconds")],
        "users": users,
        "workers": len(server.workers()),
        "requests": requests,
        "rps": round(requests / elapsed, 1),
        "errors": sum(endpoint["errors"] for endpoint in endpoints.values()),
        "endpoints": endpoints,
        "cpu_seconds": cpu,
        "server_cpu_ms_per_request": round(1000 * cpu["server"] / requests, 3) if requests else None,
        "load_generator_cpu_ms_per_request": round(1000 * cpu["load_generator"] / requests, 3) if requests else None,
        "worker_rss_mb": {
            "max": {str(pid): round(rss / mb, 1) for pid, rss in rss_max.items()},
            "start": {str(pid): round(rss / mb, 1) for pid, rss in rss_start.items()},
            "end": {str(pid): round(rss / mb, 1) for pid, rss in rss_end.items()},
        },
    }
    log(
        f"phase {name}: {requests:,} requests, {phase['rps']:,} req/s, {phase['errors']} errors, "
        f"server {cpu['server']} CPU s, load generator {cpu['load_generator']} CPU s"
    )
    return phase


# --- Driving the users ------------------------------------------------------------------------------------


def start_users(environment: Environment, users: int, *, expect_logins: bool) -> None:
    runner = environment.create_local_runner()
    # Logging in hashes a password (tens of ms of CPU each): the users arrive a few a second,
    # as handhelds do at a shift start, not all in one instant.
    runner.start(users, spawn_rate=LOGINS_PER_S if expect_logins else users)
    if expect_logins:
        shared = locustfile.SHARED
        deadline = time.monotonic() + 120
        while shared.logged_in + sum(shared.login_failures.values()) < users and time.monotonic() < deadline:
            gevent.sleep(0.2)
        if shared.login_failures or shared.logged_in < users:
            runner.quit()
            failures = dict(shared.login_failures) or "timed out"
            raise SystemExit(f"bench: {shared.logged_in}/{users} users logged in; failures: {failures}")
        log(f"{users} users logged in")
    gevent.sleep(SETTLE_S)


def switch_mode(mode: str) -> None:
    locustfile.SHARED.mode = mode
    # Users paced on the floor may be asleep for up to 1.2 s: let the new mode take hold.
    gevent.sleep(SETTLE_S)


def run_app_phases(args, env, durations, recorder, plan) -> tuple[dict, dict]:
    """The app's phases; with the baseline wanted too, the baseline's and the paired rounds while the app is up."""
    phases: dict[str, dict] = {}
    wanted = [phase for phase in ("floor", "mixed", "scan", "stats") if phase in args.phases]
    if not wanted:
        return phases, {}
    pairs: list[dict] = []
    server = start_server("bagtrack", "wsgi:app", env, direct=args.direct)
    try:
        locustfile.configure(plan)
        locustfile.SHARED.mode = wanted[0]
        locustfile.BillerUser.fixed_count = biller_count(args.users)
        environment = Environment(
            user_classes=[locustfile.ScannerUser, locustfile.BillerUser], host=server.host, catch_exceptions=True
        )
        environment.events.request.add_listener(recorder.on_request)
        start_users(environment, args.users, expect_logins=True)
        log(f"warming up for {WARMUP_S} s (not measured)")
        gevent.sleep(WARMUP_S)
        for phase in wanted:
            if locustfile.SHARED.mode != phase:
                switch_mode(phase)
            phases[phase] = measure(phase, durations[phase], server, recorder, args.users)
        if "baseline" in args.phases:
            baseline_phases, pairs = run_baseline(args, env, durations, recorder, app_server=server)
            phases.update(baseline_phases)
        notes = dict(locustfile.SHARED.notes)
        log_lines = server.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        notes.update(slow_requests(log_lines, args.slow_ms))
        if "floor" in phases:
            phases["floor"]["in_app"] = time_in_app(log_lines, *phases["floor"]["window"])
        if environment.runner.exceptions:
            notes["exceptions in virtual users"] = len(environment.runner.exceptions)
        environment.runner.quit()
    finally:
        server.stop()
    return phases, {"notes": notes, "pairs": pairs}


def slow_requests(log_lines: list[str], slow_ms: float) -> dict:
    """How many logged requests took longer than ``slow_ms`` (warm-up included), and where their time went."""
    count, phases = 0, {"query_ms": 0.0, "gc_ms": 0.0, "rest_ms": 0.0}
    ran_ms = 0.0
    collections, long_collections = 0, []
    for line in log_lines:
        if '"slow garbage collection ' in line:
            with contextlib.suppress(ValueError, KeyError):
                long_collections.append(json.loads(line)["duration_ms"])
            continue
        if '"slow request ' not in line or '"phases"' not in line:
            continue
        with contextlib.suppress(ValueError, KeyError):
            entry = json.loads(line)
            if entry.get("endpoint") == "auth.login":
                continue  # logging in hashes a password: slow by design
            count += 1
            collections += entry["phases"]["gc_collections"]
            ran_ms += entry["phases"].get("ran_ms", 0.0)
            for name in phases:
                phases[name] += entry["phases"][name]
    total = sum(phases.values()) or 1.0
    return {
        f"requests over {slow_ms:g} ms (all phases, logins left out)": count,
        "their time in statements / garbage collection / the rest": " / ".join(
            f"{100 * phases[name] / total:.0f} %" for name in phases
        ),
        "the share of their time their own greenlet ran": f"{100 * ran_ms / total:.0f} %",
        "garbage collections during them": collections,
        f"garbage collections over {slow_ms:g} ms (all phases)": (
            f"{len(long_collections)}, the longest {max(long_collections):.1f} ms" if long_collections else "0"
        ),
    }


def time_in_app(log_lines: list[str], start: str, end: str) -> dict[str, dict]:
    """Per route, the requests' own durations between ``start`` and ``end`` (ISO times), from the server's log.

    The app logs each request's time from its first hook to its answer; what
    the load generator measures beyond that is nginx, gunicorn reading the
    request and writing the answer, the network and the generator itself.
    """
    durations: dict[str, list[float]] = {}
    slow: dict[str, list[dict]] = {}
    for line in log_lines:
        if '"duration_ms"' not in line or '"endpoint"' not in line:
            continue
        with contextlib.suppress(ValueError, KeyError, TypeError):
            entry = json.loads(line)
            # The log's times are ISO UTC with milliseconds, as the window's: they compare as strings.
            if start <= entry["time"] <= end and entry.get("endpoint"):
                route = f"{entry['method']} {entry['endpoint']}"
                durations.setdefault(route, []).append(entry["duration_ms"])
                if entry.get("phases"):
                    slow.setdefault(route, []).append({"duration_ms": entry["duration_ms"], **entry["phases"]})
    routes = {}
    for route in sorted(durations):
        ordered = sorted(durations[route])
        routes[route] = {
            "requests": len(ordered),
            "p50_ms": round(percentile(ordered, 0.50), 2),
            "p99_ms": round(percentile(ordered, 0.99), 2),
            "max_ms": round(ordered[-1], 2),
        }
        if route in slow:
            entries = slow[route]
            routes[route]["slow"] = {"requests": len(entries)} | {
                name: round(statistics.fmean(entry.get(name, 0.0) for entry in entries), 2)
                for name in ("duration_ms", "ran_ms", "query_ms", "gc_ms")
            }
    return routes


def run_baseline(args, env, durations, recorder, app_server: Server | None = None) -> tuple[dict, list[dict]]:
    """The baseline's phases; with ``app_server`` (whose users wait while the mode is not theirs), paired rounds."""
    phases, pairs = {}, []
    baseline_app.prepare(args.database_url, args.redis_url)
    server = start_server(
        "baseline", "baseline_app:create_baseline_app()", env, ["--pythonpath", "scripts"], direct=args.direct
    )
    try:
        locustfile.SHARED.mode = BASELINE_MODES[0]
        environment = Environment(user_classes=[locustfile.BaselineUser], host=server.host, catch_exceptions=True)
        environment.events.request.add_listener(recorder.on_request)
        start_users(environment, args.users, expect_logins=False)
        for mode in BASELINE_MODES:
            switch_mode(mode)
            phases[f"baseline {mode}"] = measure(
                f"baseline {mode}", durations["baseline"], server, recorder, args.users
            )
        if app_server is not None:
            pairs = paired_rounds(durations, {"app": app_server, "baseline": server}, recorder, args.users)
        environment.runner.quit()
    finally:
        server.stop()
    return phases, pairs


def paired_rounds(durations, servers: dict[str, Server], recorder, users: int) -> list[dict]:
    """Each ratio's two sides measured one right after the other, ``pair_rounds`` times."""
    rounds = []
    for number in range(1, durations["pair_rounds"] + 1):
        measured = {"round": number}
        for _name, _wanted, *sides in RATIOS:
            for side, (mode, endpoint) in zip(("app", "baseline"), sides, strict=True):
                switch_mode(mode)
                phase = measure(f"round {number} {mode}", durations["pair"], servers[side], recorder, users)
                measured[mode] = {
                    "rps": phase["endpoints"].get(endpoint, {}).get("rps"),
                    "errors": phase["errors"],
                    "server_cpu_ms_per_request": phase["server_cpu_ms_per_request"],
                }
        rounds.append(measured)
    return rounds


def pair_ratios(pairs: list[dict], app_mode: str, baseline_mode: str) -> list[float]:
    return [
        round(entry[app_mode]["rps"] / entry[baseline_mode]["rps"], 2)
        for entry in pairs
        if entry.get(app_mode, {}).get("rps") and entry.get(baseline_mode, {}).get("rps")
    ]


# --- Judging ----------------------------------------------------------------------------------------------


def endpoint_rps(phases: dict, phase: str, endpoint: str) -> float | None:
    return phases.get(phase, {}).get("endpoints", {}).get(endpoint, {}).get("rps")


def judge(phases: dict, pairs: list[dict] | None = None) -> list[dict]:
    """The targets of PRODUCT.md, each with the measured value and PASS/FAIL."""
    targets = []

    def add(name: str, target: str, value, passed: bool | None, detail: str = "") -> None:
        verdict = "n/a" if passed is None else ("PASS" if passed else "FAIL")
        targets.append({"target": name, "wanted": target, "measured": value, "verdict": verdict, "detail": detail})

    floor = phases.get("floor")
    if floor:
        add("floor: errors", "0", floor["errors"], floor["errors"] == 0)
        worst = max(floor["endpoints"].items(), key=lambda item: item[1]["p99_ms"])
        requests = worst[1]["requests"]
        # The nearest-rank 99th percentile of 100 requests or fewer is the slowest of them.
        sample = f"{requests} requests, the p99 is its slowest" if requests <= 100 else f"{requests:,} requests"
        add(
            "floor: p99 of every endpoint",
            f"<= {FLOOR_P99_MS:g} ms",
            f"{worst[1]['p99_ms']} ms",
            worst[1]["p99_ms"] <= FLOOR_P99_MS,
            f"worst: {worst[0]} ({sample})",
        )
    saturated = {name: phases[name] for name in SATURATION_PHASES if name in phases}
    if saturated:
        errors = sum(phase["errors"] for phase in saturated.values())
        add("saturation: errors", "0", errors, errors == 0, ", ".join(saturated))
        slowest = max(
            (
                (f"{phase}: {name}", endpoint["max_ms"])
                for phase, data in saturated.items()
                for name, endpoint in data["endpoints"].items()
            ),
            key=lambda item: item[1],
        )
        add(
            "saturation: slowest response",
            f"<= {SLOWEST_MS:g} ms",
            f"{slowest[1]} ms",
            slowest[1] <= SLOWEST_MS,
            slowest[0],
        )
        ratios = [
            (f"{phase}: {name}", endpoint["p99_over_p50"])
            for phase, data in saturated.items()
            for name, endpoint in data["endpoints"].items()
            if endpoint["p99_over_p50"] is not None
        ]
        worst_ratio = max(ratios, key=lambda item: item[1])
        add(
            "saturation: p99 / p50 of every endpoint",
            f"<= {TAIL_RATIO:g}",
            worst_ratio[1],
            worst_ratio[1] <= TAIL_RATIO,
            f"worst: {worst_ratio[0]}",
        )
    for name, wanted, (app_mode, app_endpoint), (baseline_mode, baseline_endpoint) in RATIOS:
        app_rps = endpoint_rps(phases, app_mode, app_endpoint)
        baseline_rps = endpoint_rps(phases, f"baseline {baseline_mode}", baseline_endpoint)
        single = f"{app_rps} vs {baseline_rps} req/s" if app_rps and baseline_rps else ""
        ratios = pair_ratios(pairs or [], app_mode, baseline_mode)
        if ratios:
            middle = statistics.median(ratios)
            rounds = ", ".join(f"{ratio:g}" for ratio in ratios)
            detail = f"median of the paired rounds ({rounds}); the phases alone: {single}"
            add(name, f">= {wanted:g}", round(middle, 2), middle >= wanted, detail)
        elif app_rps and baseline_rps:
            ratio = round(app_rps / baseline_rps, 2)
            add(name, f">= {wanted:g}", ratio, ratio >= wanted, single)
    app_phases = [phases[name] for name in ("floor", *SATURATION_PHASES) if name in phases]
    if app_phases:
        biggest = max(max(phase["worker_rss_mb"]["max"].values(), default=0) for phase in app_phases)
        add("worker memory under load", f"< {WORKER_RSS_MB:g} MB RSS", f"{biggest} MB", biggest < WORKER_RSS_MB)
    mixed = phases.get("mixed")
    if mixed:
        start, end = mixed["worker_rss_mb"]["start"], mixed["worker_rss_mb"]["end"]
        growth = max((end[pid] - start[pid] for pid in end if pid in start), default=0.0)
        add(
            "worker memory growth over the mixed phase",
            "none (judge over 10 min)",
            f"{round(growth, 1)} MB",
            None,
            f"{mixed['seconds']} s",
        )
    return targets


# --- Reporting --------------------------------------------------------------------------------------------


def machine_info(args: argparse.Namespace) -> dict:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    postgres = query(args.database_url, "SHOW server_version")[0][0]
    redis_version = redis.Redis.from_url(args.redis_url).info("server").get("redis_version")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "postgresql": postgres,
        "redis": redis_version,
        "python": platform.python_version(),
        "locust": locust.__version__,
        "commit": commit.stdout.strip() or None,
    }


def _timing(seconds: float | None, bags: int | None) -> str:
    return "not measured" if seconds is None else f"{seconds} s for {bags:,} bags"


def _timed_at(at: str | None) -> str:
    return f" (timed {at}, when this database was seeded)" if at else ""


def markdown(report: dict) -> str:
    run, machine = report["run"], report["machine"]
    lines = [
        f"# bagtrack benchmark, {run['started_at']}",
        "",
        f"{run['bags_in_database']:,} bags and {run['scan_rows']:,} scan rows in `{run['database']}`; "
        f"{run['users']} virtual users; gunicorn with {run['workers']} workers"
        f"{' (quick run)' if run['quick'] else ''}.",
        "",
        f"Machine: {machine['cpus']} CPUs ({machine['cpu_model']}), {machine['memory_gib']} GiB, "
        f"PostgreSQL {machine['postgresql']}, Redis {machine['redis']}, Python {machine['python']}, "
        f"Locust {machine['locust']}, commit {machine['commit']}.",
        "",
        f"Connections: {run['topology']}.",
        "",
        f"Seed: {_timing(run['seed_seconds'], run['seed_bags'])}; `flask import bags` into an empty database: "
        f"{_timing(run['import_seconds'], run['import_bags'])}{_timed_at(run['seed_and_import_timed_at'])}.",
        "",
        "## Targets",
        "",
        "| target | wanted | measured | verdict | detail |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {t['target']} | {t['wanted']} | {t['measured']} | {t['verdict']} | {t['detail']} |"
        for t in report["targets"]
    ]
    for name, phase in report["phases"].items():
        cpu = phase["cpu_seconds"]
        lines += [
            "",
            f"## {name}: {phase['users']} users, {phase['seconds']} s, {phase['rps']:,} req/s, "
            f"{phase['errors']} errors",
            "",
            "| endpoint | requests | req/s | p50 ms | p95 ms | p99 ms | max ms | p99/p50 | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for endpoint, figures in phase["endpoints"].items():
            lines.append(
                f"| {endpoint} | {figures['requests']:,} | {figures['rps']:,} | {figures['p50_ms']} | "
                f"{figures['p95_ms']} | {figures['p99_ms']} | {figures['max_ms']} | {figures['p99_over_p50']} | "
                f"{figures['errors']} |"
            )
        rss = phase["worker_rss_mb"]
        lines += [
            "",
            f"CPU seconds: server {cpu['server']} ({phase['server_cpu_ms_per_request']} ms/request), "
            f"nginx {cpu['proxy']}, load generator {cpu['load_generator']}, "
            f"PostgreSQL backends {cpu['postgres']}, Redis {cpu['redis']}, "
            f"other processes {cpu['other']}, whole machine {cpu['machine']} of "
            f"{round(phase['seconds'] * machine['cpus'], 1)}"
            f"{f', of which the hypervisor took {steal} (steal)' if (steal := cpu.get('steal')) is not None else ''}. "
            f"Worker RSS MB: max {sorted(rss['max'].values())}, start {sorted(rss['start'].values())}, "
            f"end {sorted(rss['end'].values())}.",
        ]
        if phase.get("in_app"):
            lines += [
                "",
                "The same requests in the app, from its request log (first hook to answer; the rest of the"
                " time above is nginx, gunicorn reading and writing, the network and the load generator):",
                "",
                "| route | requests | p50 ms | p99 ms | max ms |",
                "|---|---:|---:|---:|---:|",
            ]
            lines += [
                f"| {route} | {figures['requests']:,} | {figures['p50_ms']} | {figures['p99_ms']} | "
                f"{figures['max_ms']} |"
                for route, figures in phase["in_app"].items()
            ]
            slow = {route: figures["slow"] for route, figures in phase["in_app"].items() if "slow" in figures}
            if slow:
                lines += [
                    "",
                    f"Where the time of those over {run['slow_request_ms']:g} ms went, means per request: how long"
                    " the request's own greenlet ran (its CPU, the client side of its statements), its statements"
                    " from send to resumed, garbage collection; the time not run was spent waiting for the"
                    " database, Redis and the worker's other greenlets:",
                    "",
                    "| route | requests | duration ms | ran ms | statements ms | gc ms |",
                    "|---|---:|---:|---:|---:|---:|",
                ]
                lines += [
                    f"| {route} | {figures['requests']:,} | {figures['duration_ms']} | {figures['ran_ms']} | "
                    f"{figures['query_ms']} | {figures['gc_ms']} |"
                    for route, figures in slow.items()
                ]
        if cpu["other"] > 0.1 * phase["seconds"] * machine["cpus"]:
            lines += ["", f"Other processes kept the machine {cpu['other']} CPU seconds busy: the figures are skewed."]
        samples = {name: figures["error_samples"] for name, figures in phase["endpoints"].items() if figures["errors"]}
        if samples:
            lines += ["", "Errors: " + "; ".join(f"{name}: {detail}" for name, detail in samples.items())]
    if report.get("pairs"):
        lines += ["", "## Paired rounds", "", "Each ratio's two sides measured one right after the other.", ""]
        modes = [mode for _name, _wanted, *sides in RATIOS for mode, _endpoint in sides]
        lines += [
            "| round | " + " | ".join(f"{mode} req/s" for mode in modes) + " |",
            "|---:|" + "---:|" * len(modes),
        ]
        for entry in report["pairs"]:
            cells = [str(entry.get(mode, {}).get("rps")) for mode in modes]
            lines.append(f"| {entry['round']} | " + " | ".join(cells) + " |")
    if report.get("notes"):
        lines += ["", "Notes: " + ", ".join(f"{key}: {value}" for key, value in report["notes"].items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    durations = QUICK if args.quick else FULL
    started_at = datetime.now(UTC)
    env = app_environment(args, secrets.token_hex(32))
    redis.Redis.from_url(args.redis_url).flushdb()

    recorder = Recorder()
    phases, server_facts = {}, {}
    data = {"bags": 0, "scans": 0, "seed_seconds": None, "import_seconds": None}
    if set(args.phases) - {"baseline"}:
        data = prepare_data(args, env)
        dispatchers, billers = prepare_accounts(args, env)
        plan = locustfile.Plan(
            password=BENCH_PASSWORD,
            dispatchers=dispatchers,
            billers=billers,
            bags_by_area=sample_bags(args.database_url, data["bags"]),
            loadable_parents=loadable_parents(args.database_url),
            first_parent_number=first_free_parent_number(args.database_url),
            run_tag=run_tag(),
        )
        WORK_DIR.mkdir(parents=True, exist_ok=True)
        (WORK_DIR / "plan.json").write_text(json.dumps(plan.__dict__, indent=1))
        phases, server_facts = run_app_phases(args, env, durations, recorder, plan)
    else:
        ensure_database(args.database_url, recreate=False)
    if "baseline" in args.phases and not server_facts:
        phases.update(run_baseline(args, env, durations, recorder)[0])

    report = {
        "run": {
            "started_at": started_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "bags_requested": args.bags,
            "bags_in_database": data["bags"],
            "scan_rows": data["scans"],
            "seed_seconds": data["seed_seconds"],
            "seed_bags": data.get("seed_bags"),
            "import_seconds": data["import_seconds"],
            "import_bags": data.get("import_bags"),
            "seed_and_import_timed_at": data.get("timed_at"),
            "topology": TOPOLOGY_DIRECT if args.direct else TOPOLOGY_PROXIED,
            "database": without_password(args.database_url),
            "users": args.users,
            "quick": args.quick,
            "durations_s": {phase: durations[phase] for phase in args.phases},
            "slow_request_ms": args.slow_ms,
            "workers": max((phase["workers"] for phase in phases.values()), default=None),
        },
        "machine": machine_info(args),
        "phases": phases,
        "targets": judge(phases, server_facts.get("pairs")),
        "pairs": server_facts.get("pairs") or [],
        "notes": server_facts.get("notes") or {},
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = f"{started_at:%Y%m%dT%H%M%SZ}-{scale_label(args.bags)}"
    (RESULTS_DIR / f"{stem}.json").write_text(json.dumps(report, indent=1))
    table = markdown(report)
    (RESULTS_DIR / f"{stem}.md").write_text(table)
    print()
    print(table)
    log(f"written: bench/results/{stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
