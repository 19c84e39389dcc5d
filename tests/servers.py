"""Real servers a test starts and stops itself, each on a spare loopback port:
a private ``redis-server``, gunicorn serving ``wsgi:app``, and a scratch
PostgreSQL database migrated with ``flask db upgrade``.

They never touch the shared PostgreSQL and Redis a developer or CI runs, apart
from creating and dropping the scratch database named by the test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import requests
from helpers import CSRF_META, JSON
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(ready, what: str, timeout: float = START_TIMEOUT_S, alive=lambda: True) -> None:
    """Poll ``ready()`` until it is true; fail naming ``what`` after ``timeout`` or once ``alive()`` is false."""
    deadline = time.monotonic() + timeout
    while not ready():
        if not alive():
            raise RuntimeError(f"{what} exited while starting")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within {timeout} s")
        time.sleep(0.05)


class RedisServer:
    """A throwaway ``redis-server`` without persistence, on its own port.

    ``stop()`` kills it the way a crash would; ``start()`` brings it back on
    the same port, empty.
    """

    def __init__(self, directory: Path):
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.answers, f"redis-server on port {self.port}", alive=lambda: self.process.poll() is None)
        return self

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


@contextmanager
def redis_server(directory: Path):
    """A running private Redis for the length of the ``with`` block."""
    server = RedisServer(directory).start()
    try:
        yield server
    finally:
        server.stop()


def flask_command(database_url: str, *args: str, environment: dict | None = None) -> str:
    """Run ``flask --app bagtrack ARGS`` against ``database_url``; its output, or a failure naming it."""
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "bagtrack", *args],
        cwd=ROOT,
        env={**os.environ, "SECRET_KEY": "scratch-secret-" * 3, **(environment or {}), "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise RuntimeError(f"flask {' '.join(args)} failed: {result.stderr.strip()[-2000:]}")
    return result.stdout


@contextmanager
def scratch_database(database_url: str, name: str):
    """A new PostgreSQL database ``name`` beside ``database_url``'s, migrated by ``flask db upgrade``; dropped after."""
    url = make_url(database_url).set(database=name)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        scratch_url = url.render_as_string(hide_password=False)
        flask_command(scratch_url, "db", "upgrade")
        yield scratch_url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def fetch(url: str, headers: dict | None = None, timeout: float = 5) -> tuple[int, dict, bytes]:
    """GET ``url``: status, headers and body, also for error statuses."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


class Gunicorn:
    """``gunicorn -c gunicorn.conf.py wsgi:app`` on ``port`` (default: a free one), its stderr kept in ``log_path``."""

    def __init__(self, log_path: Path, environment: dict, *args: str, port: int | None = None):
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        environment = {**os.environ, **environment}
        # A directory of its own, made (and removed) by gunicorn.conf.py.
        environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with log_path.open("w") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "-c",
                    "gunicorn.conf.py",
                    "-b",
                    f"127.0.0.1:{self.port}",
                    *args,
                    "wsgi:app",
                ],
                cwd=ROOT,
                env=environment,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        try:
            wait_for(self._healthy, f"gunicorn on port {self.port}", alive=lambda: self.process.poll() is None)
        except RuntimeError as error:
            self.kill()
            raise RuntimeError(f"{error}\n{self.log()}") from None

    def _healthy(self) -> bool:
        try:
            return fetch(f"{self.base}/health", timeout=1)[0] == 200
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text()

    def terminate(self, timeout: float) -> int:
        """Send SIGTERM (a graceful shutdown) and wait up to ``timeout`` seconds for the exit status."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def on_redis(database_url: str, secret_key: str, **settings: str) -> dict:
    """A server's environment on PostgreSQL and this run's Redis, its keys under a prefix of its own."""
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": os.environ["REDIS_URL"],
        "SECRET_KEY": secret_key,
        "BAGTRACK_CACHE_PREFIX": f"bagtrack-test-{uuid.uuid4().hex[:8]}:",
        **settings,
    }


def http_login(base: str, username: str, password: str, *, json: bool = True) -> requests.Session:
    """A browser-like session logged in through the form; later posts send the CSRF token header.

    With ``json`` every request asks for JSON answers, as the handheld's scripts do; without, pages.
    """
    session = requests.Session()
    page = session.get(f"{base}/login", timeout=5)
    token = CSRF_META.search(page.text).group(1)
    response = session.post(
        f"{base}/login",
        data={"username": username, "password": password, "csrf_token": token},
        allow_redirects=False,
        timeout=5,
    )
    assert response.status_code == 303, response.text
    token = CSRF_META.search(session.get(f"{base}/scan", timeout=5).text).group(1)
    session.headers.update({"X-CSRFToken": token, **(JSON if json else {})})
    return session
