"""What tests share besides fixtures: the test client, logging in, and asserting refusals.

Fixtures live in ``conftest.py``; test modules import these helpers from here.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import pytest
from flask import g, has_app_context
from flask.testing import FlaskClient
from sqlalchemy import event, select

from bagtrack.errors import Refusal
from bagtrack.extensions import db
from bagtrack.models import User

PASSWORD = "secret-pass"
JSON = {"Accept": "application/json"}
CSRF_META = re.compile(r'name="csrf-token" content="([^"]+)"')


class BagtrackClient(FlaskClient):
    """A test client that sends the session's CSRF token with every POST once it has one."""

    csrf_token: str | None = None

    def open(self, *args, **kwargs):
        if self.csrf_token and kwargs.get("method", "GET") not in ("GET", "HEAD", "OPTIONS"):
            headers = dict(kwargs.pop("headers", None) or {})
            headers.setdefault("X-CSRFToken", self.csrf_token)
            kwargs["headers"] = headers
        # Requests run in the test's app context (sharing its database session); each
        # still starts with an empty ``g``, as in production: no user or CSRF token
        # cached by an earlier request or another client.
        if has_app_context():
            vars(g._get_current_object()).clear()
        return super().open(*args, **kwargs)

    def fetch_csrf_token(self) -> str:
        page = self.get("/login")
        self.csrf_token = CSRF_META.search(page.get_data(as_text=True)).group(1)
        return self.csrf_token


def pool_config(database_url: str, **pool) -> dict:
    """App settings for a pool of its own shape (``pool_size``, ``max_overflow``, ...)."""
    from bagtrack.config import engine_options

    return {
        "SQLALCHEMY_DATABASE_URI": database_url,
        "SQLALCHEMY_ENGINE_OPTIONS": {**engine_options({}, database_url), **pool},
    }


def new_client(app, address: str | None = None) -> BagtrackClient:
    """A client of ``app`` holding a CSRF token, coming from ``address`` when given."""
    app.test_client_class = BagtrackClient
    client = app.test_client()
    if address is not None:
        client.environ_base["REMOTE_ADDR"] = address
    client.fetch_csrf_token()
    return client


def log_in(app, user: User | str, address: str | None = None) -> BagtrackClient:
    """A client of ``app`` logged in as ``user`` (or a username) through the real login form."""
    client = new_client(app, address)
    username = user if isinstance(user, str) else user.username
    response = client.post("/login", data={"username": username, "password": PASSWORD})
    assert response.status_code == 303, response.get_data(as_text=True)
    client.fetch_csrf_token()
    return client


def post_login(client, username: str, password: str):
    """The answer to logging in through the form with ``password`` (right or wrong)."""
    client.fetch_csrf_token()
    return client.post("/login", data={"username": username, "password": password})


def user_row(username: str) -> User | None:
    """The user as stored now (nothing the test's session remembers), or None."""
    db.session.expire_all()
    return db.session.scalar(select(User).where(User.username == username))


def refusal_of(call, *args, **kwargs) -> Refusal:
    """The refusal ``call(*args, **kwargs)`` raises; the test fails when it raises none."""
    with pytest.raises(Refusal) as caught:
        call(*args, **kwargs)
    return caught.value


def refused(action, *args, **kwargs) -> Refusal:
    """The refusal a domain action raises, called with the test's session and ``args``."""
    return refusal_of(action, db.session, *args, **kwargs)


def refused_http(response, status: int, code: str) -> dict:
    """The JSON body of a refusal, checked: its status, ``ok: false``, its code and a message."""
    body = response.get_json()
    assert response.status_code == status, body
    assert body["ok"] is False and body["error"] == code, body
    assert body["message"]
    return body


@contextmanager
def listening(app, name: str, listener):
    """``listener`` hears the ``name`` event of ``app``'s engine for the length of the block."""
    with app.app_context():
        engine = db.engine
    event.listen(engine, name, listener)
    try:
        yield
    finally:
        event.remove(engine, name, listener)


@contextmanager
def statements_sent(app, wanted):
    """Collects the statements ``app`` sends for which ``wanted(statement)`` is true."""
    seen: list[str] = []

    def before(_conn, _cursor, statement, *_args):
        if wanted(statement):
            seen.append(statement)

    with listening(app, "before_cursor_execute", before):
        yield seen
