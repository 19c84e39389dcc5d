"""Two-factor login with TOTP (authenticator apps) and one-time recovery codes.

The secret is stored encrypted with Fernet under a key derived (HKDF-SHA256)
from ``BAGTRACK_2FA_KEY``, or from ``SECRET_KEY`` when that is not set:
a copy of the database alone does not give away anyone's second factor.
Recovery codes are stored as HMAC-SHA256 under a second derived key; each
works once. Changing the key makes every enrolment unreadable: users then
enrol again after ``flask users reset-2fa``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

import pyotp
import segno
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import current_app

ISSUER = "bagtrack"
RECOVERY_CODES = 10
# 60 random bits each, written in three groups of four (e.g. ``7KQ2-MZ4D-X9PA``).
RECOVERY_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
RECOVERY_LENGTH = 12
# A code of the previous or next 30-second step is accepted too (clocks drift).
VALID_WINDOW = 1


def _derived_key(purpose: bytes) -> bytes:
    secret = current_app.config.get("BAGTRACK_2FA_KEY") or current_app.config["SECRET_KEY"]
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"bagtrack 2fa " + purpose).derive(
        secret.encode()
    )


def _fernet() -> Fernet:
    return Fernet(base64.urlsafe_b64encode(_derived_key(b"secret")))


def new_secret() -> str:
    return pyotp.random_base32()


def encrypt(secret: str) -> str:
    return _fernet().encrypt(secret.encode()).decode()


def decrypt(token: str | None) -> str | None:
    """The secret, or None when there is none or it was encrypted under another key."""
    if not token:
        return None
    try:
        return _fernet().decrypt(token.encode()).decode()
    except (InvalidToken, ValueError):
        return None


def matching_step(secret: str, code: str | None, after_step: int | None = None) -> int | None:
    """The time step whose code ``code`` is (within the drift window), if later than ``after_step``."""
    code = (code or "").replace(" ", "").strip()
    if not (len(code) == 6 and code.isascii() and code.isdigit()):
        return None
    totp = pyotp.TOTP(secret)
    now_step = int(time.time()) // totp.interval
    for step in range(now_step - VALID_WINDOW, now_step + VALID_WINDOW + 1):
        if after_step is not None and step <= after_step:
            continue
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def provisioning_uri(secret: str, username: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=ISSUER)


def qr_svg(uri: str) -> str:
    """The QR code of ``uri`` as an inline SVG element (no script, no style attribute: fine under the CSP)."""
    return segno.make(uri, error="m").svg_inline(scale=5, dark="#000", light="#fff", title="QR code to scan")


def new_recovery_codes() -> list[str]:
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(RECOVERY_LENGTH))
        codes.append("-".join(raw[i : i + 4] for i in range(0, RECOVERY_LENGTH, 4)))
    return codes


def normalise_recovery_code(raw: str | None) -> str:
    return "".join(ch for ch in (raw or "").upper() if ch.isascii() and ch.isalnum())[: RECOVERY_LENGTH + 4]


def recovery_hash(code: str) -> str:
    return hmac.new(_derived_key(b"recovery"), normalise_recovery_code(code).encode(), hashlib.sha256).hexdigest()
