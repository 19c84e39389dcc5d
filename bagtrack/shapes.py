"""The JSON shapes of the HTTP contract."""

from __future__ import annotations

from datetime import datetime

from flask import current_app

from .models import Bag, Bill, User


def iso(moment: datetime | None) -> str | None:
    """Stored times are naive UTC; the contract speaks ISO 8601 with a Z."""
    if moment is None:
        return None
    return moment.isoformat(timespec="seconds") + "Z"


def parent_json(parent: Bag, bill_no: str | None) -> dict:
    """A parent and the number of the bill it is loaded on (None: on none; see ``queries.bill_no_of``)."""
    return {
        "qr": parent.qr,
        "status": parent.status,
        "child_count": parent.child_count,
        "capacity": parent.capacity,
        "area": parent.area.code,
        "bill_no": bill_no,
    }


def bill_json(bill: Bill) -> dict:
    child_weight = current_app.config["BAGTRACK_CHILD_WEIGHT_KG"]
    parent_capacity = current_app.config["BAGTRACK_PARENT_CAPACITY"]
    return {
        "bill_no": bill.bill_no,
        "status": bill.status,
        "parent_count": bill.parent_count,
        "capacity": bill.capacity,
        "child_count": bill.child_count,
        "weight_kg": round(bill.child_count * child_weight, 3),
        "expected_weight_kg": round(bill.capacity * parent_capacity * child_weight, 3),
        "destination": bill.destination,
        "vehicle_no": bill.vehicle_no,
        "created_at": iso(bill.created_at),
        "closed_at": iso(bill.closed_at),
    }


def scan_json(row) -> dict:
    """A row of :func:`bagtrack.queries.scan_rows`."""
    return {
        "id": row.id,
        "at": iso(row.at),
        "kind": row.kind,
        "outcome": row.outcome,
        "reason": row.reason,
        "qr": row.qr,
        "parent": row.parent_qr,
        "bill_no": row.bill_no,
        "user": row.username,
        "area": row.area_code,
    }


def user_json(user: User) -> dict:
    return {
        "username": user.username,
        "role": user.role,
        "area": user.area.code if user.area else None,
        "active": user.active,
        "locked_until": iso(user.locked_until) if user.is_locked() else None,
    }
