"""What the office prints: QR codes as inline SVG and the codes of a label sheet."""

from __future__ import annotations

import re

import segno
from markupsafe import Markup

from .codes import require_kind
from .errors import Refusal

MAX_LABELS = 500
TRAILING_NUMBER = re.compile(r"^(.*?)(\d+)$", re.ASCII)


def qr_svg(text: str) -> Markup:
    """``text`` as a QR code, an inline SVG element that scales with its box (no style attribute: CSP)."""
    return Markup(segno.make_qr(text, error="m").svg_inline(border=2, omitsize=True, title=text))


def label_codes(raw_start: str | None, raw_count: str | None) -> list[str]:
    """``count`` parent codes from ``start`` on: its number counted up, keeping its width.

    ``start`` must be a parent code ending in digits (``BAGTRACK_PARENT_QR``)
    and every code of the sheet must be one too; ``count`` is 1 to
    ``MAX_LABELS``. Anything else is ``invalid_input``.
    """
    count = raw_count.strip() if isinstance(raw_count, str) else ""
    if not (count.isascii() and count.isdigit() and len(count) <= 4 and 1 <= int(count) <= MAX_LABELS):
        raise Refusal("invalid_input", f"The number of labels must be a whole number from 1 to {MAX_LABELS}.")
    try:
        start = require_kind(raw_start, "parent").value
    except Refusal as refusal:
        raise Refusal("invalid_input", f"The first label must be a parent bag code. {refusal.message}") from None
    match = TRAILING_NUMBER.match(start)
    if match is None:
        raise Refusal("invalid_input", f"{start} does not end in a number to count up from.")
    prefix, digits = match.groups()
    codes = [f"{prefix}{number:0{len(digits)}d}" for number in range(int(digits), int(digits) + int(count))]
    for code in codes:
        try:
            require_kind(code, "parent")
        except Refusal:
            raise Refusal("invalid_input", f"{code} is not a parent bag code; print fewer labels.") from None
    return codes
