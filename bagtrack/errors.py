"""Refusals: the rule-based answers of the domain, with their HTTP status."""

from __future__ import annotations

STATUS_BY_CODE = {
    "invalid_input": 400,
    "invalid_qr": 400,
    "invalid_bill_no": 400,
    "csrf_failed": 400,
    "login_required": 401,
    "session_expired": 401,
    "forbidden": 403,
    "not_found": 404,
    "parent_not_found": 404,
    "bill_not_found": 404,
    "method_not_allowed": 405,
    "wrong_kind": 409,
    "parent_on_bill": 409,
    "child_in_other_parent": 409,
    "parent_full": 409,
    "parent_empty": 409,
    "parent_not_complete": 409,
    "nothing_to_undo": 409,
    "bill_exists": 409,
    "bill_closed": 409,
    "bill_full": 409,
    "bill_empty": 409,
    "parent_on_other_bill": 409,
    "parent_not_on_bill": 409,
    "last_admin": 409,
    "child_not_in_parent": 409,
    "bag_in_use": 409,
    "bill_cancelled": 409,
    "too_large": 413,
    "rate_limited": 429,
    "unavailable": 503,
}


class Refusal(Exception):
    """A request the rules refuse: a stable ``code``, a sentence for people.

    ``qr``, ``parent`` and ``bill`` say what was scanned, so the refusal can
    be written to the scan log; only their ids are kept, because the
    transaction they were read in is rolled back.
    """

    def __init__(self, code: str, message: str, *, qr: str | None = None, parent=None, bill=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = STATUS_BY_CODE[code]
        self.qr = qr
        self.parent_id = parent.id if parent is not None else None
        self.area_id = parent.area_id if parent is not None else None
        self.bill_id = bill.id if bill is not None else None


# Sentences that more than one rule says of a parent bag, ``{qr}`` its code; imports build them in SQL.
PARENT_ON_BILL = "Parent bag {qr} is loaded on a bill; its contents cannot change."
PARENT_ON_BILL_TO_REOPEN = "Parent bag {qr} is loaded on a bill; take it off the bill before reopening it."
PARENT_EMPTY_TO_LOAD = "Parent bag {qr} is empty; fill it before loading."
PARENT_EMPTY_TO_CLOSE = "Parent bag {qr} is empty; there is nothing to close."
