"""What the supervisors read: the floor's hours, refusals, waiting parents and bills, and the reports.

Everything here reads the per-hour tally (:class:`TallyHour`) of one or two
local days, or a short index range (oldest open parents, bills in progress,
one day's closed bills), never the scan log: each answer costs the same at 8,000,000 bags as at
8,000.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from flask import current_app
from sqlalchemy import func, select

from . import timeline
from .errors import Refusal
from .models import AuditEntry, Bag, Bill, DispatchArea, TallyHour, User, utcnow

OLDEST_PARENTS = 8
BILLS_IN_PROGRESS = 8


@dataclass
class Hour:
    """One local hour of a day's chart."""

    label: str
    accepted: int = 0
    refused: int = 0
    completed: int = 0
    accepted_before: int = 0  # the same hour the day before


@dataclass
class FloorCharts:
    day: date
    hours: list[Hour]
    areas: list[dict]  # today's figures per area: code, accepted, refused, completed
    refusals: list[tuple[str, int]]  # today's refusals by reason, most first
    oldest_parents: list[dict]
    bills: list[dict]
    peak: int = field(default=0)


def _hours_of(day: date) -> list[datetime]:
    start, end = timeline.day_range(day)
    hours = []
    while start < end:
        hours.append(start)
        start += timedelta(hours=1)
    return hours


def floor_charts(session, area_id: int | None, *, with_bills: bool) -> FloorCharts:
    """Today against yesterday per local hour, per area, refusals by reason, parents waiting, bills filling.

    ``area_id`` confines everything to one area (a dispatcher's); bills are
    the office's and only shown ``with_bills``.
    """
    day = timeline.today()
    today_hours = _hours_of(day)
    yesterday_hours = _hours_of(day - timedelta(days=1))
    statement = (
        select(
            TallyHour.hour,
            TallyHour.area_id,
            TallyHour.reason,
            func.sum(TallyHour.scans),
            func.sum(TallyHour.parents_complete),
        )
        .where(TallyHour.hour >= yesterday_hours[0], TallyHour.hour <= today_hours[-1])
        .group_by(TallyHour.hour, TallyHour.area_id, TallyHour.reason)
    )
    if area_id is not None:
        statement = statement.where(TallyHour.area_id == area_id)
    hours = {moment: Hour(label=f"{timeline.local(moment):%H}") for moment in today_hours}
    per_area: dict[int, dict] = defaultdict(lambda: {"accepted": 0, "refused": 0, "completed": 0})
    refusals: dict[str, int] = defaultdict(int)
    for moment, row_area, reason, scans, completed in session.execute(statement):
        scans, completed = int(scans or 0), int(completed or 0)
        if moment in hours:
            hour = hours[moment]
            figures = per_area[row_area]
            if reason:
                hour.refused += scans
                figures["refused"] += scans
                refusals[reason] += scans
            else:
                hour.accepted += scans
                figures["accepted"] += scans
            hour.completed += completed
            figures["completed"] += completed
        elif not reason:
            # Yesterday's hour shown beside today's hour of the same local time (DST days: nearest).
            shifted = moment + timedelta(days=1)
            if shifted in hours:
                hours[shifted].accepted_before += scans
    codes = dict(session.execute(select(DispatchArea.id, DispatchArea.code)).all())
    areas = [{"code": codes.get(key, "none"), **figures} for key, figures in sorted(per_area.items())]
    chart = FloorCharts(
        day=day,
        hours=list(hours.values()),
        areas=sorted(areas, key=lambda area: area["code"]),
        refusals=sorted(refusals.items(), key=lambda item: (-item[1], item[0])),
        oldest_parents=_oldest_open_parents(session, area_id, codes),
        bills=_bills_in_progress(session) if with_bills else [],
    )
    chart.peak = max([1, *(max(hour.accepted + hour.refused, hour.accepted_before) for hour in chart.hours)])
    return chart


def _oldest_open_parents(session, area_id: int | None, codes: dict[int, str]) -> list[dict]:
    """The open parents scanned first (ids follow time), each area's read from its own index range."""
    areas = [area_id] if area_id is not None else sorted(codes)
    found = []
    for area in areas:
        found.extend(
            session.execute(
                select(Bag.qr, Bag.created_at, Bag.child_count, Bag.capacity, Bag.area_id)
                .where(Bag.area_id == area, Bag.kind == "parent", Bag.status == "open")
                .order_by(Bag.id)
                .limit(OLDEST_PARENTS)
            ).all()
        )
    now = utcnow()
    found.sort(key=lambda row: row.created_at)
    return [
        {
            "qr": row.qr,
            "area": codes.get(row.area_id, ""),
            "child_count": row.child_count,
            "capacity": row.capacity,
            "age": _age(now - row.created_at),
        }
        for row in found[:OLDEST_PARENTS]
    ]


def _age(elapsed: timedelta) -> str:
    minutes = max(0, int(elapsed.total_seconds() // 60))
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h {minutes % 60:02d} min"
    return f"{minutes // (24 * 60)} days"


def _bills_in_progress(session) -> list[dict]:
    rows = session.execute(
        select(Bill.bill_no, Bill.parent_count, Bill.capacity, Bill.destination)
        .where(Bill.status == "open")
        .order_by(Bill.id.desc())
        .limit(BILLS_IN_PROGRESS)
    ).all()
    return [row._asdict() for row in rows]


# --- reports --------------------------------------------------------------------------------------------------


def operators_report(session, day: date, area_id: int | None) -> list[dict]:
    """Per user, for local ``day`` (and one area, or all): accepted and refused scans, refusals by reason,
    parents completed, first and last scan, active hours and accepted scans per active hour.

    Everything comes from the per-hour tally rows of that day, which keep
    their first and last scan too.
    """
    start, end = timeline.day_range(day)
    statement = select(
        TallyHour.user_id,
        TallyHour.area_id,
        TallyHour.reason,
        TallyHour.hour,
        TallyHour.scans,
        TallyHour.parents_complete,
        TallyHour.first_at,
        TallyHour.last_at,
    ).where(TallyHour.hour >= start, TallyHour.hour < end)
    if area_id is not None:
        statement = statement.where(TallyHour.area_id == area_id)
    people: dict[tuple[int, int], dict] = {}
    for user_id, row_area, reason, hour, scans, completed, first_at, last_at in session.execute(statement):
        person = people.setdefault(
            (user_id, row_area),
            {
                "accepted": 0,
                "rejected": 0,
                "rejected_by_reason": {},
                "parents_completed": 0,
                "first_at": None,
                "last_at": None,
                "hours": set(),
            },
        )
        if first_at is not None and (person["first_at"] is None or first_at < person["first_at"]):
            person["first_at"] = first_at
        if last_at is not None and (person["last_at"] is None or last_at > person["last_at"]):
            person["last_at"] = last_at
        if reason:
            person["rejected"] += scans
            person["rejected_by_reason"][reason] = person["rejected_by_reason"].get(reason, 0) + scans
        else:
            person["accepted"] += scans
        person["parents_completed"] += completed
        if scans:
            person["hours"].add(hour)
    names = dict(session.execute(select(User.id, User.username).where(User.id.in_({key[0] for key in people}))).all())
    codes = dict(session.execute(select(DispatchArea.id, DispatchArea.code)).all())
    operators = []
    for (user_id, row_area), person in people.items():
        if not (person["accepted"] or person["rejected"] or person["parents_completed"]):
            continue
        active = len(person.pop("hours"))
        operators.append(
            {
                "user": names.get(user_id) if user_id else None,
                "area": codes.get(row_area),
                **person,
                "active_hours": active,
                "per_active_hour": round(person["accepted"] / active, 1) if active else 0.0,
            }
        )
    operators.sort(key=lambda row: (row["area"] or "", row["user"] or ""))
    return operators


def daily_report(session, day: date) -> dict:
    """The bills closed on local ``day`` (and still closed), with who closed them, and their totals."""
    start, end = timeline.day_range(day)
    bills = session.execute(
        select(Bill.bill_no, Bill.closed_at, Bill.parent_count, Bill.child_count, Bill.destination, Bill.vehicle_no)
        .where(Bill.status == "closed", Bill.closed_at >= start, Bill.closed_at < end)
        .order_by(Bill.closed_at, Bill.id)
    ).all()
    closers: dict[str, str] = {}
    if bills:
        # The audit log's entries of that day (index on time), latest close of each bill last.
        for target, actor in session.execute(
            select(AuditEntry.target, AuditEntry.actor)
            .where(AuditEntry.at >= start, AuditEntry.at < end, AuditEntry.action == "bill.close")
            .order_by(AuditEntry.id)
        ):
            closers[target] = actor
    weight = current_app.config["BAGTRACK_CHILD_WEIGHT_KG"]
    rows = [
        {
            "bill_no": bill.bill_no,
            "closed_at": bill.closed_at,
            "parents": bill.parent_count,
            "children": bill.child_count,
            "weight_kg": round(bill.child_count * weight, 3),
            "destination": bill.destination,
            "vehicle": bill.vehicle_no,
            "closed_by": closers.get(bill.bill_no),
        }
        for bill in bills
    ]
    totals = {
        "bills": len(rows),
        "parents": sum(row["parents"] for row in rows),
        "children": sum(row["children"] for row in rows),
        "weight_kg": round(sum(row["weight_kg"] for row in rows), 3),
    }
    return {"day": day, "bills": rows, "totals": totals}


def parse_day(raw: str | None) -> date:
    """A report's ``day`` (YYYY-MM-DD; default today, local)."""
    if raw is None or raw.strip() == "":
        return timeline.today()
    try:
        return date.fromisoformat(raw.strip())
    except ValueError:
        raise Refusal("invalid_input", f"'day' must be a date written YYYY-MM-DD, not {raw[:20]!r}.") from None


def report_rows(what: str, report) -> list[tuple]:
    """A report's rows in the columns of its CSV and XLSX (``exporting.COLUMNS[what]``)."""
    from .exporting import COLUMNS

    rows = report if what == "operators" else report["bills"]
    shaped = []
    for row in rows:
        if what == "operators":
            reasons = sorted(row["rejected_by_reason"].items())
            row = {**row, "rejected_by_reason": " ".join(f"{reason}={count}" for reason, count in reasons)}
        shaped.append(tuple(row[column] for column in COLUMNS[what]))
    return shaped


def report_file(what: str, fmt: str, report) -> bytes:
    """A report as the bytes of its CSV or XLSX download (``fmt``)."""
    from .exporting import csv_chunks, xlsx_chunks

    rows = iter(report_rows(what, report))
    chunks = csv_chunks(what, rows) if fmt == "csv" else xlsx_chunks(what, rows)
    return b"".join(chunk.encode() if isinstance(chunk, str) else chunk for chunk in chunks)
