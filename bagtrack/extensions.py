"""Flask extensions, created unbound here and attached in ``create_app``."""

from flask_caching import Cache
from flask_compress import Compress
from flask_limiter import Limiter
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

# Stable constraint names keep Alembic migrations identical on PostgreSQL and SQLite.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def rate_limit_key() -> str:
    """Logged-in users are limited one by one (scanners share an IP).

    The user comes from the signed session, not from the database: the limiter
    runs before the view, and it takes any error in here for a Redis outage.
    """
    from flask import request, session

    user_id = session.get("_user_id")
    if user_id:
        return f"user:{user_id}"
    return f"ip:{request.remote_addr or 'unknown'}"


# Objects stay readable after commit: views render what the transaction wrote
# without reloading it.
db = SQLAlchemy(model_class=Base, session_options={"expire_on_commit": False})
migrate = Migrate()
login_manager = LoginManager()
csrf = CSRFProtect()
cache = Cache()
limiter = Limiter(key_func=rate_limit_key)
compress = Compress()


def cache_redis():
    """The Redis client behind ``cache`` (needs the app), or None when the cache is this process's own."""
    return getattr(cache.cache, "_write_client", None)
