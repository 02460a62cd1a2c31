"""TOTP (RFC 6238: HMAC-SHA1, 30-second steps, 6 digits) and one-time recovery codes. Pure: time
and the last used step are arguments; the store keeps the step.

* A code is accepted for the current step or one step either side (:data:`WINDOW`), and only for a
  step later than the last one used by that account: each code works once (replay refused).
* Enrolment gives the ``otpauth://`` URI (Key Uri Format, as authenticator apps read it), the same
  as a QR code for the terminal (text) and as PNG bytes, and :data:`RECOVERY_CODES` recovery codes.
* Recovery codes carry 80 random bits each, so a SHA-256 of the normalized code is a safe stored
  form (no slow hash needed); each one is deleted when used.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import pyotp
import segno

__all__ = [
    "ISSUER",
    "RECOVERY_CODES",
    "STEP_SECONDS",
    "WINDOW",
    "Enrolment",
    "enrol",
    "hash_recovery_code",
    "looks_like_recovery_code",
    "new_recovery_codes",
    "new_secret",
    "step_at",
    "totp_at",
    "verify_totp",
]

STEP_SECONDS: Final = 30
DIGITS: Final = 6
WINDOW: Final = 1  # steps accepted either side of now
ISSUER: Final = "medvault"
RECOVERY_CODES: Final = 10
_RECOVERY_ALPHABET: Final = "abcdefghijkmnpqrstuvwxyz23456789"  # 32 symbols, no l/o/0/1
_RECOVERY_GROUPS: Final = 4
_RECOVERY_GROUP_LEN: Final = 4  # 16 symbols x 5 bits = 80 bits


def new_secret() -> str:
    """A 160-bit base32 secret (RFC 4226 recommends the HMAC-SHA1 output size)."""
    return pyotp.random_base32(32)


def step_at(now: datetime) -> int:
    return int(now.timestamp()) // STEP_SECONDS


def totp_at(secret: str, step: int) -> str:
    """The code for a time step (for tests and tools)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).at(step * STEP_SECONDS)


def verify_totp(secret: str, code: str, *, now: datetime, last_step: int | None) -> int | None:
    """The step the code belongs to, when it is valid within the window and later than
    ``last_step``; otherwise None. The caller must store the returned step (compare-and-set)."""
    code = code.strip().replace(" ", "")
    if len(code) != DIGITS or not (code.isascii() and code.isdigit()):
        return None
    current = step_at(now)
    matched: int | None = None
    for step in range(current - WINDOW, current + WINDOW + 1):
        # Check every step (constant work), keep the latest match.
        if hmac.compare_digest(totp_at(secret, step), code):
            matched = step
    if matched is None or (last_step is not None and matched <= last_step):
        return None
    return matched


@dataclass(frozen=True, repr=False)
class Enrolment:
    """What a new authenticator needs; shown once to the user (never logged)."""

    secret: str
    uri: str
    qr_text: str
    qr_png: bytes
    recovery_codes: tuple[str, ...] = field(default=())

    def __repr__(self) -> str:
        return "Enrolment(<secret redacted>)"


def enrol(username: str, *, issuer: str = ISSUER, secret: str | None = None) -> Enrolment:
    secret = secret or new_secret()
    uri = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=username, issuer_name=issuer
    )
    qr = segno.make(uri, error="m")
    text = io.StringIO()
    qr.terminal(out=text, compact=True)
    png = io.BytesIO()
    qr.save(png, kind="png", scale=6, border=4)
    return Enrolment(
        secret=secret,
        uri=uri,
        qr_text=text.getvalue(),
        qr_png=png.getvalue(),
        recovery_codes=new_recovery_codes(),
    )


def new_recovery_codes(count: int = RECOVERY_CODES) -> tuple[str, ...]:
    def one() -> str:
        groups = (
            "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(_RECOVERY_GROUP_LEN))
            for _ in range(_RECOVERY_GROUPS)
        )
        return "-".join(groups)

    return tuple(one() for _ in range(count))


def _normalize_recovery(code: str) -> str:
    return "".join(ch for ch in code.casefold() if ch not in "- ")


def looks_like_recovery_code(code: str) -> bool:
    norm = _normalize_recovery(code)
    return len(norm) == _RECOVERY_GROUPS * _RECOVERY_GROUP_LEN and all(c in _RECOVERY_ALPHABET for c in norm)


def hash_recovery_code(code: str) -> bytes:
    return hashlib.sha256(b"medvault recovery code v1\x00" + _normalize_recovery(code).encode()).digest()
