"""The witness's decision, pure: C2SP tlog-witness ``add-checkpoint`` without the HTTP or the disk.

SPEC: https://c2sp.org/tlog-witness — the request body is ``old <size>\\n``, at most 63 base64
consistency-proof lines, an empty line, then the signed checkpoint. The witness answers with its
cosignature (C2SP tlog-cosignature) only if the checkpoint is signed by a key it trusts for the
origin, ``old`` is the size it last cosigned for that origin (0 if none), and the proof shows the
new tree extends that one; it then records the new checkpoint *before* answering.

:func:`check_add_checkpoint` is the whole state machine: (request, trusted logs, what was last
cosigned) -> the checkpoint to record, or :class:`~medvault.errors.WitnessRefused` with the
protocol's status code. It never accepts two roots for one size, nor a smaller tree than the one
it holds; the store (:mod:`medvault.ledger.witness_store`) runs it inside one transaction, so a
check and its update cannot interleave with another request's (the spec's rollback race).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from medvault.errors import NoteInvalid, ProofInvalid, WitnessRefused
from medvault.ledger.merkle import EMPTY_ROOT, verify_consistency
from medvault.ledger.note import Checkpoint, Verifier, open_note, parse_checkpoint, split_note

__all__ = [
    "MAX_PROOF_LINES",
    "MAX_REQUEST_BYTES",
    "AddCheckpoint",
    "Recorded",
    "check_add_checkpoint",
    "check_signed",
    "format_add_checkpoint",
    "parse_add_checkpoint",
]

MAX_PROOF_LINES = 63  # SPEC: a client MUST NOT send more
#: A checkpoint with its signatures, 63 proof lines and the old line fit many times in this; a
#: witness refuses a larger body before reading it.
MAX_REQUEST_BYTES = 64 * 1024
_SIZE_RE = re.compile(r"old (0|[1-9][0-9]{0,19})\Z")


@dataclass(frozen=True)
class AddCheckpoint:
    """An ``add-checkpoint`` request: the size last cosigned, a consistency proof, the note."""

    old_size: int
    proof: tuple[bytes, ...]
    note: bytes


@dataclass(frozen=True)
class Recorded:
    """What a witness holds for one log: the latest checkpoint it cosigned."""

    origin: str
    size: int
    root_hash: bytes
    note: bytes  # the checkpoint as submitted (the log's signatures), without our cosignature


def format_add_checkpoint(old_size: int, proof: Sequence[bytes], note: bytes) -> bytes:
    """The request body for ``POST <prefix>/add-checkpoint``."""
    lines = [f"old {old_size}", *(base64.b64encode(h).decode("ascii") for h in proof)]
    return ("\n".join(lines) + "\n\n").encode("ascii") + note


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    """Parse a request body; malformed framing is a 400 refusal."""
    if len(body) > MAX_REQUEST_BYTES:
        raise WitnessRefused(400, f"request body over {MAX_REQUEST_BYTES} bytes")
    head, sep, note = body.partition(b"\n\n")
    if not sep:
        raise WitnessRefused(400, "request has no empty line before the checkpoint")
    try:
        lines = head.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise WitnessRefused(400, "the old-size and proof lines must be ASCII") from None
    match = _SIZE_RE.match(lines[0])
    if match is None or int(match.group(1)) > 2**64 - 1:
        raise WitnessRefused(400, "the first line must be 'old <size>' (decimal, no leading zeros)")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise WitnessRefused(400, f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof = []
    for line in lines[1:]:
        try:
            digest = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raise WitnessRefused(400, "a consistency proof line is not base64") from None
        if len(digest) != 32:
            raise WitnessRefused(400, "a consistency proof line is not a 32-byte hash")
        proof.append(digest)
    return AddCheckpoint(int(match.group(1)), tuple(proof), note)


def _origin_of(note: bytes) -> str:
    try:
        text, _ = split_note(note)
    except NoteInvalid as exc:
        raise WitnessRefused(400, f"malformed checkpoint: {exc.message}") from None
    return text.split("\n", 1)[0]


def _verified(note: bytes, keys: Sequence[Verifier]) -> Checkpoint:
    for verifier in keys:
        try:
            text = open_note(note, verifier)
        except NoteInvalid:
            continue
        try:
            return parse_checkpoint(text)
        except NoteInvalid as exc:
            raise WitnessRefused(400, f"malformed checkpoint: {exc.message}") from None
    raise WitnessRefused(403, "the checkpoint has no valid signature by a key trusted for its origin")


def check_signed(request: AddCheckpoint, logs: Mapping[str, Sequence[Verifier]]) -> Checkpoint:
    """The checks that need no state (404 unknown log, 403 no trusted signature, 400 malformed):
    a witness runs them before it takes its write lock, so junk never waits for, or holds, it."""
    origin = _origin_of(request.note)
    keys = logs.get(origin)
    if not keys:
        raise WitnessRefused(404, "unknown log origin")
    checkpoint = _verified(request.note, keys)
    if request.old_size > checkpoint.size:
        raise WitnessRefused(400, f"old size {request.old_size} is above the checkpoint's {checkpoint.size}")
    return checkpoint


def check_add_checkpoint(
    request: AddCheckpoint, logs: Mapping[str, Sequence[Verifier]], current: Recorded | None
) -> Recorded:
    """Decide one ``add-checkpoint``: the checkpoint to record, or :class:`WitnessRefused`.

    ``logs`` maps each known origin to the keys trusted to sign its checkpoints; ``current`` is
    what was last cosigned for the request's origin (``None``: never). The checks run in the
    spec's order, so a client learns the most useful reason first.
    """
    checkpoint = check_signed(request, logs)
    origin = checkpoint.origin
    held = 0 if current is None else current.size
    if request.old_size != held:
        raise WitnessRefused(
            409, f"old size {request.old_size} is not the size last cosigned ({held})", latest_size=held
        )
    if checkpoint.size == 0 and checkpoint.root_hash != EMPTY_ROOT:
        raise WitnessRefused(422, "an empty tree has the empty root")
    if current is not None and checkpoint.size == current.size:
        if request.proof:
            raise WitnessRefused(422, "a consistency proof between equal sizes must be empty")
        if checkpoint.root_hash != current.root_hash:
            raise WitnessRefused(409, f"a different root for size {checkpoint.size}, which was cosigned")
    else:
        old_root = EMPTY_ROOT if current is None else current.root_hash
        try:
            verify_consistency(held, checkpoint.size, old_root, checkpoint.root_hash, request.proof)
        except ProofInvalid as exc:
            raise WitnessRefused(422, f"consistency proof does not verify: {exc.message}") from None
    return Recorded(origin=origin, size=checkpoint.size, root_hash=checkpoint.root_hash, note=request.note)
