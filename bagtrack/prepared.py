"""Statements PostgreSQL parses and plans once per connection instead of on every call.

The floor's hottest statement (a new child into an open parent, four writes
in one statement) costs PostgreSQL more to parse and plan than to run.
:class:`Prepared` compiles such a statement once, ``PREPARE``\\ s it on each
pooled connection the first time that connection runs it, and from then on
sends ``EXECUTE name(...)``: the server reuses its plan. The statement is
still built with SQLAlchemy in one place; only its delivery changes.

A prepared statement lives in the server session of one connection. Behind
PgBouncer in transaction mode (``BAGTRACK_DB_PGBOUNCER``) consecutive
transactions of one client may run on different server connections, so
there the statement is sent whole, as on any other connection it cannot
keep. A connection whose prepared statement has gone (``DEALLOCATE``) or can
no longer run (a migration changed a table it returns rows of) is discarded,
and the error is one the transaction retries on a fresh connection.
"""

from __future__ import annotations

from datetime import date, datetime

from flask import current_app
from sqlalchemy.dialects.postgresql import psycopg2 as pg_psycopg2
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import BindParameter

# On a pooled connection's ``info`` (kept as long as the connection): the names prepared on it.
PREPARED_NAMES = "bagtrack.prepared"
# The prepared statement is missing, or its plan can no longer return the rows it was prepared for.
STALE_PGCODES = {"26000", "0A000"}


def pg_type(value) -> str | None:
    """The PostgreSQL type a parameter is declared with, from its Python value (None: cannot tell)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "bigint"
    if isinstance(value, str):
        return "text"
    if isinstance(value, datetime):
        # Stored moments are naive UTC; an aware one is sent whole (statements are told apart by Python type).
        return "timestamp" if value.tzinfo is None else None
    if isinstance(value, date):
        return "date"
    return None


def _constants_written_in(statement):
    """``statement`` with its constants (kinds, statuses, counts) written into its text as literals.

    Only the values a caller passes (its ``bindparam`` calls without a value)
    stay parameters: the new child's statement has eight instead of 31, and
    each one is adapted by psycopg2 and sent in the ``EXECUTE`` on every call.
    """

    def replace(element):
        if not isinstance(element, BindParameter):
            return None
        clone = element._clone()
        if element.required:
            clone.required = False  # compiled here without values; every call passes them all
        elif element.callable is None:
            clone.literal_execute = True
        return clone

    return visitors.replacement_traverse(statement, {}, replace)


class Prepared:
    """One SQLAlchemy statement, sent as a per-connection prepared statement on PostgreSQL."""

    def __init__(self, name: str, statement) -> None:
        self.name = name
        self.statement = statement
        self._compiled = _constants_written_in(statement).compile(
            dialect=pg_psycopg2.dialect(paramstyle="numeric_dollar"), compile_kwargs={"render_postcompile": True}
        )
        self._order = tuple(self._compiled.positiontup or ())
        # Per set of the parameters' Python types: its name, its PREPARE and its EXECUTE (None: not preparable).
        self._signatures: dict[tuple[type, ...], tuple[str, str, str] | None] = {}

    def execute(self, connection, params: dict):
        """Run the statement on ``connection`` (a SQLAlchemy Core connection) with ``params``."""
        if current_app.config["BAGTRACK_DB_PGBOUNCER"]:
            return connection.execute(self.statement, params)
        arguments = tuple(params[key] for key in self._order)
        signature = tuple(map(type, arguments))
        if signature not in self._signatures:
            self._signatures[signature] = self._statements_for(arguments)
        statements = self._signatures[signature]
        if statements is None:
            return connection.execute(self.statement, params)
        name, prepare, execute = statements
        prepared = connection.info.setdefault(PREPARED_NAMES, set())
        try:
            if name not in prepared:
                connection.exec_driver_sql(prepare)
                prepared.add(name)
            return connection.exec_driver_sql(execute, arguments)
        except DBAPIError as exc:
            if getattr(exc.orig, "pgcode", None) in STALE_PGCODES:
                # Its plan or name is gone on this connection: let the pool replace it.
                connection.info.pop(PREPARED_NAMES, None)
                connection.invalidate()
                exc.connection_invalidated = True
            raise

    def _statements_for(self, arguments: tuple) -> tuple[str, str, str] | None:
        """The name, ``PREPARE`` and ``EXECUTE`` for parameters like ``arguments`` (None: a type it cannot declare)."""
        types = [pg_type(value) for value in arguments]
        if None in types:
            return None
        name = f"bagtrack_{self.name}_{len(self._signatures) + 1}"
        body = self._compiled.string.replace("%", "%%")
        prepare = f"PREPARE {name} ({', '.join(types)}) AS {body}"
        execute = f"EXECUTE {name}({', '.join(['%s'] * len(arguments))})"
        return name, prepare, execute
