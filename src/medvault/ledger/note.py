"""C2SP signed notes with Ed25519 signatures, and C2SP tlog checkpoints carried in them.

SPEC: https://c2sp.org/signed-note — a note is UTF-8 text ending in a newline, then a blank line,
then one or more signature lines ``— <key name> <base64(key ID || signature)>``. For Ed25519
(signature type 0x01) the key ID is the first 4 bytes of SHA-256(name || 0x0A || 0x01 || public
key) and the verifier key text is ``<name>+<hex key ID>+<base64(0x01 || public key)>``.

SPEC: https://c2sp.org/tlog-checkpoint — the note text is the origin line, the decimal tree size,
the base64 root hash, then optional non-empty extension lines.

A verifier ignores signatures by keys it does not know and requires one valid signature by the
key it was given; a signature that claims that key but does not verify is an error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from medvault.errors import InvalidInput, NoteInvalid

__all__ = [
    "ALG_ED25519",
    "MAX_SIGNATURES",
    "Checkpoint",
    "Signer",
    "Verifier",
    "format_checkpoint",
    "key_id",
    "open_note",
    "parse_and_verify",
    "parse_checkpoint",
    "parse_key_text",
    "parse_signature_line",
    "raw_public",
    "signature_line",
    "split_note",
]

ALG_ED25519 = 0x01  # SPEC signed-note: signature type identifier of Ed25519
MAX_SIGNATURES = 100  # a bound on work per note (the Go reference implementation uses the same)
_SIG_PREFIX = "\u2014 "  # SPEC signed-note: a signature line starts with an em dash and a space
_KEY_ID_SIZE = 4
_ROOT_SIZE = 32
_MAX_TREE_SIZE = 2**64 - 1
_SIZE_RE = re.compile(r"(0|[1-9][0-9]{0,19})\Z")
_CONTROL_RE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


def _check_key_name(name: str) -> None:
    # SPEC signed-note: key names are non-empty and contain no Unicode spaces and no "+".
    if not name or "+" in name or any(ch.isspace() for ch in name) or _CONTROL_RE.search(name):
        raise InvalidInput(f"invalid note key name {name!r}: non-empty, no spaces, no '+'")


def key_id(name: str, public_key: bytes, alg: int = ALG_ED25519) -> bytes:
    """SPEC signed-note: SHA-256(name || 0x0A || signature type || public key)[:4]."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([alg]) + public_key).digest()[:_KEY_ID_SIZE]


def parse_key_text(text: str, alg: int) -> tuple[str, bytes, Ed25519PublicKey]:
    """Parse a verifier key ``<name>+<hex key ID>+<base64(alg || 32-byte Ed25519 key)>``.

    ``alg`` is the signature type the caller trusts the key for (0x01 note signatures, 0x04
    cosignatures); a key of another type, or whose key ID does not match, is refused.
    """
    parts = text.strip().split("+", 2)
    if len(parts) != 3:
        raise NoteInvalid("verifier key text must be <name>+<hex key id>+<base64 key>")
    name, hex_id, b64 = parts
    try:
        _check_key_name(name)
    except InvalidInput as exc:
        raise NoteInvalid(exc.message) from None
    try:
        kid = bytes.fromhex(hex_id)
        raw = base64.b64decode(b64, validate=True)
    except (ValueError, binascii.Error):
        raise NoteInvalid("verifier key text: key id or key is not valid hex/base64") from None
    if len(hex_id) != 2 * _KEY_ID_SIZE or len(raw) != 33 or raw[0] != alg:
        raise NoteInvalid(f"verifier key text: not an Ed25519 key of type 0x{alg:02x} (32 bytes)")
    if key_id(name, raw[1:], alg) != kid:
        raise NoteInvalid("verifier key text: key id does not match the name and key")
    return name, kid, Ed25519PublicKey.from_public_bytes(raw[1:])


def raw_public(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key."""
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class Verifier:
    """An Ed25519 note verifier: key name, 4-byte key ID and public key."""

    name: str
    key_id: bytes
    public_key: Ed25519PublicKey

    @classmethod
    def from_key_text(cls, text: str) -> Verifier:
        """Parse ``<name>+<hex key ID>+<base64(0x01 || public key)>``; the key ID must match."""
        name, key_id, public_key = parse_key_text(text, ALG_ED25519)
        return cls(name, key_id, public_key)

    def key_text(self) -> str:
        raw = bytes([ALG_ED25519]) + raw_public(self.public_key)
        return f"{self.name}+{self.key_id.hex()}+{base64.b64encode(raw).decode('ascii')}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            self.public_key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


class Signer:
    """Signs notes and checkpoints with an Ed25519 private key under a key name.

    The private key belongs in medvault's sealed keyring; it is never printed (see ``repr``).
    """

    def __init__(self, *, name: str, private_key: Ed25519PrivateKey) -> None:
        _check_key_name(name)
        self.name = name
        self._key = private_key
        self.verifier = Verifier(
            name, key_id(name, raw_public(private_key.public_key())), private_key.public_key()
        )

    @classmethod
    def from_private_bytes(cls, *, name: str, seed: bytes) -> Signer:
        """From the 32-byte raw Ed25519 private key (seed), as stored in the keyring."""
        if len(seed) != 32:
            raise InvalidInput("an Ed25519 private key is 32 bytes")
        return cls(name=name, private_key=Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def generate(cls, *, name: str) -> Signer:
        return cls(name=name, private_key=Ed25519PrivateKey.generate())

    @property
    def key_id(self) -> bytes:
        return self.verifier.key_id

    def verifier_key_text(self) -> str:
        """The note verifier key: ``<name>+<hex key ID>+<base64(0x01 || public key)>``."""
        return self.verifier.key_text()

    def sign_note(self, text: str) -> bytes:
        """The signed note: ``text`` (which must end in a newline), a blank line, our signature."""
        _check_note_text(text)
        body = text.encode("utf-8")
        return body + b"\n" + signature_line(self.name, self.key_id + self._key.sign(body)).encode()

    def sign_checkpoint(
        self, origin: str, size: int, root_hash: bytes, extensions: tuple[str, ...] = ()
    ) -> bytes:
        """A C2SP tlog checkpoint for ``size`` and ``root_hash``, as a signed note."""
        return self.sign_note(format_checkpoint(origin, size, root_hash, extensions))

    def __repr__(self) -> str:
        return f"Signer(name={self.name!r}, key_id={self.key_id.hex()}, <private key redacted>)"


def _check_note_text(text: str) -> None:
    if not text.endswith("\n"):
        raise InvalidInput("note text must end with a newline")
    if _CONTROL_RE.search(text):
        raise InvalidInput("note text must not contain control characters other than newline")


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """A verified C2SP tlog checkpoint."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()


def format_checkpoint(origin: str, size: int, root_hash: bytes, extensions: tuple[str, ...] = ()) -> str:
    """The checkpoint note text (unsigned)."""
    if not origin or "\n" in origin or "+" in origin or any(ch.isspace() for ch in origin):
        raise InvalidInput(f"invalid checkpoint origin {origin!r}: non-empty, no spaces, no '+'")
    if not 0 <= size <= _MAX_TREE_SIZE:
        raise InvalidInput(f"tree size {size} out of range")
    if len(root_hash) != _ROOT_SIZE:
        raise InvalidInput("a root hash is 32 bytes")
    for ext in extensions:
        if not ext or "\n" in ext:
            raise InvalidInput("checkpoint extension lines must be non-empty single lines")
    lines = [origin, str(size), base64.b64encode(root_hash).decode("ascii"), *extensions]
    return "\n".join(lines) + "\n"


def split_note(note: bytes) -> tuple[str, list[tuple[str, bytes]]]:
    """A note's text (ending in a newline) and its signature lines as (key name, key ID || signature).

    Checks the framing only; no signature is verified here.
    """
    try:
        decoded = note.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteInvalid("note is not valid UTF-8") from None
    split = decoded.rfind("\n\n")
    if split < 0:
        raise NoteInvalid("note has no blank line before its signatures")
    text, sig_block = decoded[: split + 1], decoded[split + 2 :]
    if _CONTROL_RE.search(text):
        raise NoteInvalid("note text contains control characters")
    if not sig_block.endswith("\n"):
        raise NoteInvalid("note signatures must end with a newline")
    lines = sig_block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteInvalid(f"note has more than {MAX_SIGNATURES} signatures")
    return text, [parse_signature_line(line) for line in lines]


def parse_signature_line(line: str) -> tuple[str, bytes]:
    """``— <name> <base64(key ID || signature)>`` -> (name, key ID || signature)."""
    if not line.startswith(_SIG_PREFIX):
        raise NoteInvalid("malformed signature line (expected '\u2014 <name> <signature>')")
    fields = line[len(_SIG_PREFIX) :].split(" ")
    if len(fields) != 2 or not fields[0]:
        raise NoteInvalid("malformed signature line (expected '\u2014 <name> <signature>')")
    name, b64 = fields
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise NoteInvalid("a note signature is not valid base64") from None
    if len(raw) < _KEY_ID_SIZE + 1:
        raise NoteInvalid("a note signature is too short")
    return name, raw


def signature_line(name: str, key_id_and_signature: bytes) -> str:
    """One note signature line, newline included."""
    return f"{_SIG_PREFIX}{name} {base64.b64encode(key_id_and_signature).decode('ascii')}\n"


def open_note(note: bytes, verifier: Verifier) -> str:
    """Verify a signed note by ``verifier`` and return its text (ending in a newline).

    Signatures by other keys are ignored; at least one valid signature by ``verifier`` is
    required; a signature with its name and key ID that fails to verify is an error.
    """
    text, signatures = split_note(note)
    message = text.encode("utf-8")
    verified = False
    for name, raw in signatures:
        if name != verifier.name or raw[:_KEY_ID_SIZE] != verifier.key_id:
            continue  # SPEC: signatures from unknown keys are ignored
        if not verifier.verify(message, raw[_KEY_ID_SIZE:]):
            raise NoteInvalid(f"the signature by {name} does not verify")
        verified = True
    if not verified:
        raise NoteInvalid(f"note has no signature by {verifier.name}+{verifier.key_id.hex()}")
    return text


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse checkpoint note text (already verified) into a :class:`Checkpoint`."""
    lines = text.split("\n")
    if lines[-1] != "" or len(lines) < 4:
        raise NoteInvalid("checkpoint needs origin, size and root hash lines")
    origin, size_s, root_s, *extensions = lines[:-1]
    if not origin:
        raise NoteInvalid("checkpoint origin line is empty")
    if not _SIZE_RE.match(size_s) or int(size_s) > _MAX_TREE_SIZE:
        raise NoteInvalid("checkpoint tree size is not a decimal integer without leading zeros")
    try:
        root_hash = base64.b64decode(root_s, validate=True)
    except (binascii.Error, ValueError):
        raise NoteInvalid("checkpoint root hash is not valid base64") from None
    if len(root_hash) != _ROOT_SIZE or base64.b64encode(root_hash).decode("ascii") != root_s:
        raise NoteInvalid("checkpoint root hash is not 32 bytes of canonical base64")
    if any(not ext for ext in extensions):
        raise NoteInvalid("checkpoint extension lines must be non-empty")
    return Checkpoint(origin=origin, size=int(size_s), root_hash=root_hash, extensions=tuple(extensions))


def parse_and_verify(note: bytes, verifier_key: str | Verifier, *, origin: str | None = None) -> Checkpoint:
    """Verify a signed checkpoint note against a verifier key and parse it.

    ``origin``, when given, must equal the checkpoint's origin line. Raises :class:`NoteInvalid`.
    """
    verifier = verifier_key if isinstance(verifier_key, Verifier) else Verifier.from_key_text(verifier_key)
    checkpoint = parse_checkpoint(open_note(note, verifier))
    if origin is not None and checkpoint.origin != origin:
        raise NoteInvalid(f"checkpoint is for origin {checkpoint.origin!r}, not {origin!r}")
    return checkpoint
