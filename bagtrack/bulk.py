"""Bulk rows into the database: ``COPY`` on PostgreSQL, multi-row inserts where it cannot run, SQLite batches.

The seed and the importer stream their rows through these writers in chunks,
so memory stays flat whatever the size. A writer can also set the foreign
keys aside for a big load (:meth:`PostgresWriter.lock`) and refresh the
planner's statistics after it.
"""

from __future__ import annotations

import io

from sqlalchemy import text
from sqlalchemy.schema import AddConstraint, DropConstraint

from .extensions import db
from .models import Bag, Scan


def writer_for(connection) -> PostgresWriter | PostgresInsertWriter | SqliteWriter:
    """The writer for bulk rows on ``connection``: ``COPY`` on PostgreSQL when it can run, else inserts.

    Under gevent (gunicorn's workers) psycopg2 has psycogreen's wait callback,
    and ``COPY`` refuses to run with one. Setting the callback aside for the
    ``COPY`` would block every request of the worker until it ends, so there
    the rows go in with multi-row ``INSERT`` statements instead, which wait
    cooperatively; only the command line (no callback) uses ``COPY``.
    """
    if connection.dialect.name != "postgresql":
        return SqliteWriter(connection)
    import psycopg2.extensions

    if psycopg2.extensions.get_wait_callback() is not None:
        return PostgresInsertWriter(connection)
    return PostgresWriter(connection)


class PostgresWriter:
    """Streams rows with ``COPY ... FROM STDIN`` on the transaction's own connection."""

    def __init__(self, connection):
        self.connection = connection
        self.cursor = connection.connection.dbapi_connection.cursor()

    def lock(self) -> None:
        """Take the tables for the seed and set their foreign keys aside until :meth:`finish`.

        Writers wait until the seed commits, so the reserved id block and the
        scan id floor stay ours and the tally counts exactly the new rows.
        Checking five foreign keys per row as it arrives doubles the time of
        the load; the constraints are dropped inside this transaction and
        added back at the end, which validates every row with one join each.
        """
        self.connection.execute(text("LOCK TABLE bill, bag, scan IN SHARE ROW EXCLUSIVE MODE"))
        for constraint in self.foreign_keys():
            self.connection.execute(DropConstraint(constraint))

    def finish(self) -> None:
        """Add the foreign keys back; a row that breaks one fails the whole seed."""
        for constraint in self.foreign_keys():
            self.connection.execute(AddConstraint(constraint))

    @staticmethod
    def foreign_keys() -> list:
        return [constraint for table in (Bag.__table__, Scan.__table__) for constraint in table.foreign_key_constraints]

    def reserve_bag_ids(self, count: int) -> int:
        sequence = self.connection.execute(text("SELECT pg_get_serial_sequence('bag', 'id')")).scalar_one()
        first = self.connection.execute(text("SELECT nextval(:sequence)"), {"sequence": sequence}).scalar_one()
        self.connection.execute(
            text("SELECT setval(:sequence, :last)"), {"sequence": sequence, "last": first + count - 1}
        )
        return first

    @staticmethod
    def encode(chunk: tuple[str, tuple[str, ...], list[tuple]]) -> tuple[str, tuple[str, ...], int, str]:
        """A chunk as COPY text: ``%s`` spells None 'None', the NULL marker ``write`` declares.

        No value written (codes, reasons, numbers, timestamps, import messages) is the text 'None'
        or holds a tab or a line break; backslashes, COPY's escape character, are doubled.
        """
        table, columns, rows = chunk
        line = "\t".join(["%s"] * len(columns)) + "\n"
        return table, columns, len(rows), "".join([line % row for row in rows]).replace("\\", "\\\\")

    def write(self, table: str, columns: tuple[str, ...], payload: str) -> None:
        self.cursor.copy_expert(
            f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (NULL 'None')", io.StringIO(payload)
        )

    def analyze(self) -> None:
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("ANALYZE bag, bill, scan, tally"))


class PostgresInsertWriter(PostgresWriter):
    """Rows as multi-row ``INSERT`` statements: for connections that wait cooperatively, where ``COPY`` cannot run."""

    PAGE_ROWS = 1000

    @staticmethod
    def encode(chunk: tuple[str, tuple[str, ...], list[tuple]]) -> tuple[str, tuple[str, ...], int, list[tuple]]:
        table, columns, rows = chunk
        return table, columns, len(rows), rows

    def write(self, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
        from psycopg2.extras import execute_values

        execute_values(
            self.cursor, f"INSERT INTO {table} ({', '.join(columns)}) VALUES %s", rows, page_size=self.PAGE_ROWS
        )


class SqliteWriter:
    """Batched ``executemany`` inserts; SQLite's write lock is held from the first statement."""

    def __init__(self, connection):
        self.connection = connection

    def lock(self) -> None:
        """``BEGIN IMMEDIATE`` (see ``bagtrack.database``) already holds the only write lock."""

    def finish(self) -> None:
        """Foreign keys were checked row by row: nothing is left to do."""

    def reserve_bag_ids(self, count: int) -> int:
        return self.connection.execute(text("SELECT coalesce(max(id), 0) + 1 FROM bag")).scalar_one()

    @staticmethod
    def encode(chunk: tuple[str, tuple[str, ...], list[tuple]]) -> tuple[str, tuple[str, ...], int, list[tuple]]:
        table, columns, rows = chunk
        return table, columns, len(rows), rows

    def write(self, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
        placeholders = ", ".join("?" for _ in columns)
        self.connection.exec_driver_sql(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})", rows)

    def analyze(self) -> None:
        with db.engine.begin() as connection:
            connection.execute(text("ANALYZE"))
