"""Local time, and finding the rows of a time range through their ids.

The database stores every moment in UTC without a zone; the warehouse lives
in ``BAGTRACK_TIMEZONE``. "Today", a day's boundaries and the hours of the
tally are local: :func:`today`, :func:`day_range` and :func:`hour_start` are
the one place that turns one into the other.

Bags and scan-log rows get their time (``created_at``, ``at``) a moment
before their id is drawn, so ids follow time: the seed writes each run's
history in id order, imports stamp the moment they run, and live writers
differ by milliseconds at most. A time range therefore maps onto an id range
found with a binary search over the primary key, a few dozen one-row
lookups whatever the table's size (one statement on PostgreSQL), without an index on the time column
(which every scan would then have to maintain).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo

from flask import current_app
from sqlalchemy import TextClause, func, select, text


def zone() -> ZoneInfo:
    """The warehouse's time zone (``BAGTRACK_TIMEZONE``)."""
    return current_app.config["BAGTRACK_TIMEZONE"]


def local(moment: datetime) -> datetime:
    """A stored UTC moment (naive or aware) as the warehouse's local time."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(zone())


def today() -> date:
    """The warehouse's local date now."""
    return datetime.now(zone()).date()


def day_range(day: date) -> tuple[datetime, datetime]:
    """The stored (naive UTC) moments ``[start, end)`` of local day ``day``; 23 or 25 hours on DST days."""
    tz = zone()
    start = datetime(day.year, day.month, day.day, tzinfo=tz)
    following = day + timedelta(days=1)
    end = datetime(following.year, following.month, following.day, tzinfo=tz)
    return _stored(start), _stored(end)


def hour_start(moment: datetime) -> datetime:
    """The stored (naive UTC) moment at which the local hour holding ``moment`` began.

    Zones half an hour off UTC (India) start their hours at :30 UTC; the
    tally keys its hours by this moment, so a local day is always a whole
    number of tally hours.
    """
    local_moment = local(moment)
    return _stored(local_moment.replace(minute=0, second=0, microsecond=0))


def local_day(moment: datetime) -> date:
    """The local date of a stored moment."""
    return local(moment).date()


QUARTER_S = 900


def quarter_sql(dialect: str, column: str) -> str:
    """SQL numbering the UTC quarter hour of a stored moment: hours of every zone start on one."""
    if dialect == "postgresql":
        return f"floor(extract(epoch from {column}) / {QUARTER_S})::bigint"
    return f"cast(strftime('%s', {column}) as integer) / {QUARTER_S}"


def quarter_moment(quarter_no: int) -> datetime:
    """The stored moment at which quarter ``quarter_no`` of :func:`quarter_sql` starts."""
    return datetime(1970, 1, 1) + timedelta(seconds=int(quarter_no) * QUARTER_S)


def _stored(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


# Concurrent writers can store their rows a little out of time order; an id
# range found for a moment this much earlier (or later) still holds every row
# of that moment. Callers filter by the time itself within the range.
SLACK = timedelta(minutes=5)


def first_id_from(session, id_column, time_column, moment: datetime) -> int:
    """The lowest id from which rows are at ``moment`` or later (one past the last id when none is).

    Gaps in the ids (pruned rows) cost nothing: each probe reads the first
    row at or after an id. On PostgreSQL the whole search is one statement.
    """
    if session.get_bind().dialect.name == "postgresql":
        return session.execute(_search_statement(id_column, time_column), {"moment": moment}).scalar_one()
    lowest, highest = session.execute(select(func.min(id_column), func.max(id_column))).one()
    if highest is None:
        return 1
    low, high = lowest, highest + 1
    while low < high:
        middle = (low + high) // 2
        row = session.execute(
            select(id_column, time_column).where(id_column >= middle).order_by(id_column).limit(1)
        ).first()
        if row is None or row[1] >= moment:
            high = middle
        else:
            low = row[0] + 1
    return low


@cache
def _search_statement(id_column, time_column) -> TextClause:
    """The binary search of :func:`first_id_from` as a recursive query: each step probes one row."""
    table, key, moment = id_column.table.name, id_column.name, time_column.name
    return text(
        f"""
        WITH RECURSIVE search(low, high) AS (
            SELECT min({key}), max({key}) + 1 FROM {table}
          UNION ALL
            SELECT CASE WHEN probe.{moment} IS NULL OR probe.{moment} >= :moment
                        THEN search.low ELSE probe.{key} + 1 END,
                   CASE WHEN probe.{moment} IS NULL OR probe.{moment} >= :moment
                        THEN (search.low + search.high) / 2 ELSE search.high END
            FROM search
            LEFT JOIN LATERAL (
                SELECT {key}, {moment} FROM {table}
                WHERE {key} >= (search.low + search.high) / 2 ORDER BY {key} LIMIT 1
            ) AS probe ON true
            WHERE search.low < search.high
        )
        SELECT coalesce((SELECT low FROM search WHERE low >= high LIMIT 1), 1)
        """
    )


def id_window(session, id_column, time_column, start: datetime, end: datetime) -> tuple[int, int]:
    """Ids ``[first, stop)`` that hold every row with ``start <= time < end`` (and a few around it)."""
    first = first_id_from(session, id_column, time_column, start - SLACK)
    stop = first_id_from(session, id_column, time_column, end + SLACK)
    return first, stop
