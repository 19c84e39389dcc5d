"""What a file layout is, and the statements every layout runs on its staging tables."""

from __future__ import annotations

import re
from collections import Counter
from typing import Protocol

from sqlalchemy import DateTime, bindparam, text

from ..ledger import add_to_tally
from ..models import User

TOO_MANY_CELLS = "The row has more cells than the header names columns."
VERDICT_TABLE = "CREATE TEMPORARY TABLE import_verdict (row_no BIGINT PRIMARY KEY, code VARCHAR(32), message TEXT)"


class Layout(Protocol):
    """One kind of file: its columns, how a row is checked and staged, and how the staged rows are written.

    A run calls ``create_stage``, then ``check`` for each data row and
    ``stage`` for each chunk of checked rows, then ``apply`` (which refuses
    rows with set-based checks and writes the rest, returning the areas whose
    tally changed), ``drop_stage``, and after the commit ``settle``. A
    staged row is refused when its ``code`` is set.
    """

    kind: str
    columns: tuple[str, ...]
    stage_table: str

    def create_stage(self, connection) -> None: ...

    def check(self, row_no: int, cells: dict[str, str] | None, areas: dict[str, int]) -> tuple: ...

    def stage(self, connection, rows: list) -> None: ...

    def apply(self, session, connection, user: User | None) -> list[int]: ...

    def drop_stage(self, connection) -> None: ...

    def settle(self) -> None: ...


def sql_message(template: str, **columns: str) -> str:
    """A message template of :mod:`bagtrack.errors` as a SQL text expression, its fields read from ``columns``."""
    pieces = []
    for index, part in enumerate(re.split(r"\{(\w+)\}", template)):
        if index % 2:
            pieces.append(columns[part])
        elif part:
            pieces.append("'" + part.replace("'", "''") + "'")
    return " || ".join(pieces)


class RowProblem(Exception):
    """A row breaks a rule that only an import has (its code is not an HTTP refusal)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def execute(connection, sql: str, **params):
    """Run a statement of an import; ``now`` is bound as a timestamp on every database."""
    statement = text(sql)
    if ":now" in sql:
        statement = statement.bindparams(bindparam("now", type_=DateTime()))
    return connection.execute(statement, params)


def judge(connection, table: str, verdicts: str, **params) -> None:
    """Refuse the rows a check's SELECT (row_no, code, message) names, unless already refused.

    Verdicts are gathered first and applied after, so a check never sees its
    own refusals half-way (SQLite would otherwise update row by row).
    """
    execute(connection, f"INSERT INTO import_verdict (row_no, code, message) {verdicts}", **params)
    execute(
        connection,
        f"UPDATE {table} SET code = v.code, message = v.message FROM import_verdict v"
        f" WHERE v.row_no = {table}.row_no AND {table}.code IS NULL",
    )
    execute(connection, "DELETE FROM import_verdict")


def add_tallies(session, deltas: dict[int, Counter], params: dict) -> list[int]:
    """Add each area's deltas to the tally, in the hour the import stamped on its scans."""
    for area_id, counts in deltas.items():
        changed = {name: value for name, value in counts.items() if value}
        if changed:
            add_to_tally(session, area_id, user_id=params["user_id"], at=params["now"], **changed)
    return sorted(deltas)
