"""Finding the rows of a time range through their ids.

Bags and scan-log rows get their time (``created_at``, ``at``) a moment
before their id is drawn, so ids follow time: the seed writes each run's
history in id order, imports stamp the moment they run, and live writers
differ by milliseconds at most. A time range therefore maps onto an id range
found with a binary search over the primary key, a few dozen one-row
lookups whatever the table's size, without an index on the time column
(which every scan would then have to maintain).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select

# Concurrent writers can store their rows a little out of time order; an id
# range found for a moment this much earlier (or later) still holds every row
# of that moment. Callers filter by the time itself within the range.
SLACK = timedelta(minutes=5)


def first_id_from(session, id_column, time_column, moment: datetime) -> int:
    """The lowest id from which rows are at ``moment`` or later (one past the last id when none is).

    Gaps in the ids (pruned rows) cost nothing: each probe reads the first
    row at or after an id.
    """
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


def id_window(session, id_column, time_column, start: datetime, end: datetime) -> tuple[int, int]:
    """Ids ``[first, stop)`` that hold every row with ``start <= time < end`` (and a few around it)."""
    first = first_id_from(session, id_column, time_column, start - SLACK)
    stop = first_id_from(session, id_column, time_column, end + SLACK)
    return first, stop
