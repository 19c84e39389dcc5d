"""The audit log: who did which admin, bill or close-short action, and what changed."""

from __future__ import annotations

import json

from flask import g, has_request_context

from .errors import Refusal
from .models import AuditEntry, User

REASON_MAX = 500


def record(session, user: User | None, action: str, target: str, *, before=None, after=None) -> None:
    """Add an audit entry to the current transaction (it commits with the change)."""
    request_id = g.get("request_id") if has_request_context() else None
    session.add(
        AuditEntry(
            user_id=user.id if user is not None else None,
            actor=user.username if user is not None else "cli",
            action=action,
            target=target[:128],
            before=json.dumps(before, sort_keys=True, default=str) if before is not None else None,
            after=json.dumps(after, sort_keys=True, default=str) if after is not None else None,
            request_id=request_id,
        )
    )


def reason_given(raw) -> str:
    """The reason for a correction: printable text of 1–500 characters (``invalid_input`` otherwise)."""
    reason = raw if isinstance(raw, str) else ""
    reason = "".join(ch for ch in reason if ch.isprintable()).strip()
    if not reason:
        raise Refusal("invalid_input", "Give a reason for the correction.")
    if len(reason) > REASON_MAX:
        raise Refusal("invalid_input", f"A reason is at most {REASON_MAX} characters.")
    return reason
