"""Key-encryption-key providers: who wraps the per-object data keys.

Envelope encryption: each object has its own random data key (:func:`new_data_key`); a KEK wraps
it, and the wrapped key is stored in the **index row** of the object, not in the object. Deleting
the row therefore crypto-shreds the object; rotating the KEK re-wraps small keys, never objects.

:class:`KekProvider` is the port. :class:`KeyringKekProvider` is the local implementation over
the sealed keyring; a Vault transit or AWS KMS provider implements the same four members and no
caller changes.

Local wrapping (kek id ``"local-<version>"``)::

    blob = nonce (12 random bytes) || AES-256-GCM(kek, nonce, data_key, aad) (32 + 16 bytes)
    aad  = kek_id as ASCII || 0x00 || context

The context (for objects: the object id) binds a wrapped key to its object, so a wrapped key
copied to another row does not unwrap.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medvault.crypto.keyring import Keyring
from medvault.errors import IntegrityError, InvalidInput, KeyringError

__all__ = [
    "DATA_KEY_SIZE",
    "KekProvider",
    "KeyringKekProvider",
    "WrappedKey",
    "new_data_key",
    "rewrap",
]

DATA_KEY_SIZE: Final = 32
NONCE_SIZE: Final = 12
LOCAL_PREFIX: Final = "local-"
_LOCAL_ID: Final = re.compile(r"local-([1-9][0-9]{0,9})")
_UNWRAP_FAILED: Final = "a wrapped data key failed its integrity check"


def new_data_key() -> bytes:
    """A fresh random 256-bit data key (one per object)."""
    return os.urandom(DATA_KEY_SIZE)


@dataclass(frozen=True)
class WrappedKey:
    """A data key wrapped by the KEK named ``kek_id``. Store both in the index row."""

    kek_id: str
    blob: bytes

    def __repr__(self) -> str:
        return f"WrappedKey(kek_id={self.kek_id!r}, blob=<{len(self.blob)} bytes>)"


@runtime_checkable
class KekProvider(Protocol):
    """Wraps and unwraps data keys. ``unwrap`` raises :class:`IntegrityError` when the blob or
    context does not verify and :class:`KeyringError` when ``kek_id`` is unknown."""

    @property
    def current_kek_id(self) -> str: ...

    def wrap(self, data_key: bytes, *, context: bytes) -> WrappedKey: ...

    def unwrap(self, wrapped: WrappedKey, *, context: bytes) -> bytes: ...

    def kek_ids(self) -> list[str]: ...


def rewrap(provider: KekProvider, wrapped: WrappedKey, *, context: bytes) -> WrappedKey:
    """Unwrap with whichever KEK wrapped it and wrap again under the current KEK (rotation)."""
    if wrapped.kek_id == provider.current_kek_id:
        return wrapped
    return provider.wrap(provider.unwrap(wrapped, context=context), context=context)


def _aad(kek_id: str, context: bytes) -> bytes:
    return kek_id.encode("ascii") + b"\x00" + bytes(context)


class KeyringKekProvider:
    """:class:`KekProvider` over the local sealed :class:`Keyring` (kek ids ``"local-<version>"``).

    ``reload`` (e.g. from :func:`medvault.crypto.open_keyring`) is called when asked to unwrap
    under a KEK version this process has not seen — another process rotated — and the new keyring
    is swapped in atomically. Call :meth:`refresh` to pick up a new *current* KEK for wrapping
    (e.g. on SIGHUP or periodically); otherwise new keys keep being wrapped under the KEK current
    when this process loaded the keyring, which stays valid.
    """

    def __init__(self, keyring: Keyring, *, reload: Callable[[], Keyring] | None = None) -> None:
        self._keyring = keyring
        self._reload = reload
        self._lock = threading.Lock()

    @property
    def current_kek_id(self) -> str:
        return f"{LOCAL_PREFIX}{self._keyring.current_kek}"

    def kek_ids(self) -> list[str]:
        return [f"{LOCAL_PREFIX}{v}" for v in sorted(self._keyring.keks)]

    def refresh(self) -> bool:
        """Reload the keyring now (if a reload callable was given); True if it was reloaded."""
        if self._reload is None:
            return False
        with self._lock:
            self._keyring = self._reload()
        return True

    def wrap(self, data_key: bytes, *, context: bytes) -> WrappedKey:
        return self._wrap_with_nonce(data_key, context=context, nonce=os.urandom(NONCE_SIZE))

    def _wrap_with_nonce(self, data_key: bytes, *, context: bytes, nonce: bytes) -> WrappedKey:
        if len(data_key) != DATA_KEY_SIZE:
            raise InvalidInput(f"a data key must be {DATA_KEY_SIZE} bytes")
        keyring = self._keyring  # one snapshot: id and key must agree
        kek_id = f"{LOCAL_PREFIX}{keyring.current_kek}"
        kek = keyring.keks[keyring.current_kek]
        blob = nonce + AESGCM(kek).encrypt(nonce, data_key, _aad(kek_id, context))
        return WrappedKey(kek_id=kek_id, blob=blob)

    def _kek(self, kek_id: str) -> bytes:
        match = _LOCAL_ID.fullmatch(kek_id)
        if match is None:
            raise KeyringError(
                "unknown key-encryption key id", hint="This key was not wrapped by the local keyring."
            )
        version = int(match.group(1))
        kek = self._keyring.keks.get(version)
        if kek is None and self._reload is not None:
            with self._lock:
                kek = self._keyring.keks.get(version)  # another thread may have reloaded meanwhile
                if kek is None:
                    self._keyring = self._reload()
                    kek = self._keyring.keks.get(version)
        if kek is None:
            raise KeyringError(
                f"the keyring has no key-encryption key {kek_id}",
                hint="The keyring file may be older than the data; restore the current keyring.",
            )
        return kek

    def unwrap(self, wrapped: WrappedKey, *, context: bytes) -> bytes:
        kek = self._kek(wrapped.kek_id)
        blob = wrapped.blob
        if len(blob) != NONCE_SIZE + DATA_KEY_SIZE + 16:
            raise IntegrityError(_UNWRAP_FAILED)
        try:
            return AESGCM(kek).decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], _aad(wrapped.kek_id, context))
        except InvalidTag:
            raise IntegrityError(_UNWRAP_FAILED) from None

    def __repr__(self) -> str:
        return f"KeyringKekProvider(current_kek_id={self.current_kek_id!r})"
