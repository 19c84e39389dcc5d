"""The audit log: who did which admin, bill or close-short action, and what changed."""

from __future__ import annotations

import json

from flask import g, has_request_context
from sqlalchemy import bindparam, insert

from .errors import Refusal
from .models import AuditEntry, User, utcnow

REASON_MAX = 500


def record(session, user: User | None, action: str, target: str, *, before=None, after=None) -> None:
    """Add an audit entry to the current transaction (it commits with the change)."""
    session.add(AuditEntry(**entry_row(user, action, target, before=before, after=after)))


def entry_row(user: User | None, action: str, target: str, *, before=None, after=None) -> dict:
    """Every column of an audit entry but its id: ``before`` and ``after`` as JSON, the request's id if any."""
    return {
        "at": utcnow(),
        "user_id": user.id if user is not None else None,
        "actor": user.username if user is not None else "cli",
        "action": action,
        "target": target[:128],
        "before": json.dumps(before, sort_keys=True, default=str) if before is not None else None,
        "after": json.dumps(after, sort_keys=True, default=str) if after is not None else None,
        "request_id": g.get("request_id") if has_request_context() else None,
    }


def entry_insert(prefix: str):
    """An INSERT of one audit entry, each column's value bound as ``prefix`` + its name (see :func:`entry_row`)."""
    columns = [column.name for column in AuditEntry.__table__.columns if column.name != "id"]
    return insert(AuditEntry.__table__).values({column: bindparam(prefix + column) for column in columns})


def reason_given(raw) -> str:
    """The reason for a correction: printable text of 1–500 characters (``invalid_input`` otherwise)."""
    reason = raw if isinstance(raw, str) else ""
    reason = "".join(ch for ch in reason if ch.isprintable()).strip()
    if not reason:
        raise Refusal("invalid_input", "Give a reason for the correction.")
    if len(reason) > REASON_MAX:
        raise Refusal("invalid_input", f"A reason is at most {REASON_MAX} characters.")
    return reason
