"""Production serving: psycopg2 made cooperative under gevent, and gunicorn with gunicorn.conf.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servers import fetch, free_port
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent

# Runs in its own interpreter: monkey-patching must not leak into the test process.
TWO_SLOW_QUERIES = """
import sys, time
from gevent import monkey
monkey.patch_all()
import gevent, psycopg2
if sys.argv[2] == "cooperative":
    from psycogreen.gevent import patch_psycopg
    patch_psycopg()
connections = [psycopg2.connect(sys.argv[1]) for _ in range(2)]
started = time.perf_counter()
gevent.joinall([gevent.spawn(c.cursor().execute, "SELECT pg_sleep(0.5)") for c in connections], raise_error=True)
print(time.perf_counter() - started)
"""


def two_slow_queries(dsn: str, mode: str) -> float:
    result = subprocess.run(
        [sys.executable, "-c", TWO_SLOW_QUERIES, dsn, mode], capture_output=True, text=True, timeout=30, check=True
    )
    return float(result.stdout.strip())


@pytest.mark.postgres
def test_psycogreen_lets_two_queries_wait_together(database_url, migrated):
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    assert two_slow_queries(dsn, "cooperative") < 0.9
    # Without it, one query blocks the whole process and the two run one after the other.
    assert two_slow_queries(dsn, "blocking") >= 1.0


@pytest.mark.slow
def test_gunicorn_serves_and_stops_gracefully(database_url, migrated, tmp_path):
    port, ignored_port = free_port(), free_port()
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "SECRET_KEY": "gunicorn-test-secret-gunicorn-test-secret",
        # The command line wins over the file: this address must stay unused.
        "BAGTRACK_BIND": f"127.0.0.1:{ignored_port}",
        # Every request is logged with where its time went.
        "BAGTRACK_SLOW_REQUEST_MS": "0.001",
    }
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    stderr_path = tmp_path / "gunicorn.stderr"
    with stderr_path.open("w") as stderr:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "gunicorn.conf.py",
                "-b",
                f"127.0.0.1:{port}",
                "-w",
                "2",
                "wsgi:app",
            ],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, stderr_path.read_text()
            try:
                status, _, body = fetch(f"{base}/health")
                break
            except OSError:
                assert time.monotonic() < deadline, stderr_path.read_text()
                time.sleep(0.1)
        assert status == 200 and json.loads(body) == {"status": "ok"}

        status, headers, body = fetch(f"{base}/ready", {"X-Request-ID": "gunicorn-ready-1"})
        assert status == 200, body
        assert json.loads(body)["database"]["ok"] is True
        assert headers["X-Request-ID"] == "gunicorn-ready-1"

        for _ in range(6):
            fetch(f"{base}/health")
        status, _, body = fetch(f"{base}/metrics")
        assert status == 200
        metrics = body.decode()
        assert 'bagtrack_request_duration_seconds_count{endpoint="ops.health",method="GET",status="200"}' in metrics
        assert "bagtrack_db_pool_size" in metrics

        with pytest.raises(OSError):
            fetch(f"http://127.0.0.1:{ignored_port}/health")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            returncode = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert returncode == 0, stderr_path.read_text()

    lines = stderr_path.read_text().splitlines()
    request_lines = [json.loads(line) for line in lines if line.startswith("{")]
    # The request's own line (a collection it set off is logged with its id too).
    ready = [line for line in request_lines if line.get("request_id") == "gunicorn-ready-1" and "status" in line]
    assert ready and ready[0]["path"] == "/ready" and ready[0]["status"] == 200
    # Under gevent the request's own greenlet is timed: it did not run while it waited for PostgreSQL
    # (psycopg2 yields to the other greenlets; SQLite's driver holds the worker while it works).
    phases = ready[0]["phases"]
    assert phases["queries"] >= 1
    if database_url.startswith("postgresql"):
        assert 0 < phases["ran_ms"] < ready[0]["duration_ms"]
    else:
        assert 0 < phases["ran_ms"] <= ready[0]["duration_ms"]
    assert any("Shutting down" in line for line in lines)
    # The workers' metric files went away with the server.
    [metrics_line] = [line for line in lines if "Prometheus multiprocess directory: " in line]
    assert not Path(metrics_line.split("directory: ")[1].strip()).exists()
