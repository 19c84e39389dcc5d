"""Dashboard figures, summed from the tally the domain transactions keep."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import case, func, select

from . import timeline
from .models import OFFICE_TALLY, Tally


def tally_figures(session, area_id: int | None) -> dict:
    """The figures of ``/api/stats`` for one area (``None``: all areas), summed from the tally now.

    Bills belong to no area, so every user sees the same bill figures.
    """
    today = timeline.today()

    def total(column, *, only_today: bool = False):
        condition = Tally.area_id != OFFICE_TALLY if area_id is None else Tally.area_id == area_id
        if only_today:
            condition = condition & (Tally.day == today)
        return func.coalesce(func.sum(case((condition, column), else_=0)), 0)

    bills = Tally.area_id == OFFICE_TALLY
    statement = select(
        total(Tally.parents),
        total(Tally.children),
        total(Tally.parents_complete),
        total(Tally.parents_billed),
        func.coalesce(func.sum(case((bills, Tally.bills_open), else_=0)), 0),
        func.coalesce(func.sum(case((bills, Tally.bills_closed), else_=0)), 0),
        total(Tally.scans_ok),
        total(Tally.scans_ok, only_today=True),
    )
    if area_id is not None:
        statement = statement.where(Tally.area_id.in_([0, area_id]))
    parents, children, complete, billed, bills_open, bills_closed, scans, scans_today = (
        int(value) for value in session.execute(statement).one()
    )
    return {
        "bags": {"parents": parents, "children": children},
        "parents": {"open": parents - complete, "complete": complete, "billed": billed},
        "bills": {"open": bills_open, "closed": bills_closed},
        "scans": {"total": scans, "today": scans_today},
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
