"""How long a failed login takes for a real username and for an unknown one, through a real server.

    python scripts/login_timing.py --database-url postgresql+psycopg2://postgres@127.0.0.1:5432/postgres [--tries 30]

It makes a scratch database beside the given one, migrates it, creates one
user with the CLI (a real password hash), starts gunicorn on a free loopback
port with rate limits off and a lockout too high to trigger, then posts the
login form ``--tries`` times with a wrong password for the real user and for
unknown names, alternating, each on a fresh connection. It prints the median
and the 90th percentile of each and their ratio; the scratch database and the
server are gone afterwards. The two medians must stay within 2x: otherwise
the answer time tells which usernames exist.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import Gunicorn, flask_command, scratch_database

CSRF_META = re.compile(r'name="csrf-token" content="([^"]+)"')
PASSWORD = "timing-check-password"


def failed_login(base: str, username: str) -> float:
    """Seconds from posting a wrong password for ``username`` to the answer (a 401 is required)."""
    session = requests.Session()
    session.headers["Connection"] = "close"
    token = CSRF_META.search(session.get(f"{base}/login", timeout=10).text).group(1)
    started = time.perf_counter()
    answer = session.post(
        f"{base}/login",
        data={"username": username, "password": "not-the-password", "csrf_token": token},
        allow_redirects=False,
        timeout=10,
    )
    elapsed = time.perf_counter() - started
    if answer.status_code != 401:
        raise SystemExit(f"expected 401 for {username}, got {answer.status_code}")
    return elapsed


def summary(name: str, seconds: list[float]) -> float:
    median = statistics.median(seconds)
    p90 = statistics.quantiles(seconds, n=10)[-1]
    print(f"{name:<32} median {median * 1000:7.1f} ms   p90 {p90 * 1000:7.1f} ms   ({len(seconds)} tries)")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True, help="a PostgreSQL URL; a scratch database is made beside it")
    parser.add_argument("--tries", type=int, default=30)
    args = parser.parse_args()
    with scratch_database(args.database_url, "bagtrack_login_timing") as url, tempfile.TemporaryDirectory() as tmp:
        flask_command(url, "users", "create", "realuser", "--role", "biller", "--password", PASSWORD)
        environment = {
            "DATABASE_URL": url,
            "REDIS_URL": "",
            "SECRET_KEY": "login-timing-secret-login-timing-secret",
            "BAGTRACK_RATELIMIT_ENABLED": "0",
            "BAGTRACK_LOCKOUT_ATTEMPTS": "100000",
        }
        server = Gunicorn(Path(tmp) / "gunicorn.log", environment, "-w", "2")
        try:
            for _ in range(3):  # warm both workers (first hash, templates, pool)
                failed_login(server.base, "realuser")
                failed_login(server.base, "warm-up-unknown")
            real, unknown = [], []
            for number in range(args.tries):
                real.append(failed_login(server.base, "realuser"))
                unknown.append(failed_login(server.base, f"nobody-{number}"))
        finally:
            server.kill()
    real_median = summary("real user, wrong password", real)
    unknown_median = summary("unknown user", unknown)
    ratio = max(real_median, unknown_median) / min(real_median, unknown_median)
    print(f"ratio of medians: {ratio:.2f} ({'within' if ratio <= 2 else 'NOT within'} 2x)")


if __name__ == "__main__":
    main()
