"""The sealed keyring: every long-lived secret of a medvault home, sealed by one passphrase.

The keyring holds the key-encryption keys (KEKs, versioned; the newest wraps new data keys, the
older ones only unwrap), the key that encrypts PHI fields in the index, the blind-index key, the
pseudonym key of the ledger and the password of the TLS private keys on disk.

File layout (UTF-8 JSON; see docs/encryption-format.md)::

    {"format": "medvault-keyring", "version": 1,
     "kdf": {"name": "scrypt", "n": 131072, "r": 8, "p": 1, "salt": "<base64, 16 bytes>"},
     "cipher": "AES-256-GCM", "nonce": "<base64, 12 bytes>", "ciphertext": "<base64>"}

    key       = scrypt(passphrase as NFC UTF-8, salt, n, r, p, length 32)
    plaintext = AES-256-GCM-decrypt(key, nonce, ciphertext, aad=b"medvault-keyring v1")
              = JSON {"keks": {"1": "<b64>", ...}, "current_kek": 1, "index_key": "<b64>",
                      "blind_index_key": "<b64>", "pseudonym_key": "<b64>", "tls_secret": "<b64>"}

Reloading without the passphrase: :class:`KeyringFile` keeps the scrypt-derived key (never the
passphrase) and re-reads the file with it. :meth:`KeyringFile.rotate` (and so
:func:`reseal_with_rotation`, used by ``medvault keys rotate``) reseals with the **same salt and
parameters** and a fresh nonce, so every process holding a :class:`KeyringFile` can keep
reloading. Sealing with :func:`save_keyring` (``init``, passphrase change) draws a new salt: then
running processes get a :class:`KeyringError` on reload and must be restarted.

Writes are atomic (temporary file in the same folder, fsync, ``os.replace``, mode 0600) and
serialised by an ``fcntl`` lock on ``<keyring>.lock``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import tempfile
import threading
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from medvault.errors import InvalidInput, KeyringError, WrongPassphrase

__all__ = [
    "DEFAULT_SCRYPT",
    "TEST_SCRYPT",
    "Keyring",
    "KeyringFile",
    "ScryptParams",
    "load_keyring",
    "open_keyring",
    "reseal_with_rotation",
    "save_keyring",
]

FILE_FORMAT: Final = "medvault-keyring"
FILE_VERSION: Final = 1
KEYRING_AAD: Final = b"medvault-keyring v1"
KEY_SIZE: Final = 32
SALT_SIZE: Final = 16
NONCE_SIZE: Final = 12
MAX_FILE_SIZE: Final = 1024 * 1024
# Refuse files asking for more than this much scrypt memory (128 * n * r bytes): a planted file
# must not make every process that opens it allocate gigabytes.
MAX_SCRYPT_MEMORY: Final = 1024 * 1024 * 1024

_MALFORMED: Final = "the keyring file is malformed or of an unsupported format"


@dataclass(frozen=True)
class ScryptParams:
    """scrypt cost parameters (RFC 7914): CPU/memory cost ``n`` (a power of two), block size ``r``,
    parallelism ``p``."""

    n: int
    r: int
    p: int

    def check(self) -> None:
        """Raise :class:`KeyringError` unless these are parameters this version accepts."""
        n, r, p = self.n, self.r, self.p
        if not (
            isinstance(n, int)
            and isinstance(r, int)
            and isinstance(p, int)
            and 2**10 <= n <= 2**22
            and n & (n - 1) == 0
            and 1 <= r <= 32
            and 1 <= p <= 16
            and 128 * n * r <= MAX_SCRYPT_MEMORY
        ):
            raise KeyringError("unsupported scrypt parameters for the keyring")


#: The default: n=2**17, r=8, p=1 (128 MiB, about 0.25 s here), per OWASP advice.
DEFAULT_SCRYPT: Final = ScryptParams(2**17, 8, 1)
#: For tests only: cheap to derive, far too weak for a real keyring.
TEST_SCRYPT: Final = ScryptParams(2**12, 8, 1)


def _check_key(name: str, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != KEY_SIZE:
        raise KeyringError(f"keyring entry {name!r} must be a {KEY_SIZE}-byte key")


@dataclass(eq=True, repr=False)
class Keyring:
    """The secrets of a medvault home. Construct with :meth:`generate` or :meth:`unseal`.

    ``keks`` maps a KEK version to its 32-byte key; ``current_kek`` is the version that wraps new
    data keys. Every other secret is 32 random bytes. ``repr`` never shows a secret.
    """

    keks: dict[int, bytes]
    current_kek: int
    index_key: bytes
    blind_index_key: bytes
    pseudonym_key: bytes
    tls_secret: bytes
    _randbytes: Callable[[int], bytes] = field(default=os.urandom, compare=False)

    def __post_init__(self) -> None:
        if not self.keks or self.current_kek not in self.keks:
            raise KeyringError("the keyring has no current key-encryption key")
        for version, kek in self.keks.items():
            if not isinstance(version, int) or version < 1:
                raise KeyringError("key-encryption key versions are positive integers")
            _check_key(f"kek {version}", kek)
        for name in ("index_key", "blind_index_key", "pseudonym_key", "tls_secret"):
            _check_key(name, getattr(self, name))

    @classmethod
    def generate(cls, *, randbytes: Callable[[int], bytes] = os.urandom) -> Keyring:
        """A new keyring with KEK version 1. ``randbytes`` is injectable for known-answer tests."""
        return cls(
            keks={1: randbytes(KEY_SIZE)},
            current_kek=1,
            index_key=randbytes(KEY_SIZE),
            blind_index_key=randbytes(KEY_SIZE),
            pseudonym_key=randbytes(KEY_SIZE),
            tls_secret=randbytes(KEY_SIZE),
            _randbytes=randbytes,
        )

    def add_kek(self) -> int:
        """Add a new random KEK and make it current; older KEKs stay for unwrapping. Returns its version."""
        version = max(self.keks) + 1
        self.keks[version] = self._randbytes(KEY_SIZE)
        self.current_kek = version
        return version

    def __repr__(self) -> str:
        return (
            f"Keyring(kek_versions={sorted(self.keks)}, current_kek={self.current_kek}, secrets=<redacted>)"
        )

    # -- sealing ---------------------------------------------------------------------------------

    def _payload(self) -> bytes:
        b64 = _b64e
        doc = {
            "keks": {str(v): b64(k) for v, k in sorted(self.keks.items())},
            "current_kek": self.current_kek,
            "index_key": b64(self.index_key),
            "blind_index_key": b64(self.blind_index_key),
            "pseudonym_key": b64(self.pseudonym_key),
            "tls_secret": b64(self.tls_secret),
        }
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def _from_payload(cls, payload: bytes) -> Keyring:
        try:
            doc = json.loads(payload)
            keks = {int(v): _b64d(k) for v, k in doc["keks"].items()}
            current = doc["current_kek"]
            if not isinstance(current, int):
                raise KeyringError(_MALFORMED)
            return cls(
                keks=keks,
                current_kek=current,
                index_key=_b64d(doc["index_key"]),
                blind_index_key=_b64d(doc["blind_index_key"]),
                pseudonym_key=_b64d(doc["pseudonym_key"]),
                tls_secret=_b64d(doc["tls_secret"]),
            )
        except KeyringError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError):
            raise KeyringError(_MALFORMED) from None

    def _seal_with_key(self, key: bytes, salt: bytes, params: ScryptParams) -> bytes:
        nonce = self._randbytes(NONCE_SIZE)
        ciphertext = AESGCM(key).encrypt(nonce, self._payload(), KEYRING_AAD)
        doc = {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "kdf": {"name": "scrypt", "n": params.n, "r": params.r, "p": params.p, "salt": _b64e(salt)},
            "cipher": "AES-256-GCM",
            "nonce": _b64e(nonce),
            "ciphertext": _b64e(ciphertext),
        }
        return (json.dumps(doc, indent=2) + "\n").encode()

    def seal(self, passphrase: str, *, params: ScryptParams = DEFAULT_SCRYPT) -> bytes:
        """Seal under ``passphrase`` with a fresh random salt; returns the file bytes."""
        params.check()
        salt = self._randbytes(SALT_SIZE)
        return self._seal_with_key(_derive(passphrase, salt, params), salt, params)

    @classmethod
    def unseal(cls, sealed: bytes, passphrase: str) -> Keyring:
        """Open a sealed keyring. :class:`WrongPassphrase` if the passphrase does not open it,
        :class:`KeyringError` if the file is malformed or of an unsupported version."""
        outer = _SealedFile.parse(sealed)
        key = _derive(passphrase, outer.salt, outer.params)
        return outer.open(key)


@dataclass(frozen=True)
class _SealedFile:
    salt: bytes
    params: ScryptParams
    nonce: bytes
    ciphertext: bytes

    @classmethod
    def parse(cls, sealed: bytes) -> _SealedFile:
        if len(sealed) > MAX_FILE_SIZE:
            raise KeyringError(_MALFORMED)
        try:
            doc = json.loads(sealed)
            if not isinstance(doc, dict) or doc.get("format") != FILE_FORMAT:
                raise KeyringError(_MALFORMED)
            if doc.get("version") != FILE_VERSION:
                raise KeyringError(
                    "the keyring file has an unsupported version",
                    hint="It was written by a newer medvault; upgrade to open it.",
                )
            kdf = doc["kdf"]
            if kdf["name"] != "scrypt" or doc["cipher"] != "AES-256-GCM":
                raise KeyringError(_MALFORMED)
            params = ScryptParams(kdf["n"], kdf["r"], kdf["p"])
            parsed = cls(
                salt=_b64d(kdf["salt"]),
                params=params,
                nonce=_b64d(doc["nonce"]),
                ciphertext=_b64d(doc["ciphertext"]),
            )
        except KeyringError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError):  # JSONDecodeError, UnicodeError: ValueError
            raise KeyringError(_MALFORMED) from None
        params.check()
        if len(parsed.salt) < SALT_SIZE or len(parsed.nonce) != NONCE_SIZE:
            raise KeyringError(_MALFORMED)
        return parsed

    def open(self, key: bytes) -> Keyring:
        try:
            payload = AESGCM(key).decrypt(self.nonce, self.ciphertext, KEYRING_AAD)
        except InvalidTag:
            raise WrongPassphrase() from None
        return Keyring._from_payload(payload)


def _b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64d(text: object) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("not base64 text") from None


def _passphrase_bytes(passphrase: str) -> bytes:
    if not isinstance(passphrase, str) or not passphrase:
        raise InvalidInput("the keyring passphrase cannot be empty")
    # NFC so that the same passphrase typed on different systems gives the same bytes.
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


def _derive(passphrase: str, salt: bytes, params: ScryptParams) -> bytes:
    params.check()
    kdf = Scrypt(salt=salt, length=KEY_SIZE, n=params.n, r=params.r, p=params.p)
    return kdf.derive(_passphrase_bytes(passphrase))


# -- files ---------------------------------------------------------------------------------------


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``fcntl`` lock on ``<path>.lock`` (advisory, across processes)."""
    fd = os.open(_lock_path(path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(MAX_FILE_SIZE + 1)
    except FileNotFoundError:
        raise KeyringError(
            f"no keyring at {path}",
            hint="Run `medvault init` to create a home folder, or point --home / MEDVAULT_HOME at one.",
        ) from None
    except OSError as e:
        raise KeyringError(f"cannot read the keyring at {path}: {e.strerror}") from None


def save_keyring(
    path: Path, keyring: Keyring, passphrase: str, *, params: ScryptParams = DEFAULT_SCRYPT
) -> None:
    """Seal ``keyring`` under ``passphrase`` (new salt) and write it atomically with mode 0600.

    Running processes that hold a :class:`KeyringFile` for this path cannot reload a file sealed
    this way (new salt); use :meth:`KeyringFile.rotate` to change keys under the same passphrase.
    """
    data = keyring.seal(passphrase, params=params)
    try:
        with _locked(path):
            _write_atomic(path, data)
    except OSError as e:
        raise KeyringError(f"cannot write the keyring at {path}: {e.strerror}") from None


def load_keyring(path: Path, passphrase: str) -> Keyring:
    """Read and unseal the keyring at ``path`` (:class:`KeyringError` with a hint if it is missing)."""
    return Keyring.unseal(_read(path), passphrase)


class KeyringFile:
    """An opened keyring file that can be re-read later without the passphrase.

    It keeps the scrypt-derived key for the file's salt and parameters (never the passphrase).
    :meth:`reload` re-reads the file with it; :meth:`rotate` adds a KEK and reseals with the same
    salt, so other processes can reload too. Thread-safe.
    """

    def __init__(
        self, path: Path, keyring: Keyring, *, key: bytes, salt: bytes, params: ScryptParams
    ) -> None:
        self.path = path
        self._keyring = keyring
        self._key = key
        self._salt = salt
        self._params = params
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, passphrase: str) -> KeyringFile:
        outer = _SealedFile.parse(_read(path))
        key = _derive(passphrase, outer.salt, outer.params)
        return cls(path, outer.open(key), key=key, salt=outer.salt, params=outer.params)

    @property
    def keyring(self) -> Keyring:
        """The keyring as last read."""
        return self._keyring

    def _read_current(self) -> Keyring:
        outer = _SealedFile.parse(_read(self.path))
        if outer.salt != self._salt or outer.params != self._params:
            raise KeyringError(
                "the keyring was resealed with a new passphrase or new scrypt parameters",
                hint="Restart this process so it can open the keyring with the new passphrase.",
            )
        return outer.open(self._key)

    def reload(self) -> Keyring:
        """Re-read the file (after another process rotated keys) and return the new keyring."""
        with self._lock:
            self._keyring = self._read_current()
            return self._keyring

    def rotate(self) -> int:
        """Add a KEK to the keyring on disk and reseal it (same salt); returns the new KEK version.

        Holds the file lock across read-modify-write so two rotations cannot lose a key.
        """
        with self._lock, _locked(self.path):
            keyring = self._read_current()
            version = keyring.add_kek()
            _write_atomic(self.path, keyring._seal_with_key(self._key, self._salt, self._params))
            self._keyring = keyring
            return version

    def __repr__(self) -> str:
        return f"KeyringFile({str(self.path)!r}, {self._keyring!r})"


def open_keyring(path: Path, passphrase: str) -> tuple[Keyring, Callable[[], Keyring]]:
    """Open the keyring and return it with a ``reload()`` callable that needs no passphrase."""
    handle = KeyringFile.open(path, passphrase)
    return handle.keyring, handle.reload


def reseal_with_rotation(path: Path, passphrase: str) -> int:
    """Add a new current KEK to the keyring file at ``path``; returns its version (``keys rotate``)."""
    return KeyringFile.open(path, passphrase).rotate()
