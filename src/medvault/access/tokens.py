"""Session tokens: random opaque strings, stored only as SHA-256 hashes (256-bit secrets need no
slow hash). Access tokens live :data:`ACCESS_TTL`; refresh tokens :data:`REFRESH_TTL`, rotated on
every use, and a session (a token *family*) never outlives :data:`SESSION_TTL` from sign-in.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Final, Literal, NamedTuple

from medvault.errors import Unauthenticated

__all__ = [
    "ACCESS_PREFIX",
    "ACCESS_TTL",
    "REFRESH_PREFIX",
    "REFRESH_TTL",
    "SESSION_TTL",
    "InvalidToken",
    "TokenKind",
    "TokenPair",
    "hash_token",
    "new_family",
    "new_token",
]

ACCESS_TTL: Final = timedelta(minutes=15)
REFRESH_TTL: Final = timedelta(hours=12)
SESSION_TTL: Final = timedelta(hours=12)
ACCESS_PREFIX: Final = "mva_"
REFRESH_PREFIX: Final = "mvr_"
TokenKind = Literal["access", "refresh"]


class InvalidToken(Unauthenticated):
    """A token that is unknown, expired, revoked or of the wrong kind (one message for all)."""

    def __init__(self) -> None:
        super().__init__("the token is invalid, expired or revoked", hint="Sign in again.")


class TokenPair(NamedTuple):
    access_token: str
    refresh_token: str

    @property
    def expires_in(self) -> int:
        """Seconds the access token lives (OAuth 2.0 ``expires_in``)."""
        return int(ACCESS_TTL.total_seconds())


def new_token(kind: TokenKind) -> str:
    return (ACCESS_PREFIX if kind == "access" else REFRESH_PREFIX) + secrets.token_urlsafe(32)


def new_family() -> str:
    return secrets.token_hex(16)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
