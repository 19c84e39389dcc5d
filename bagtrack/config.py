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


def with_psycopg2(url: str) -> str:
    """SQLAlchemy 2.1 reads ``postgresql://`` as psycopg 3; this stack runs psycopg2."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def embedded_database_url() -> str:
    return f"sqlite:///{INSTANCE_DIR / 'bagtrack.sqlite3'}"


def load(environ: Mapping[str, str] | None = None) -> dict:
    """Build the Flask config mapping from ``environ`` (default: ``os.environ``)."""
    environ = os.environ if environ is None else environ
    database_url = env_str(environ, "DATABASE_URL")
    embedded = database_url is None
    if database_url is None:
        database_url = embedded_database_url()
    else:
        database_url = with_psycopg2(database_url)
    redis_url = env_str(environ, "REDIS_URL")

    secret_key = env_str(environ, "SECRET_KEY")
    if secret_key is None and not embedded:
        raise ConfigError("SECRET_KEY must be set when DATABASE_URL is set (production)")

    return {
        "EMBEDDED": embedded,
        "SECRET_KEY": secret_key,
        "SQLALCHEMY_DATABASE_URI": database_url,
        "REDIS_URL": redis_url,
        # Domain rules.
        "BAGTRACK_PARENT_QR": env_pattern(environ, "BAGTRACK_PARENT_QR", r"^SB\d{5}$"),
        "BAGTRACK_CHILD_QR": env_pattern(environ, "BAGTRACK_CHILD_QR", r"^[A-Z0-9]{4,20}$"),
        "BAGTRACK_PARENT_CAPACITY": env_int(environ, "BAGTRACK_PARENT_CAPACITY", 30, minimum=1),
        "BAGTRACK_CHILD_WEIGHT_KG": env_float(environ, "BAGTRACK_CHILD_WEIGHT_KG", 1.0),
        "BAGTRACK_UNDO_WINDOW_S": env_int(environ, "BAGTRACK_UNDO_WINDOW_S", 600, minimum=0),
        "BAGTRACK_LOCKOUT_ATTEMPTS": env_int(environ, "BAGTRACK_LOCKOUT_ATTEMPTS", 5, minimum=1),
        "BAGTRACK_LOCKOUT_MINUTES": env_int(environ, "BAGTRACK_LOCKOUT_MINUTES", 15, minimum=1),
        "BAGTRACK_PAGE_SIZE": env_int(environ, "BAGTRACK_PAGE_SIZE", 50, minimum=1),
        # Database pool.
        "SQLALCHEMY_ENGINE_OPTIONS": engine_options(environ, database_url),
        "SQLALCHEMY_TRACK_MODIFICATIONS": False,
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
    }


def engine_options(environ: Mapping[str, str], database_url: str) -> dict:
    if database_url.startswith("sqlite"):
        return {"connect_args": {"timeout": 15, "check_same_thread": False}}
    return {
        "pool_size": env_int(environ, "BAGTRACK_DB_POOL_SIZE", 10, minimum=1),
        "max_overflow": env_int(environ, "BAGTRACK_DB_MAX_OVERFLOW", 2, minimum=0),
        "pool_timeout": env_float(environ, "BAGTRACK_DB_POOL_TIMEOUT_S", 5.0),
        "pool_recycle": env_int(environ, "BAGTRACK_DB_POOL_RECYCLE_S", 1800, minimum=-1),
        "pool_pre_ping": True,
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
    if redis_url:
        config.setdefault("CACHE_TYPE", "RedisCache")
        config.setdefault("CACHE_REDIS_URL", redis_url)
        config.setdefault("RATELIMIT_STORAGE_URI", redis_url)
    else:
        config.setdefault("CACHE_TYPE", "SimpleCache")
        config.setdefault("RATELIMIT_STORAGE_URI", "memory://")
