"""``make cluster``: the scale-out topology on one machine, driven under faults, then verified.

Built from Debian's packages in a temporary directory, every server on a
loopback port of its own, all torn down at the end (also on failure or
Ctrl-C):

    60 scanners ──► nginx ──► gunicorn A ─┐            ┌─► PostgreSQL primary ──WAL──► streaming replica
                         └──► gunicorn B ─┴─► PgBouncer ┘      (scans, bills)             (lists, exports)
                                          └─► Redis (rate limits, cache)

The scanners log in through nginx and scan for about a minute while one app
instance is stopped and started again, PgBouncer is restarted and a month's
export runs against the replica. Then: every acknowledged scan is stored
exactly once, ``flask check --invariants`` passes on the primary, the replica
has caught up, one user's rate limit is one budget across both instances, and
sessions moved between instances. The last line says ``pass`` or ``FAIL``
(exit status 1).

Run as root it installs missing packages with apt-get and runs PostgreSQL and
PgBouncer as the ``postgres`` user.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import requests

ROOT = Path(__file__).resolve().parent.parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PACKAGES = {
    "postgresql-15": PG_BIN / "initdb",
    "pgbouncer": "pgbouncer",
    "nginx": "nginx",
    "redis-server": "redis-server",
}
DATABASE = "bagtrack"
PASSWORD = "cluster-pass-1"
SCANNERS = 60
PARENT_CAPACITY = 30
# At most 16 a window, so each hit is counted in Redis (bagtrack.counters): the probe can expect the exact limit.
PROBE_LIMIT = 16
CSRF_META = re.compile(r'name="csrf-token" content="([^"]+)"')
JSON = {"Accept": "application/json"}
RETRYABLE = {502, 503, 504}
LAG_QUERY = (
    "SELECT CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0"
    " ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END"
)


class ClusterError(RuntimeError):
    """The topology could not be built."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_until(check, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise ClusterError(f"{what} did not come up within {timeout:.0f} s")
        time.sleep(0.1)


def ensure_packages() -> None:
    """Install what is missing from Debian's packages (root only)."""
    missing = [package for package, tool in PACKAGES.items() if not (Path(tool).exists() or shutil.which(str(tool)))]
    if not missing:
        return
    if os.geteuid() != 0:
        raise ClusterError(f"missing {', '.join(missing)}; install them with apt-get (needs root)")
    log(f"installing {' '.join(missing)} with apt-get")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=environment)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True, env=environment
    )


class Stack:
    """The servers, started in order and stopped in reverse."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.as_postgres = {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}
        self.ports = {name: free_port() for name in ("primary", "replica", "pgbouncer", "redis", "a", "b", "nginx")}
        self.processes: dict[str, subprocess.Popen] = {}
        self.clusters: list[Path] = []
        self.logs: list[Path] = []

    # --- helpers -------------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        return self.directory / name

    def own(self, path: Path) -> Path:
        """``path`` (a new directory when it has no suffix), owned by the user PostgreSQL runs as."""
        if not path.suffix:
            path.mkdir(mode=0o700, exist_ok=True)
        else:
            path.touch()
        if self.as_postgres:
            shutil.chown(path, "postgres", "postgres")
        return path

    def run(self, command: list, postgres: bool = False, **kwargs) -> subprocess.CompletedProcess:
        options = self.as_postgres if postgres else {}
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.directory, **options, **kwargs)
        if result.returncode != 0:
            raise ClusterError(f"{' '.join(map(str, command[:3]))} failed: {(result.stderr or result.stdout)[-1500:]}")
        return result

    def url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.ports[name]}/{DATABASE}"

    # --- PostgreSQL ----------------------------------------------------------------------------
    def start_primary(self) -> None:
        data = self.own(self.path("primary"))
        self.run([PG_BIN / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8"], postgres=True)
        self.configure_postgres(data, self.ports["primary"])
        self.pg_start(data)
        self.run(["psql", "-h", "127.0.0.1", "-p", str(self.ports["primary"]), "-U", "postgres", "-qc",
                  f"CREATE DATABASE {DATABASE}", "postgres"])  # fmt: skip

    def configure_postgres(self, data: Path, port: int) -> None:
        sockets = self.own(self.path("sockets"))
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{sockets}'\n"
                "max_connections = 100\nwal_level = replica\nmax_wal_senders = 5\nhot_standby = on\n"
                # Long export reads on the standby are not cancelled by the primary's vacuum.
                "hot_standby_feedback = on\nfsync = on\nsynchronous_commit = on\n"
            )

    def pg_start(self, data: Path) -> None:
        logfile = self.own(self.path(f"{data.name}.log"))
        self.logs.append(logfile)
        self.run([PG_BIN / "pg_ctl", "-D", data, "-l", logfile, "-w", "-t", "60", "start"], postgres=True)
        self.clusters.append(data)

    def start_replica(self) -> None:
        data = self.own(self.path("replica"))
        self.run(
            ["pg_basebackup", "-h", "127.0.0.1", "-p", str(self.ports["primary"]), "-U", "postgres", "-D", data,
             "-R", "-X", "stream", "--checkpoint=fast"],
            postgres=True,
        )  # fmt: skip
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(f"\nport = {self.ports['replica']}\n")
        self.pg_start(data)

    # --- PgBouncer, Redis, nginx ---------------------------------------------------------------
    def start_pgbouncer(self) -> None:
        userlist = self.own(self.path("userlist.txt"))
        userlist.write_text('"postgres" ""\n')
        ini = self.own(self.path("pgbouncer.ini"))
        ini.write_text(
            f"[databases]\n{DATABASE} = host=127.0.0.1 port={self.ports['primary']} dbname={DATABASE}\n"
            f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {self.ports['pgbouncer']}\n"
            f"unix_socket_dir = {self.path('sockets')}\nauth_type = trust\nauth_file = {userlist}\n"
            f"admin_users = postgres\npool_mode = transaction\nmax_client_conn = 400\ndefault_pool_size = 20\n"
            "reserve_pool_size = 5\nserver_reset_query =\nignore_startup_parameters = extra_float_digits\n"
        )
        self.spawn("pgbouncer", ["pgbouncer", str(ini)], self.ports["pgbouncer"], postgres=True)

    def restart_pgbouncer(self) -> float:
        """Stop PgBouncer at once (clients' transactions cut) and start it again; seconds it was away."""
        started = time.monotonic()
        self.stop("pgbouncer", signal.SIGTERM)
        self.spawn("pgbouncer", ["pgbouncer", str(self.path("pgbouncer.ini"))], self.ports["pgbouncer"], postgres=True)
        return time.monotonic() - started

    def start_redis(self) -> None:
        self.spawn(
            "redis",
            ["redis-server", "--port", str(self.ports["redis"]), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            self.ports["redis"],
        )  # fmt: skip

    def start_nginx(self) -> None:
        prefix = self.path("nginx")
        prefix.mkdir()
        conf = prefix / "nginx.conf"
        conf.write_text(
            f"daemon off;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log warn;\nworker_processes 1;\n"
            "events { worker_connections 1024; }\n"
            "http {\n  access_log off;\n"
            f"  client_body_temp_path {prefix}/body;\n  proxy_temp_path {prefix}/proxy;\n"
            f"  fastcgi_temp_path {prefix}/fastcgi;\n  uwsgi_temp_path {prefix}/uwsgi;\n"
            f"  scgi_temp_path {prefix}/scgi;\n"
            "  keepalive_timeout 75s;\n  keepalive_requests 100000;\n"
            "  upstream bagtrack {\n"
            f"    server 127.0.0.1:{self.ports['a']} max_fails=1 fail_timeout=2s;\n"
            f"    server 127.0.0.1:{self.ports['b']} max_fails=1 fail_timeout=2s;\n  }}\n"
            f"  server {{\n    listen 127.0.0.1:{self.ports['nginx']};\n    client_max_body_size 64m;\n"
            "    location / {\n      proxy_pass http://bagtrack;\n      proxy_connect_timeout 2s;\n"
            "      proxy_read_timeout 60s;\n      proxy_next_upstream error timeout;\n"
            "      proxy_set_header Host $host;\n"
            "      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
            "      proxy_set_header X-Forwarded-Proto $scheme;\n"
            "      proxy_set_header X-Request-ID $request_id;\n"
            # Which instance answered: how this run sees sessions move between them.
            "      add_header X-Upstream $upstream_addr always;\n    }\n  }\n}\n"
        )
        self.logs.append(prefix / "error.log")
        self.spawn("nginx", ["nginx", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
                   self.ports["nginx"])  # fmt: skip

    # --- the app ------------------------------------------------------------------------------
    def app_environment(self) -> dict:
        environment = {
            **os.environ,
            "DATABASE_URL": self.url("pgbouncer"),
            "BAGTRACK_DB_PGBOUNCER": "true",
            "DATABASE_REPLICA_URL": self.url("replica"),
            "REDIS_URL": f"redis://127.0.0.1:{self.ports['redis']}/0",
            "SECRET_KEY": "cluster-run-only-secret-cluster-run-only",
            "BAGTRACK_PROXY_FIX": "x_for=1,x_proto=1,x_host=1",
            # 60 handhelds behind one address log in at once; the floor scans faster than people do.
            "BAGTRACK_LIMIT_LOGIN_IP": "1000/minute",
            "BAGTRACK_LIMIT_SCAN": "100000/minute",
            "BAGTRACK_LIMIT_DEFAULT": "100000/minute",
            # Only the probe user loads bills: its budget shows the limit is shared.
            "BAGTRACK_LIMIT_BILL_LOAD": f"{PROBE_LIMIT}/minute",
            "BAGTRACK_LOG_LEVEL": "WARNING",
        }
        environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
        return environment

    def start_app(self, name: str) -> None:
        logfile = self.path(f"gunicorn-{name}.log")
        self.logs.append(logfile)
        with logfile.open("a") as stderr:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{self.ports[name]}",
                 "wsgi:app"],
                cwd=ROOT, env=self.app_environment(), stdout=subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip

        def healthy() -> bool:
            if self.processes[name].poll() is not None:
                raise ClusterError(f"gunicorn {name} exited: {logfile.read_text()[-1500:]}")
            try:
                return requests.get(f"http://127.0.0.1:{self.ports[name]}/health", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(healthy, f"gunicorn {name}", timeout=60)

    def flask(self, *args: str, database: str = "primary") -> str:
        environment = {**self.app_environment(), "DATABASE_URL": self.url(database)}
        environment.pop("DATABASE_REPLICA_URL")
        result = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "bagtrack", *args],
            cwd=ROOT, env=environment, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        if result.returncode != 0:
            raise ClusterError(f"flask {' '.join(args)} failed: {(result.stderr or result.stdout)[-1500:]}")
        return result.stdout

    # --- processes ----------------------------------------------------------------------------
    def spawn(self, name: str, command: list, port: int, postgres: bool = False) -> None:
        options = self.as_postgres if postgres else {}
        logfile = self.path(f"{name}.out")
        with logfile.open("a") as output:
            self.processes[name] = subprocess.Popen(
                command, cwd=self.directory, stdout=output, stderr=subprocess.STDOUT, **options
            )
        self.logs.append(logfile)

        def up() -> bool:
            if self.processes[name].poll() is not None:
                raise ClusterError(f"{name} exited: {logfile.read_text()[-1500:]}")
            return listening(port)

        wait_until(up, name)

    def stop(self, name: str, how: int = signal.SIGTERM, timeout: float = 30) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(how)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def teardown(self) -> None:
        for name in ("nginx", "a", "b", "pgbouncer", "redis"):
            self.stop(name, signal.SIGQUIT if name == "nginx" else signal.SIGTERM)
        for data in reversed(self.clusters):
            subprocess.run([PG_BIN / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True,
                           cwd=self.directory, **self.as_postgres)  # fmt: skip
        self.clusters.clear()

    def tail_logs(self) -> str:
        parts = []
        for path in self.logs:
            if path.exists() and path.stat().st_size:
                parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-1200:]}")
        return "\n".join(parts)


# --- setup of the data -----------------------------------------------------------------------
def prepare_data(stack: Stack) -> dict:
    """Migrate, seed, and add the run's area, scanners, an admin, a probe biller and an open bill."""
    stack.flask("db", "upgrade")
    seeded = stack.flask("seed", "--parents", "2000").strip().splitlines()
    stack.flask("areas", "add", "FLOOR", "--name", "Cluster floor")
    # The scanners share one password: hashed once (the production hash), not sixty times.
    script = (
        "from sqlalchemy import select\n"
        "from bagtrack import accounts, billing, create_app\n"
        "from bagtrack.extensions import db\n"
        "from bagtrack.models import Bag, User\n"
        "app = create_app()\n"
        "with app.app_context():\n"
        f"    first, _ = accounts.create_user(db.session, None, 'scanner00', 'dispatcher', area_code='FLOOR',"
        f" password='{PASSWORD}')\n"
        f"    for number in range(1, {SCANNERS}):\n"
        "        db.session.add(User(username=f'scanner{number:02d}', role='dispatcher', area_id=first.area_id,"
        " password_hash=first.password_hash, active=True, failed_logins=0, session_version=1))\n"
        "    db.session.add(User(username='office', role='admin', password_hash=first.password_hash, active=True,"
        " failed_logins=0, session_version=1))\n"
        "    probe = User(username='probe', role='biller', password_hash=first.password_hash, active=True,"
        " failed_logins=0, session_version=1)\n"
        "    db.session.add(probe)\n"
        "    db.session.commit()\n"
        "    billing.create_bill(db.session, probe,"
        " {'bill_no': 'CLUSTER-1', 'capacity': '100', 'destination': 'Depot'})\n"
        "    parent = db.session.scalar(select(Bag.qr).where(Bag.kind == 'parent', Bag.status == 'complete',"
        " Bag.bill_id.is_(None)).limit(1))\n"
        "    print(parent)\n"
    )
    environment = {**stack.app_environment(), "DATABASE_URL": stack.url("primary")}
    environment.pop("DATABASE_REPLICA_URL")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        raise ClusterError(f"creating users failed: {result.stderr[-1500:]}")
    return {
        "seed": next((line for line in seeded if line.startswith("Seeded")), ""),
        "probe_parent": result.stdout.strip(),
    }


# --- the load --------------------------------------------------------------------------------
def login(base: str, username: str, attempts: int = 3) -> requests.Session:
    """A session logged in through the form (password hashing is slow on purpose: retried, not hurried)."""
    for attempt in range(1, attempts + 1):
        try:
            return login_once(base, username)
        except (ClusterError, requests.RequestException, AttributeError) as error:
            if attempt == attempts:
                raise ClusterError(f"login of {username} failed: {error}") from None
            time.sleep(1)
    raise AssertionError("unreachable")


def login_once(base: str, username: str) -> requests.Session:
    session = requests.Session()
    token = CSRF_META.search(session.get(f"{base}/login", timeout=30).text).group(1)
    answer = session.post(
        f"{base}/login",
        data={"username": username, "password": PASSWORD, "csrf_token": token},
        allow_redirects=False,
        timeout=30,
    )
    if answer.status_code != 303:
        raise ClusterError(f"login of {username} answered {answer.status_code}: {answer.text[:300]}")
    token = CSRF_META.search(session.get(f"{base}/scan", timeout=30).text).group(1)
    session.headers.update({"X-CSRFToken": token, **JSON})
    return session


class Floor:
    """Sixty scanners filling parents through nginx, each with its keep-alive connection."""

    def __init__(self, base: str, sessions: list[requests.Session], pace: float):
        self.base = base
        self.sessions = sessions
        self.pace = pace
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acknowledged: dict[str, str] = {}  # child -> parent
        self.in_doubt: set[str] = set()
        self.latencies: list[float] = []
        self.statuses: Counter = Counter()
        self.unexpected: list[str] = []
        self.upstreams: dict[int, set] = defaultdict(set)
        self.by_upstream: Counter = Counter()
        self.parents: set[str] = set()
        self.deadline = float("inf")

    def post(self, scanner: int, path: str, form: dict) -> bool:
        """POST until an answer; True once acknowledged. Retries what a handheld retries (503, 502, lost)."""
        session = self.sessions[scanner]
        while time.monotonic() < self.deadline:
            started = time.perf_counter()
            try:
                answer = session.post(f"{self.base}{path}", data=form, timeout=15)
            except requests.RequestException as error:
                with self.lock:
                    self.statuses[type(error).__name__] += 1
                time.sleep(0.2)
                continue
            elapsed = time.perf_counter() - started
            upstream = answer.headers.get("X-Upstream", "")
            with self.lock:
                self.statuses[answer.status_code] += 1
                if answer.status_code in (200, 201):
                    self.latencies.append(elapsed)
                    # The last address is the instance that answered (nginx lists the ones it tried).
                    served = upstream.split(",")[-1].strip()
                    self.upstreams[scanner].add(served)
                    self.by_upstream[served] += 1
            if answer.status_code in RETRYABLE:
                time.sleep(0.2)
                continue
            if answer.status_code in (200, 201) and answer.json().get("ok"):
                return True
            with self.lock:
                self.unexpected.append(f"{path} {form} -> {answer.status_code} {answer.text[:200]}")
            return False
        return False

    def scanner(self, number: int) -> None:
        parent_number = 0
        # Handhelds do not scan in step: each starts somewhere within its first interval.
        next_scan = time.monotonic() + self.pace * number / SCANNERS
        while not self.stop.is_set():
            parent = f"SB{60000 + number * 500 + parent_number:05d}"
            if not self.post(number, "/scan/parent", {"qr": parent}):
                return
            with self.lock:
                self.parents.add(parent)
            for slot in range(PARENT_CAPACITY):
                if self.stop.is_set():
                    return
                next_scan += self.pace
                time.sleep(max(0.0, next_scan - time.monotonic()))
                child = f"K{number:02d}{parent_number:03d}{slot:02d}"
                with self.lock:
                    self.in_doubt.add(child)
                if self.post(number, "/scan/child", {"parent": parent, "qr": child}):
                    with self.lock:
                        self.in_doubt.discard(child)
                        self.acknowledged[child] = parent
            parent_number += 1


class Office:
    """Lists and searches as the office reads them, every half second, through nginx."""

    def __init__(self, base: str, session: requests.Session):
        self.base = base
        self.session = session
        self.stop = threading.Event()
        self.paused = threading.Event()
        self.statuses: Counter = Counter()

    def run(self) -> None:
        while not self.stop.is_set():
            if not self.paused.is_set():
                for path in ("/api/scans?limit=50", "/bags?q=SB6&kind=parent"):
                    try:
                        self.statuses[self.session.get(f"{self.base}{path}", timeout=15).status_code] += 1
                    except requests.RequestException as error:
                        self.statuses[type(error).__name__] += 1
            time.sleep(0.5)


class Sampler:
    """Once a second: PgBouncer's pools, the primary's connections, the replica's lag, the apps' pools."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.stop = threading.Event()
        self.peaks: Counter = Counter()
        self.lags: list[float] = []

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(1)

    def sample(self) -> None:
        for name, query in (
            ("pgbouncer", "SHOW POOLS"),
            ("primary", f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{DATABASE}'"),
            ("replica", LAG_QUERY),
        ):
            try:
                connection = psycopg2.connect(
                    host="127.0.0.1", port=self.stack.ports[name], user="postgres",
                    dbname="pgbouncer" if name == "pgbouncer" else DATABASE, connect_timeout=2,
                )  # fmt: skip
            except psycopg2.Error:
                continue
            try:
                connection.autocommit = True
                with connection.cursor() as cursor:
                    cursor.execute(query)
                    rows = cursor.fetchall()
                    columns = [column.name for column in cursor.description]
            except psycopg2.Error:
                continue
            finally:
                connection.close()
            if name == "pgbouncer":
                for row in rows:
                    pool = dict(zip(columns, row, strict=True))
                    if pool["database"] == DATABASE:
                        self.peak("pgbouncer server connections in use", pool["sv_active"])
                        self.peak("pgbouncer clients waiting", pool["cl_waiting"])
                        self.peak("pgbouncer longest wait (ms)", pool["maxwait"] * 1000 + pool["maxwait_us"] // 1000)
                        self.peak("pgbouncer client connections", pool["cl_active"] + pool["cl_waiting"])
            elif name == "primary":
                self.peak("primary backends of the app", rows[0][0])
            elif rows and rows[0][0] is not None:
                self.lags.append(float(rows[0][0]))
        for name in ("a", "b"):
            metrics = scrape(self.stack, name)
            self.peak(
                f"pool connections in use, instance {name.upper()}", metric(metrics, "bagtrack_db_pool_checked_out")
            )

    def peak(self, name: str, value: float) -> None:
        self.peaks[name] = max(self.peaks[name], value)


def scrape(stack: Stack, name: str) -> str:
    try:
        return requests.get(f"http://127.0.0.1:{stack.ports[name]}/metrics", timeout=3).text
    except requests.RequestException:
        return ""


def metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def reads_from(stack: Stack, name: str) -> str:
    """Where instance ``name`` sends reads of lists and exports now, by its ``/ready``."""
    try:
        return requests.get(f"http://127.0.0.1:{stack.ports[name]}/ready", timeout=3).json()["replica"]["reads"]
    except (requests.RequestException, ValueError, KeyError):
        return "unknown"


def routed_reads(stack: Stack) -> dict[str, float]:
    totals = Counter()
    for name in ("a", "b"):
        text = scrape(stack, name)
        for database in ("replica", "primary"):
            totals[database] += metric(text, "bagtrack_routed_reads_total", f'{{database="{database}"}}')
    return totals


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


# --- the run ---------------------------------------------------------------------------------
def drive(stack: Stack, duration: float, pace: float, checks: list, figures: dict) -> tuple[Floor, Office]:
    base = f"http://127.0.0.1:{stack.ports['nginx']}"
    log(f"logging {SCANNERS} scanners in through nginx")
    started = time.monotonic()
    sessions: list = [None] * SCANNERS

    def log_in(number: int) -> None:
        sessions[number] = login(base, f"scanner{number:02d}")

    workers = [threading.Thread(target=log_in, args=(number,)) for number in range(SCANNERS)]
    for batch in range(0, SCANNERS, 10):
        for worker in workers[batch : batch + 10]:
            worker.start()
        for worker in workers[batch : batch + 10]:
            worker.join()
    if any(session is None for session in sessions):
        raise ClusterError("not every scanner could log in")
    figures["logins"] = f"{SCANNERS} in {time.monotonic() - started:.1f} s"

    floor = Floor(base, sessions, pace)
    office = Office(base, login(base, "office"))
    sampler = Sampler(stack)
    threads = [threading.Thread(target=floor.scanner, args=(number,), daemon=True) for number in range(SCANNERS)]
    threads += [threading.Thread(target=office.run, daemon=True), threading.Thread(target=sampler.run, daemon=True)]
    log(f"driving scans for {duration:.0f} s")
    began = time.monotonic()
    floor.deadline = began + duration + 30
    for thread in threads:
        thread.start()

    def at(second: float) -> None:
        time.sleep(max(0.0, began + second - time.monotonic()))

    try:
        at(duration * 0.2)
        log("stopping app instance A (SIGTERM) and starting it again")
        stopped = time.monotonic()
        stack.stop("a")
        starting = time.monotonic()
        stack.start_app("a")
        back = time.monotonic()
        figures["instance A away"] = (
            f"{back - stopped:.1f} s (graceful stop {starting - stopped:.1f} s, start {back - starting:.1f} s)"
        )

        at(duration * 0.5)
        log("restarting PgBouncer")
        figures["PgBouncer away"] = f"{stack.restart_pgbouncer():.2f} s"

        at(duration * 0.65)
        log("exporting a month of scans through nginx")
        office.paused.set()
        # Reads go to the replica only while it is fresh; on a busy machine replay may fall behind a while.
        waited = time.monotonic()
        wait_until(lambda: all(reads_from(stack, name) == "replica" for name in ("a", "b")), "a fresh replica", 30)
        figures["replica fresh after"] = f"{time.monotonic() - waited:.1f} s"
        time.sleep(1)
        before = routed_reads(stack)
        today = datetime.now(UTC).date()
        export_started = time.monotonic()
        answer = office.session.get(
            f"{base}/exports/scans.csv",
            params={"from": (today - timedelta(days=29)).isoformat(), "to": today.isoformat()},
            headers={"Accept": "text/csv"},
            timeout=120,
        )
        export_rows = max(0, answer.text.count("\n") - 1)
        export_s = time.monotonic() - export_started
        after = routed_reads(stack)
        office.paused.clear()
        from_replica = after["replica"] - before["replica"]
        from_primary = after["primary"] - before["primary"]
        read_by = "replica" if from_replica >= 1 and from_primary == 0 else "primary"
        figures["export"] = (
            f"{export_rows:,} rows in {export_s:.1f} s ({export_rows / max(export_s, 0.001):,.0f} rows/s)"
        )
        checks.append(
            (
                "month's export read from the replica",
                answer.status_code == 200 and export_rows > 0 and read_by == "replica",
                f"HTTP {answer.status_code}, {export_rows:,} rows, read by the {read_by}",
            )
        )

        at(duration)
    except BaseException:
        # Interrupted: scanners stop retrying at once.
        floor.deadline = 0
        raise
    finally:
        floor.stop.set()
        office.stop.set()
        for thread in threads[:-1]:
            thread.join(60)
        sampler.stop.set()
        threads[-1].join(10)
    elapsed = time.monotonic() - began
    figures["load"] = f"{elapsed:.0f} s"
    figures["sampler"] = sampler
    return floor, office


def verify(stack: Stack, floor: Floor, office: Office, probe_parent: str, checks: list, figures: dict) -> None:
    primary = psycopg2.connect(stack.url("primary"))
    primary.autocommit = True
    with primary.cursor() as cursor:
        cursor.execute(
            "SELECT child.qr, parent.qr FROM bag child JOIN bag parent ON parent.id = child.parent_id"
            " WHERE parent.qr = ANY(%s)",
            (sorted(floor.parents),),
        )
        stored = dict(cursor.fetchall())
        cursor.execute(
            "SELECT qr, count(*) FROM scan WHERE kind = 'child' AND outcome = 'ok' AND reason IS NULL"
            " AND qr = ANY(%s) GROUP BY qr",
            (sorted(floor.acknowledged),),
        )
        logged = dict(cursor.fetchall())
        cursor.execute(
            f"SELECT pg_database_size('{DATABASE}'), (SELECT count(*) FROM bag), (SELECT count(*) FROM scan),"
            " pg_current_wal_lsn()"
        )
        size, bags, scans, primary_lsn = cursor.fetchone()
        figures["database"] = f"{size / 2**20:,.0f} MiB for {bags:,} bags and {scans:,} scan-log rows"
    primary.close()

    wrong = [child for child, parent in floor.acknowledged.items() if stored.get(child) != parent]
    twice = [child for child in floor.acknowledged if logged.get(child) != 1]
    unexplained = [child for child in stored if child not in floor.acknowledged and child not in floor.in_doubt]
    checks.append(
        (
            "every acknowledged scan stored exactly once",
            bool(floor.acknowledged) and not wrong and not twice and not unexplained,
            f"{len(floor.acknowledged):,} acknowledged; {len(wrong)} missing or misplaced, {len(twice)} not logged"
            f" once, {len(unexplained)} stored unasked",
        )
    )
    checks.append(
        (
            "answers were only successes or retryable",
            not floor.unexpected and all(str(status) not in ("500",) for status in office.statuses),
            "; ".join(floor.unexpected[:3]) or f"scanners {dict(floor.statuses)}, office {dict(office.statuses)}",
        )
    )

    def caught_up() -> bool:
        replica = psycopg2.connect(stack.url("replica"))
        try:
            with replica.cursor() as cursor:
                cursor.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (primary_lsn,))
                return bool(cursor.fetchone()[0])
        finally:
            replica.close()

    started = time.monotonic()
    try:
        wait_until(caught_up, "the replica", timeout=30)
        replica_ok = True
    except ClusterError:
        replica_ok = False
    lags = figures["sampler"].lags
    checks.append(
        (
            "replica caught up",
            replica_ok,
            f"replayed the primary's last WAL in {time.monotonic() - started:.1f} s; lag during the run"
            f" max {max(lags, default=0):.2f} s",
        )
    )

    try:
        output = stack.flask("check", "--invariants")
        checks.append(("flask check --invariants on the primary", True, output.strip().splitlines()[-1][:90]))
    except ClusterError as error:
        checks.append(("flask check --invariants on the primary", False, str(error)[-300:]))

    moved = sum(1 for served in floor.upstreams.values() if len(served) >= 2)
    checks.append(
        (
            "sessions moved between instances",
            moved == SCANNERS and len(floor.by_upstream) >= 2,
            f"{moved}/{SCANNERS} scanners answered by both; answers per instance "
            + ", ".join(f"{count:,}" for _, count in sorted(floor.by_upstream.items())),
        )
    )
    checks.append(probe_rate_limit(stack, probe_parent))


def probe_rate_limit(stack: Stack, parent: str) -> tuple:
    """One biller loads bills on both instances in turn: the limit counts them together."""
    bases = [f"http://127.0.0.1:{stack.ports[name]}" for name in ("a", "b")]
    session = login(bases[0], "probe")
    # The session made on A is honoured by B.
    on_b = session.get(f"{bases[1]}/bills", headers={"Accept": "text/html"}, timeout=10, allow_redirects=False)
    accepted, refused_at = 0, None
    for attempt in range(PROBE_LIMIT * 2):
        answer = session.post(f"{bases[attempt % 2]}/bills/CLUSTER-1/parents", data={"qr": parent}, timeout=10)
        if answer.status_code == 429:
            refused_at = attempt + 1
            break
        if answer.status_code == 200 and answer.json().get("ok"):
            accepted += 1
    ok = on_b.status_code == 200 and accepted == PROBE_LIMIT and refused_at == PROBE_LIMIT + 1
    return (
        "one rate-limit budget across instances",
        ok,
        f"limit {PROBE_LIMIT}/minute: {accepted} accepted alternating A/B, 429 at request {refused_at};"
        f" A's session on B: HTTP {on_b.status_code}",
    )


def print_report(checks: list, figures: dict, floor: Floor | None) -> None:
    rows = [(name, "pass" if ok else "FAIL", detail) for name, ok, detail in checks]
    if floor is not None and floor.latencies:
        seconds = float(figures["load"].split()[0])
        scans = len(floor.acknowledged)
        latencies = [value * 1000 for value in floor.latencies]
        rows.append(("scans acknowledged", "", f"{scans:,} in {seconds:.0f} s = {scans / seconds:,.0f} child scans/s"))
        rows.append(
            (
                "scan latency through nginx (ms)",
                "",
                f"p50 {statistics.median(latencies):.1f}, p95 {percentile(latencies, 0.95):.1f}, "
                f"p99 {percentile(latencies, 0.99):.1f}, max {max(latencies):.0f}",
            )
        )
    for name in ("seed", "database", "logins", "instance A away", "PgBouncer away", "replica fresh after", "export"):
        if name in figures:
            rows.append((name, "", figures[name]))
    sampler = figures.get("sampler")
    if sampler is not None:
        for name, value in sorted(sampler.peaks.items()):
            rows.append((f"peak {name}", "", f"{value:g}"))
    width = max(len(row[0]) for row in rows)
    print()
    print(f"{'check / figure'.ljust(width)}  result  detail")
    print(f"{'-' * width}  ------  {'-' * 40}")
    for name, result, detail in rows:
        print(f"{name.ljust(width)}  {result.ljust(6)}  {detail}")


def interrupted(_signal, _frame):
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60, help="seconds of scanning (default 60)")
    parser.add_argument(
        "--pace", type=float, default=1.0, help="seconds between one scanner's scans, as on the floor (0: no pause)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) afterwards")
    arguments = parser.parse_args()

    # Ctrl-C and a CI timeout's SIGTERM end the run through the same teardown.
    signal.signal(signal.SIGTERM, interrupted)
    started = time.monotonic()
    checks: list = []
    figures: dict = {}
    floor = None
    directory = Path(tempfile.mkdtemp(prefix="bagtrack-cluster-"))
    directory.chmod(0o755)
    stack = Stack(directory)
    try:
        ensure_packages()
        log(f"building in {directory}: ports {stack.ports}")
        stack.start_primary()
        stack.start_replica()
        stack.start_pgbouncer()
        stack.start_redis()
        log("migrating and seeding the primary")
        data = prepare_data(stack)
        figures["seed"] = data["seed"]
        log("starting two gunicorn instances and nginx")
        stack.start_app("a")
        stack.start_app("b")
        stack.start_nginx()
        floor, office = drive(stack, arguments.duration, arguments.pace, checks, figures)
        verify(stack, floor, office, data["probe_parent"], checks, figures)
    except (ClusterError, KeyboardInterrupt, requests.RequestException, psycopg2.Error, OSError) as error:
        checks.append(("cluster built and driven", False, f"{type(error).__name__}: {str(error)[-600:]}"))
        print(stack.tail_logs(), file=sys.stderr)
    finally:
        stack.teardown()
        if arguments.keep:
            log(f"kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    print_report(checks, figures, floor)
    failed = [name for name, ok, _ in checks if not ok]
    verdict = "FAIL" if failed or not checks else "pass"
    summary = f"{len(checks) - len(failed)}/{len(checks)} checks in {time.monotonic() - started:.0f} s"
    print(f"cluster: {summary}{' (failed: ' + ', '.join(failed) + ')' if failed else ''} {verdict}")
    return 1 if verdict == "FAIL" else 0


if __name__ == "__main__":
    sys.exit(main())
