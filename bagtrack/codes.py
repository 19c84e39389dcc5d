"""Normalising and classifying scanned codes (QR labels and bill numbers), and normalising usernames."""

from __future__ import annotations

import functools
import re
import string
import unicodedata
from dataclasses import dataclass

from flask import current_app

from .errors import Refusal

# The longest values the database stores (see ``bagtrack.models``); longer input is cut before a lookup.
QR_MAX_LENGTH = 64
BILL_NO_MAX_LENGTH = 50
AREA_CODE_MAX_LENGTH = 20
USERNAME_MAX_LENGTH = 64
BILL_NO_PATTERN = re.compile(r"^[A-Z0-9-]{1,50}$", re.ASCII)
# Only ASCII letters are upper-cased: str.upper() turns look-alikes such as the
# long s (U+017F) or the fi ligature (U+FB01) into ASCII ("S", "FI"), which
# would let them pass as codes.
ASCII_UPPER = str.maketrans(string.ascii_lowercase, string.ascii_uppercase)


def without_controls(raw: str | None) -> str:
    """``raw`` without control or format characters (Cc, Cf): no code or name ever contains one.

    They include NUL, which PostgreSQL refuses in any text value.
    """
    if raw is None:
        return ""
    return "".join(ch for ch in raw if unicodedata.category(ch) not in ("Cc", "Cf"))


def normalise(raw: str | None) -> str:
    """Drop every control/format character (Cc, Cf), trim, upper-case.

    Scanners append CR, LF or TAB and some send zero-width characters; none of
    them is ever part of a code.
    """
    return without_controls(raw).strip().translate(ASCII_UPPER)


def normalise_username(raw: str | None) -> str:
    """Trimmed and lower-cased, without control or format characters (a NUL must not reach a query)."""
    return without_controls(raw).strip().lower()


@dataclass(frozen=True)
class Code:
    value: str
    kind: str  # "parent" or "child"


def code_pattern(setting: str) -> re.Pattern[str]:
    """The configured pattern, matched in ASCII mode (full-width digits are not digits).

    The setting may be given as a string or a compiled pattern (tests and
    ``create_app(config)`` pass either).
    """
    return _ascii_pattern(current_app.config[setting])


@functools.lru_cache(maxsize=32)
def _ascii_pattern(pattern: str | re.Pattern[str]) -> re.Pattern[str]:
    # Every scan classifies two codes: compile each configured pattern once.
    source = pattern if isinstance(pattern, str) else pattern.pattern
    flags = 0 if isinstance(pattern, str) else pattern.flags & ~re.UNICODE
    return re.compile(source, flags | re.ASCII)


def expected_formats() -> str:
    """What a bag code looks like, in the floor's words: an example of each kind, never a pattern.

    An example that the configured pattern does not accept is left out rather than shown wrong.
    """
    examples = [
        f"a {kind} bag code looks like {example}"
        for kind, setting in (("parent", "BAGTRACK_PARENT_QR"), ("child", "BAGTRACK_CHILD_QR"))
        if (example := current_app.config[f"{setting}_EXAMPLE"]) and code_pattern(setting).fullmatch(example)
    ]
    if not examples:
        return "Check that the label's code was read whole."
    sentence = ", ".join(examples) + "."
    return sentence[0].upper() + sentence[1:]


def classify(raw: str | None) -> Code:
    """Normalise ``raw`` and tell a parent code from a child code.

    A code matching the parent pattern is a parent, any other code matching
    the child pattern is a child, and anything else is ``invalid_qr``.
    """
    value = normalise(raw)
    if not value:
        raise Refusal("invalid_qr", f"No code was scanned. {expected_formats()}")
    if len(value) > QR_MAX_LENGTH:
        raise Refusal(
            "invalid_qr",
            f"This is not a bag code: a code is at most {QR_MAX_LENGTH} characters. {expected_formats()}",
            qr=value[:QR_MAX_LENGTH],
        )
    if code_pattern("BAGTRACK_PARENT_QR").fullmatch(value):
        return Code(value, "parent")
    if code_pattern("BAGTRACK_CHILD_QR").fullmatch(value):
        return Code(value, "child")
    raise Refusal("invalid_qr", f"This is not a bag code: {value}. {expected_formats()}", qr=value)


def require_kind(raw: str | None, kind: str) -> Code:
    """Classify ``raw`` and refuse it with ``wrong_kind`` unless it is a ``kind`` code."""
    code = classify(raw)
    if code.kind != kind:
        raise Refusal(
            "wrong_kind",
            f"{code.value} is a {code.kind} bag code; a {kind} bag is needed here.",
            qr=code.value,
        )
    return code


def normalise_bill_no(raw: str | None) -> str:
    value = normalise(raw)
    if not BILL_NO_PATTERN.fullmatch(value):
        raise Refusal(
            "invalid_bill_no",
            "A bill number is 1 to 50 characters of A-Z, 0-9 and '-'.",
            qr=value[:QR_MAX_LENGTH],
        )
    return value
