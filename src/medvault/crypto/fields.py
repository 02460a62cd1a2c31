"""PHI in the index: field encryption, blind indexes for equality search, keyed pseudonyms.

* :class:`FieldCipher` encrypts a value (patient name, birth date, ...) for an index column:
  ``0x01 || nonce (12) || AES-256-GCM(k, nonce, value, aad=0x01 || context)`` with
  ``k = HKDF-SHA256(key, info="medvault field v1")``. The context (e.g. ``b"patient_name"`` or the
  row id) stops a ciphertext being moved to another column or row.
* :class:`BlindIndex` gives a deterministic 16-byte token to search an encrypted column by
  equality: ``HMAC-SHA256(HKDF(key, info="medvault blind index v1" || 0x00 || field), value)[:16]``.
* :class:`Pseudonymizer` names a patient (or any subject) in the audit ledger without PHI:
  ``hex(HMAC-SHA256(HKDF(key, info="medvault pseudonym v1" || 0x00 || kind), value)[:16])``.

All keys are separate keyring entries (index_key, blind_index_key, pseudonym_key) and each is
further domain-separated by HKDF, so a token of one field never equals a token of another.
"""

from __future__ import annotations

import os
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medvault.errors import IntegrityError, InvalidInput

__all__ = ["BlindIndex", "FieldCipher", "Pseudonymizer"]

FIELD_VERSION: Final = b"\x01"
NONCE_SIZE: Final = 12
TAG_SIZE: Final = 16
TOKEN_SIZE: Final = 16
MIN_KEY_SIZE: Final = 32
_FIELD_INFO: Final = b"medvault field v1"
_BLIND_INFO: Final = b"medvault blind index v1\x00"
_PSEUDONYM_INFO: Final = b"medvault pseudonym v1\x00"
_FAILED: Final = "an encrypted index field failed its integrity check"


def _hkdf(key: bytes, info: bytes) -> bytes:
    if len(key) < MIN_KEY_SIZE:
        raise InvalidInput(f"a field key must be at least {MIN_KEY_SIZE} bytes")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


def _label(name: str, what: str) -> bytes:
    if not name or "\x00" in name:
        raise InvalidInput(f"a {what} must be a non-empty name without NUL")
    return name.encode("utf-8")


def _hmac16(key: bytes, data: bytes) -> bytes:
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()[:TOKEN_SIZE]


class FieldCipher:
    """Randomised authenticated encryption of one index value (AES-256-GCM, 96-bit random nonce)."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(_hkdf(key, _FIELD_INFO))

    def encrypt(self, plaintext: bytes, *, context: bytes) -> bytes:
        return self._encrypt_with_nonce(plaintext, context=context, nonce=os.urandom(NONCE_SIZE))

    def _encrypt_with_nonce(self, plaintext: bytes, *, context: bytes, nonce: bytes) -> bytes:
        return FIELD_VERSION + nonce + self._aead.encrypt(nonce, plaintext, FIELD_VERSION + context)

    def decrypt(self, blob: bytes, *, context: bytes) -> bytes:
        """Raises :class:`IntegrityError` for a wrong key, context, version or altered bytes."""
        if len(blob) < 1 + NONCE_SIZE + TAG_SIZE or blob[:1] != FIELD_VERSION:
            raise IntegrityError(_FAILED)
        try:
            return self._aead.decrypt(
                blob[1 : 1 + NONCE_SIZE], blob[1 + NONCE_SIZE :], FIELD_VERSION + context
            )
        except InvalidTag:
            raise IntegrityError(_FAILED) from None

    def __repr__(self) -> str:
        return "FieldCipher(<key redacted>)"


class BlindIndex:
    """Deterministic 16-byte equality tokens, one subkey per field.

    The caller normalizes the value before calling (e.g. ``str.casefold()`` and whitespace
    collapsing for a PN, ``YYYYMMDD`` for a DA): the token matches only byte-identical UTF-8.
    """

    def __init__(self, key: bytes) -> None:
        _hkdf(key, _BLIND_INFO)  # check the key now, not at first use
        self._key = key
        self._subkeys: dict[str, bytes] = {}

    def _subkey(self, field: str) -> bytes:
        sub = self._subkeys.get(field)
        if sub is None:
            sub = self._subkeys[field] = _hkdf(self._key, _BLIND_INFO + _label(field, "field"))
        return sub

    def token(self, field: str, value: str) -> bytes:
        return _hmac16(self._subkey(field), value.encode("utf-8"))

    def __repr__(self) -> str:
        return "BlindIndex(<key redacted>)"


class Pseudonymizer:
    """Stable keyed pseudonyms: 32 lowercase hex characters, domain-separated by ``kind``."""

    def __init__(self, key: bytes) -> None:
        _hkdf(key, _PSEUDONYM_INFO)
        self._key = key
        self._subkeys: dict[str, bytes] = {}

    def pseudonym(self, kind: str, value: str) -> str:
        sub = self._subkeys.get(kind)
        if sub is None:
            sub = self._subkeys[kind] = _hkdf(self._key, _PSEUDONYM_INFO + _label(kind, "pseudonym kind"))
        return _hmac16(sub, value.encode("utf-8")).hex()

    def __repr__(self) -> str:
        return "Pseudonymizer(<key redacted>)"
