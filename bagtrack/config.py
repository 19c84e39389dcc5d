"""Settings, read from environment variables in one place.

Every setting has a documented default. When ``DATABASE_URL`` is absent the
app runs on the embedded default: a SQLite file under ``instance/`` and, when
``REDIS_URL`` is absent too, an in-process cache and rate limiter.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

INSTANCE_DIR = Path(__file__).resolve().parent.parent / "instance"
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
MIN_SECRET_KEY_CHARS = 32


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it."""


def env_str(environ: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    value = environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip()


def env_int(environ: Mapping[str, str], name: str, default: int, minimum: int | None = None) -> int:
    raw = env_str(environ, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def env_float(environ: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env_str(environ, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def env_bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env_str(environ, name)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def env_pattern(environ: Mapping[str, str], name: str, default: str) -> re.Pattern[str]:
    raw = env_str(environ, name, default)
    try:
        return re.compile(raw, re.ASCII)
    except re.error as exc:
        raise ConfigError(f"{name} is not a valid regular expression: {exc}") from None


def env_rate(environ: Mapping[str, str], name: str, default: str) -> str:
    """A rate limit such as ``30/minute`` (several separated by ``;``)."""
    from limits import parse_many

    raw = env_str(environ, name, default)
    try:
        parse_many(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a rate such as 30/minute, got {raw!r}") from None
    return raw


def env_roles(environ: Mapping[str, str], name: str) -> frozenset[str]:
    """A comma-separated list of roles (``admin,biller``); empty: none."""
    from .models import ROLES

    roles = frozenset(part.strip().lower() for part in (env_str(environ, name, "") or "").split(",") if part.strip())
    unknown = sorted(roles - set(ROLES))
    if unknown:
        raise ConfigError(f"{name} names roles that do not exist: {', '.join(unknown)} (roles: {', '.join(ROLES)})")
    return roles


PROXY_FIX_HOPS = ("x_for", "x_proto", "x_host", "x_port", "x_prefix")


def env_proxy_fix(environ: Mapping[str, str], name: str) -> dict[str, int]:
    """How many proxies set each ``X-Forwarded-*`` header; empty or ``0``: no proxy is trusted.

    ``x_for=1,x_proto=1,x_host=1`` names them; a bare number ``N`` trusts N
    proxies for ``X-Forwarded-For`` and ``X-Forwarded-Proto``.
    """
    raw = env_str(environ, name, "0")
    if raw.isdigit():
        hops = int(raw)
        return {"x_for": hops, "x_proto": hops} if hops else {}
    counts = {}
    for part in raw.split(","):
        key, _, value = part.strip().partition("=")
        if key not in PROXY_FIX_HOPS or not value.strip().isdigit():
            raise ConfigError(f"{name} must look like x_for=1,x_proto=1,x_host=1 or be a number, got {raw!r}")
        counts[key] = int(value)
    return {key: value for key, value in counts.items() if value}


def env_log_level(environ: Mapping[str, str], name: str, default: str) -> str:
    level = env_str(environ, name, default).upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ConfigError(f"{name} must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {level!r}")
    return level


def env_networks(environ: Mapping[str, str], name: str, default: str) -> tuple:
    """A comma-separated list of IP addresses and CIDR networks; empty means none."""
    import ipaddress

    raw = environ.get(name, default)
    networks = []
    for part in raw.split(","):
        if part.strip():
            try:
                networks.append(ipaddress.ip_network(part.strip(), strict=False))
            except ValueError:
                raise ConfigError(f"{name} must list IP addresses or networks, got {part.strip()!r}") from None
    return tuple(networks)


def env_timezone(environ: Mapping[str, str], name: str, default: str):
    """An IANA time zone name such as ``Asia/Kolkata``."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    raw = env_str(environ, name, default)
    try:
        return ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{name} must be an IANA time zone name such as Asia/Kolkata or UTC, got {raw!r}") from None


def with_psycopg2(url: str) -> str:
    """SQLAlchemy 2.1 reads ``postgresql://`` as psycopg 3; this stack runs psycopg2."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def replica_url(environ: Mapping[str, str]) -> str | None:
    """``DATABASE_REPLICA_URL``: a PostgreSQL standby of ``DATABASE_URL``'s database, or None."""
    url = env_str(environ, "DATABASE_REPLICA_URL")
    if url is None:
        return None
    if not url.startswith(("postgres://", "postgresql://", "postgresql+psycopg2://")):
        raise ConfigError("DATABASE_REPLICA_URL must be a postgresql:// URL (a streaming replica)")
    return with_psycopg2(url)


def embedded_database_url() -> str:
    return f"sqlite:///{INSTANCE_DIR / 'bagtrack.sqlite3'}"


def load(environ: Mapping[str, str] | None = None) -> dict:
    """Build the Flask config mapping from ``environ`` (default: ``os.environ``)."""
    environ = os.environ if environ is None else environ
    database_url = env_str(environ, "DATABASE_URL")
    embedded = database_url is None
    database_url = embedded_database_url() if embedded else with_psycopg2(database_url)
    redis_url = env_str(environ, "REDIS_URL")

    if embedded and env_str(environ, "DATABASE_REPLICA_URL"):
        raise ConfigError("DATABASE_REPLICA_URL needs DATABASE_URL: a replica follows a PostgreSQL primary")
    secret_key = env_str(environ, "SECRET_KEY")
    if secret_key is None and not embedded:
        raise ConfigError("SECRET_KEY must be set when DATABASE_URL is set (production)")
    if secret_key is not None and not embedded and len(secret_key) < MIN_SECRET_KEY_CHARS:
        # Sessions and CSRF tokens are signed with it: a short key can be guessed offline.
        raise ConfigError(
            f"SECRET_KEY must be at least {MIN_SECRET_KEY_CHARS} characters in production, got {len(secret_key)};"
            " generate one with: python3 -c 'import secrets; print(secrets.token_hex(32))'"
        )

    return {
        "EMBEDDED": embedded,
        "SECRET_KEY": secret_key,
        "SQLALCHEMY_DATABASE_URI": database_url,
        "REDIS_URL": redis_url,
        # Where this site's keys start in Redis (several sites, or test servers, may share one).
        "CACHE_KEY_PREFIX": env_str(environ, "BAGTRACK_CACHE_PREFIX") or "bagtrack:",
        # Domain rules.
        "BAGTRACK_PARENT_QR": env_pattern(environ, "BAGTRACK_PARENT_QR", r"^SB\d{5}$"),
        "BAGTRACK_CHILD_QR": env_pattern(environ, "BAGTRACK_CHILD_QR", r"^[A-Z0-9]{4,20}$"),
        # Shown to people when a scan is not a bag code (left out when the pattern does not accept it).
        "BAGTRACK_PARENT_QR_EXAMPLE": env_str(environ, "BAGTRACK_PARENT_QR_EXAMPLE", "SB00001"),
        "BAGTRACK_CHILD_QR_EXAMPLE": env_str(environ, "BAGTRACK_CHILD_QR_EXAMPLE", "C0012345"),
        "BAGTRACK_PARENT_CAPACITY": env_int(environ, "BAGTRACK_PARENT_CAPACITY", 30, minimum=1),
        "BAGTRACK_CHILD_WEIGHT_KG": env_float(environ, "BAGTRACK_CHILD_WEIGHT_KG", 1.0),
        "BAGTRACK_UNDO_WINDOW_S": env_int(environ, "BAGTRACK_UNDO_WINDOW_S", 600, minimum=0),
        "BAGTRACK_LOCKOUT_ATTEMPTS": env_int(environ, "BAGTRACK_LOCKOUT_ATTEMPTS", 5, minimum=1),
        "BAGTRACK_LOCKOUT_MINUTES": env_int(environ, "BAGTRACK_LOCKOUT_MINUTES", 15, minimum=1),
        "BAGTRACK_PAGE_SIZE": env_int(environ, "BAGTRACK_PAGE_SIZE", 50, minimum=1),
        # Two-factor login: roles that must enrol, and the key that encrypts secrets (default: from SECRET_KEY).
        "BAGTRACK_2FA_REQUIRED_ROLES": env_roles(environ, "BAGTRACK_2FA_REQUIRED_ROLES"),
        "BAGTRACK_2FA_KEY": env_str(environ, "BAGTRACK_2FA_KEY"),
        # How soon other workers see a change of a user: with Redis, how often each looks at the users'
        # token; without it, how long requests share a snapshot of the logged-in user (0: read it every
        # request). With Redis a snapshot lives up to BAGTRACK_USER_CACHE_MAX_S while no change is told.
        "BAGTRACK_USER_CACHE_S": env_float(environ, "BAGTRACK_USER_CACHE_S", 2.0),
        "BAGTRACK_USER_CACHE_MAX_S": env_float(environ, "BAGTRACK_USER_CACHE_MAX_S", 60.0),
        # The warehouse's clock: "today", day boundaries and every time shown on a page.
        "BAGTRACK_TIMEZONE": env_timezone(environ, "BAGTRACK_TIMEZONE", "UTC"),
        # How often the dashboard asks for fresh figures and charts.
        "BAGTRACK_DASHBOARD_REFRESH_S": env_float(environ, "BAGTRACK_DASHBOARD_REFRESH_S", 5.0, minimum=0.5),
        # Database pool.
        "SQLALCHEMY_ENGINE_OPTIONS": engine_options(environ, database_url),
        "SQLALCHEMY_TRACK_MODIFICATIONS": False,
        # Request timeouts on PostgreSQL (see database.py); 0 turns one off.
        "BAGTRACK_DB_STATEMENT_TIMEOUT_MS": env_int(environ, "BAGTRACK_DB_STATEMENT_TIMEOUT_MS", 5000, minimum=0),
        # Behind PgBouncer in transaction mode: no session state, timeouts per transaction.
        "BAGTRACK_DB_PGBOUNCER": env_bool(environ, "BAGTRACK_DB_PGBOUNCER", False),
        "BAGTRACK_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS": env_int(
            environ, "BAGTRACK_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", 10000, minimum=0
        ),
        # A streaming replica for lists, searches and exports (see replica.py); none by default.
        "BAGTRACK_REPLICA_URL": replica_url(environ),
        "BAGTRACK_REPLICA_MAX_LAG_S": env_float(environ, "BAGTRACK_REPLICA_MAX_LAG_S", 5.0),
        "BAGTRACK_REPLICA_CONNECT_TIMEOUT_S": env_int(environ, "BAGTRACK_REPLICA_CONNECT_TIMEOUT_S", 2, minimum=1),
        # Observability: log level, slow thresholds (0 turns one off), readiness and metrics access.
        "BAGTRACK_LOG_LEVEL": env_log_level(environ, "BAGTRACK_LOG_LEVEL", "INFO"),
        "BAGTRACK_SLOW_REQUEST_MS": env_float(environ, "BAGTRACK_SLOW_REQUEST_MS", 500.0),
        "BAGTRACK_SLOW_QUERY_MS": env_float(environ, "BAGTRACK_SLOW_QUERY_MS", 200.0),
        "BAGTRACK_READY_TIMEOUT_S": env_float(environ, "BAGTRACK_READY_TIMEOUT_S", 1.0, minimum=0.05),
        "BAGTRACK_METRICS_TOKEN": env_str(environ, "BAGTRACK_METRICS_TOKEN"),
        "BAGTRACK_METRICS_ALLOW": env_networks(environ, "BAGTRACK_METRICS_ALLOW", "127.0.0.1,::1"),
        # The daily dispatch summary by mail (``flask report daily --mail-to``); no host: no mail.
        "BAGTRACK_SMTP_HOST": env_str(environ, "BAGTRACK_SMTP_HOST"),
        "BAGTRACK_SMTP_PORT": env_int(environ, "BAGTRACK_SMTP_PORT", 587, minimum=1),
        "BAGTRACK_SMTP_USER": env_str(environ, "BAGTRACK_SMTP_USER"),
        "BAGTRACK_SMTP_PASSWORD": env_str(environ, "BAGTRACK_SMTP_PASSWORD"),
        "BAGTRACK_SMTP_STARTTLS": env_bool(environ, "BAGTRACK_SMTP_STARTTLS", True),
        "BAGTRACK_SMTP_TIMEOUT_S": env_float(environ, "BAGTRACK_SMTP_TIMEOUT_S", 10.0, minimum=0.1),
        "BAGTRACK_MAIL_FROM": env_str(environ, "BAGTRACK_MAIL_FROM"),
        # Requests and sessions.
        "MAX_CONTENT_LENGTH": env_int(environ, "BAGTRACK_MAX_BODY_BYTES", 1024 * 1024, minimum=1024),
        "BAGTRACK_SESSION_IDLE_MINUTES": env_int(environ, "BAGTRACK_SESSION_IDLE_MINUTES", 30, minimum=1),
        "PERMANENT_SESSION_LIFETIME": timedelta(
            hours=env_int(environ, "BAGTRACK_SESSION_LIFETIME_HOURS", 12, minimum=1)
        ),
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": env_bool(environ, "BAGTRACK_SECURE_COOKIES", False),
        "REMEMBER_COOKIE_DURATION": timedelta(0),
        "WTF_CSRF_TIME_LIMIT": None,
        "WTF_CSRF_SSL_STRICT": True,
        # The session records its last use once a minute; no cookie rewrite on every scan.
        "SESSION_REFRESH_EACH_REQUEST": False,
        "MAX_FORM_MEMORY_SIZE": env_int(environ, "BAGTRACK_MAX_FORM_MEMORY_BYTES", 256 * 1024, minimum=1024),
        "MAX_FORM_PARTS": env_int(environ, "BAGTRACK_MAX_FORM_PARTS", 500, minimum=10),
        "BAGTRACK_MAX_UPLOAD_BYTES": env_int(environ, "BAGTRACK_MAX_UPLOAD_BYTES", 64 * 1024 * 1024, minimum=1024),
        # The import page runs inside a request: bigger files go through the command line.
        "BAGTRACK_IMPORT_PAGE_MAX_ROWS": env_int(environ, "BAGTRACK_IMPORT_PAGE_MAX_ROWS", 20_000, minimum=1),
        "BAGTRACK_PROXY_FIX": env_proxy_fix(environ, "BAGTRACK_PROXY_FIX"),
        # Dashboard figures cache and Redis.
        "BAGTRACK_STATS_TTL_S": env_float(environ, "BAGTRACK_STATS_TTL_S", 5.0, minimum=0.1),
        # How long each worker reuses the figures it last read (0: ask the cache every time).
        "BAGTRACK_STATS_LOCAL_S": env_float(environ, "BAGTRACK_STATS_LOCAL_S", 1.0),
        "BAGTRACK_REDIS_TIMEOUT_S": env_float(environ, "BAGTRACK_REDIS_TIMEOUT_S", 0.25, minimum=0.01),
        "BAGTRACK_REDIS_RETRY_S": env_float(environ, "BAGTRACK_REDIS_RETRY_S", 5.0),
        # Rate limits (limits notation: "30/minute", "5/second;100/hour").
        "RATELIMIT_ENABLED": env_bool(environ, "BAGTRACK_RATELIMIT_ENABLED", True),
        "BAGTRACK_LIMIT_LOGIN_IP": env_rate(environ, "BAGTRACK_LIMIT_LOGIN_IP", "300/minute;1000/hour"),
        "BAGTRACK_LIMIT_LOGIN_USER": env_rate(environ, "BAGTRACK_LIMIT_LOGIN_USER", "10/minute"),
        "BAGTRACK_LIMIT_SCAN": env_rate(environ, "BAGTRACK_LIMIT_SCAN", "300/minute"),
        "BAGTRACK_LIMIT_BILL_LOAD": env_rate(environ, "BAGTRACK_LIMIT_BILL_LOAD", "300/minute"),
        "BAGTRACK_LIMIT_DEFAULT": env_rate(environ, "BAGTRACK_LIMIT_DEFAULT", "600/minute"),
        # Compression: brotli, else gzip, for text answers worth compressing.
        "COMPRESS_ALGORITHM": ["br", "gzip"],
        "COMPRESS_MIMETYPES": [
            "text/html",
            "application/json",
            "text/css",
            "application/javascript",
            "text/javascript",
            "text/plain",
        ],
        "COMPRESS_MIN_SIZE": env_int(environ, "BAGTRACK_COMPRESS_MIN_BYTES", 500, minimum=0),
        "COMPRESS_BR_LEVEL": env_int(environ, "BAGTRACK_COMPRESS_BR_LEVEL", 4, minimum=0),
        "COMPRESS_LEVEL": env_int(environ, "BAGTRACK_COMPRESS_GZIP_LEVEL", 6, minimum=1),
        # Streamed answers (exports) must reach the client as they are produced.
        "COMPRESS_STREAMS": False,
    }


def engine_options(environ: Mapping[str, str], database_url: str) -> dict:
    if database_url.startswith("sqlite"):
        return {"connect_args": {"timeout": 15, "check_same_thread": False}}
    return {
        "pool_size": env_int(environ, "BAGTRACK_DB_POOL_SIZE", 10, minimum=1),
        "max_overflow": env_int(environ, "BAGTRACK_DB_MAX_OVERFLOW", 2, minimum=0),
        "pool_timeout": env_float(environ, "BAGTRACK_DB_POOL_TIMEOUT_S", 5.0),
        "pool_recycle": env_int(environ, "BAGTRACK_DB_POOL_RECYCLE_S", 1800, minimum=-1),
        # No ping per checkout (a round trip per request): a connection that died in the pool
        # fails on first use, SQLAlchemy then replaces every connection as old as it, and
        # ledger.in_transaction retries the write.
        "pool_pre_ping": False,
        "connect_args": {
            "connect_timeout": env_int(environ, "BAGTRACK_DB_CONNECT_TIMEOUT_S", 3, minimum=1),
            "application_name": "bagtrack",
        },
    }


def embedded_secret_key() -> str:
    """The embedded default keeps a random key in ``instance/`` so sessions survive restarts."""
    import secrets

    path = INSTANCE_DIR / "secret_key"
    INSTANCE_DIR.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def apply_backends(config: dict) -> None:
    """Point cache and rate limiter at Redis when ``REDIS_URL`` is set, else in-process."""
    redis_url = config.get("REDIS_URL")
    config.setdefault("CACHE_KEY_PREFIX", "bagtrack:")
    config.setdefault("CACHE_DEFAULT_TIMEOUT", 5)
    # Redis answers in a millisecond; waiting longer than this only stalls a
    # worker that would do better to query the database or count in memory.
    timeout = config.get("BAGTRACK_REDIS_TIMEOUT_S", 0.25)
    redis_options = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    config.setdefault("RATELIMIT_SWALLOW_ERRORS", True)
    config.setdefault("RATELIMIT_IN_MEMORY_FALLBACK_ENABLED", True)
    config.setdefault("RATELIMIT_STRATEGY", "fixed-window")
    if redis_url:
        config.setdefault("CACHE_TYPE", "RedisCache")
        config.setdefault("CACHE_REDIS_URL", redis_url)
        config.setdefault("CACHE_OPTIONS", redis_options)
        # Counted in Redis, spent by each worker from a local budget (bagtrack.counters).
        budgeted = redis_url.startswith(("redis://", "rediss://"))
        config.setdefault("RATELIMIT_STORAGE_URI", f"bagtrack+{redis_url}" if budgeted else redis_url)
        config.setdefault(
            "RATELIMIT_STORAGE_OPTIONS", {**redis_options, "key_prefix": config["CACHE_KEY_PREFIX"] + "limits"}
        )
    else:
        config.setdefault("CACHE_TYPE", "SimpleCache")
        config.setdefault("RATELIMIT_STORAGE_URI", "memory://")
