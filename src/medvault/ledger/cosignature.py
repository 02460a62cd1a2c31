"""C2SP tlog-cosignature v1 (Ed25519): a witness's timestamped statement about a checkpoint.

SPEC: https://c2sp.org/tlog-cosignature — a cosignature is a note signature line on the
checkpoint whose key ID is SHA-256(name || 0x0A || 0x04 || public key)[:4] and whose signature is
``u64 timestamp (big-endian) || Ed25519 signature`` over::

    cosignature/v1
    time <timestamp>
    <the checkpoint's note text, final newline included>

A v1 cosignature says: as of that time, the largest consistent tree the witness has seen for the
log named by the origin line has this root hash. The verifier key text of a cosigner is
``<name>+<hex key ID>+<base64(0x04 || public key)>``; such a key can never verify a log's own
signature (type 0x01), nor the other way round.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from medvault.errors import InvalidInput, NoteInvalid
from medvault.ledger.note import (
    key_id,
    parse_key_text,
    parse_signature_line,
    raw_public,
    signature_line,
    split_note,
)

__all__ = [
    "ALG_COSIGNATURE_V1",
    "Cosignature",
    "CosignatureVerifier",
    "Cosigner",
    "add_signature_lines",
    "cosignatures",
]

ALG_COSIGNATURE_V1 = 0x04  # SPEC tlog-cosignature: signature type of Ed25519 cosignature/v1
_MAX_TIMESTAMP = 2**63 - 1
_TIMESTAMPED_SIZE = 8 + 64


def _message(checkpoint_text: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n".encode() + checkpoint_text.encode("utf-8")


@dataclass(frozen=True)
class Cosignature:
    """A cosignature that verified: who made it and when (POSIX seconds, as the witness says)."""

    name: str
    key_id: bytes
    timestamp: int


@dataclass(frozen=True)
class CosignatureVerifier:
    """A witness's cosignature verifier key: name, key ID and Ed25519 public key."""

    name: str
    key_id: bytes
    public_key: Ed25519PublicKey

    @classmethod
    def from_key_text(cls, text: str) -> CosignatureVerifier:
        """Parse ``<name>+<hex key ID>+<base64(0x04 || public key)>`` (the key ID must match)."""
        name, kid, public_key = parse_key_text(text, ALG_COSIGNATURE_V1)
        return cls(name, kid, public_key)

    def key_text(self) -> str:
        return _key_text(self.name, raw_public(self.public_key))

    def verify(self, checkpoint_text: str, key_id_and_signature: bytes) -> Cosignature:
        """Check one signature line's payload; raises :class:`NoteInvalid` if it is not ours or bad."""
        if key_id_and_signature[:4] != self.key_id:
            raise NoteInvalid(f"not a cosignature by {self.name}")
        body = key_id_and_signature[4:]
        if len(body) != _TIMESTAMPED_SIZE:
            raise NoteInvalid(f"the cosignature by {self.name} is not 8 + 64 bytes")
        (timestamp,) = struct.unpack(">Q", body[:8])
        if timestamp > _MAX_TIMESTAMP:
            raise NoteInvalid(f"the cosignature by {self.name} has a timestamp beyond 2^63 - 1")
        try:
            self.public_key.verify(body[8:], _message(checkpoint_text, timestamp))
        except InvalidSignature:
            raise NoteInvalid(f"the cosignature by {self.name} does not verify") from None
        return Cosignature(self.name, self.key_id, timestamp)


class Cosigner:
    """A witness's signing half. The private key stays here (never in ``repr``)."""

    def __init__(self, *, name: str, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        # Parsing our own key text validates the name exactly as a verifier will.
        public = raw_public(private_key.public_key())
        self.verifier = CosignatureVerifier.from_key_text(_key_text(name, public))
        self.name = name

    @classmethod
    def from_private_bytes(cls, *, name: str, seed: bytes) -> Cosigner:
        if len(seed) != 32:
            raise InvalidInput("an Ed25519 private key is 32 bytes")
        return cls(name=name, private_key=Ed25519PrivateKey.from_private_bytes(seed))

    def verifier_key_text(self) -> str:
        return self.verifier.key_text()

    def cosign(self, checkpoint_text: str, timestamp: int) -> str:
        """The cosignature line (newline included) for a checkpoint's note text at ``timestamp``."""
        if not 0 <= timestamp <= _MAX_TIMESTAMP:
            raise InvalidInput("a cosignature timestamp is 0 .. 2^63 - 1")
        signature = self._key.sign(_message(checkpoint_text, timestamp))
        return signature_line(self.name, self.verifier.key_id + struct.pack(">Q", timestamp) + signature)

    def __repr__(self) -> str:
        return f"Cosigner(name={self.name!r}, key_id={self.verifier.key_id.hex()}, <private key redacted>)"


def _key_text(name: str, public: bytes) -> str:
    kid = key_id(name, public, ALG_COSIGNATURE_V1)
    return f"{name}+{kid.hex()}+{base64.b64encode(bytes([ALG_COSIGNATURE_V1]) + public).decode('ascii')}"


def cosignatures(note: bytes, verifiers: Iterable[CosignatureVerifier]) -> list[Cosignature]:
    """The valid cosignatures on a signed checkpoint ``note`` by the given witnesses.

    Lines by keys not among ``verifiers`` are ignored (SPEC); a line that claims a known witness's
    name and key ID but does not verify raises :class:`NoteInvalid`: someone forged or damaged it.
    """
    text, signatures = split_note(note)
    known = {(v.name, v.key_id): v for v in verifiers}
    found: dict[tuple[str, bytes], Cosignature] = {}
    for name, raw in signatures:
        verifier = known.get((name, raw[:4]))
        if verifier is None:
            continue
        cosig = verifier.verify(text, raw)
        previous = found.get((name, raw[:4]))
        if previous is None or cosig.timestamp > previous.timestamp:
            found[(name, raw[:4])] = cosig
    return list(found.values())


def add_signature_lines(note: bytes, lines: bytes) -> bytes:
    """``note`` with the signature ``lines`` (a witness's answer) appended, duplicates dropped.

    The lines are framed-checked (each ``— <name> <base64>``) but not verified: callers verify the
    result with :func:`cosignatures` against the witnesses they trust.
    """
    text, _ = split_note(note)
    try:
        decoded = lines.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteInvalid("signature lines are not valid UTF-8") from None
    if not decoded.endswith("\n"):
        raise NoteInvalid("signature lines must end with a newline")
    existing = note.decode("utf-8")[len(text) + 1 :].splitlines()
    merged = list(existing)
    for line in decoded[:-1].split("\n"):
        parse_signature_line(line)
        if line not in merged:
            merged.append(line)
    return (text + "\n" + "".join(f"{line}\n" for line in merged)).encode("utf-8")
