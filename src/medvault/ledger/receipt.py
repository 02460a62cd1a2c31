"""Patient receipts: who saw a patient's images, provably, checkable without the archive.

A receipt (``medvault-receipt`` v1, JSON) lists the ledger entries of a patient's disclosure
report, each with its RFC 9162 inclusion proof to one checkpoint, and that checkpoint with the
witnesses' cosignatures. Whoever holds the log's key and the witnesses' keys (the witness policy)
can check, offline, that each listed access is in the log the witnesses cosigned — so the archive
cannot later show someone else a history without them, nor drop one of them::

    {"format": "medvault-receipt", "version": 1, "origin": "…", "issued": "2026-12-03T10:00:00Z",
     "checkpoint": "<the cosigned checkpoint note>",
     "entries": [{"index": 41, "entry": "<base64 of the leaf bytes>", "proof": ["<base64>", …]}, …],
     "pending": [57, …]}   # accesses after the checkpoint: not yet witnessed, ask again later

The verifier, ``medvault-receipt-verify RECEIPT --policy POLICY``, imports nothing of the archive
(this module, the note and Merkle code and the cryptography package) and prints each access.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from medvault.errors import InvalidInput, MedvaultError, NoteInvalid
from medvault.ledger.merkle import leaf_hash, verify_inclusion
from medvault.ledger.policy import PolicyResult, WitnessPolicy, parse_policy

__all__ = [
    "MAX_RECEIPT_BYTES",
    "RECEIPT_FORMAT",
    "ReceiptEntry",
    "VerifiedReceipt",
    "build_receipt",
    "main",
    "verify_receipt",
]

RECEIPT_FORMAT = "medvault-receipt"
MAX_RECEIPT_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class ReceiptEntry:
    index: int
    entry: bytes  # the leaf bytes, exactly as hashed
    proof: tuple[bytes, ...]


@dataclass(frozen=True)
class VerifiedReceipt:
    witnessed: PolicyResult
    entries: tuple[tuple[int, dict[str, Any]], ...]  # (index, the decoded event)
    pending: tuple[int, ...]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def build_receipt(
    *, origin: str, issued: str, checkpoint: bytes, entries: Sequence[ReceiptEntry], pending: Sequence[int]
) -> dict[str, Any]:
    return {
        "format": RECEIPT_FORMAT,
        "version": 1,
        "origin": origin,
        "issued": issued,
        "checkpoint": checkpoint.decode("utf-8"),
        "entries": [
            {"index": e.index, "entry": _b64(e.entry), "proof": [_b64(h) for h in e.proof]} for e in entries
        ],
        "pending": list(pending),
    }


def _field(doc: dict[str, Any], name: str, kind: type) -> Any:
    value = doc.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidInput(f"receipt field {name!r} is missing or not a {kind.__name__}")
    return value


def verify_receipt(doc: object, policy: WitnessPolicy) -> VerifiedReceipt:
    """Check a receipt against a policy the reader trusts; raises :class:`InvalidInput` /
    :class:`NoteInvalid` / :class:`~medvault.errors.ProofInvalid` naming what failed."""
    if not isinstance(doc, dict) or doc.get("format") != RECEIPT_FORMAT or doc.get("version") != 1:
        raise InvalidInput("not a medvault receipt (format medvault-receipt, version 1)")
    origin = _field(doc, "origin", str)
    witnessed = policy.check(_field(doc, "checkpoint", str).encode("utf-8"), origin=origin)
    if not witnessed.met:
        raise NoteInvalid(
            f"the checkpoint is cosigned by {len(witnessed.cosigned_by)} of the policy's witnesses; "
            f"the policy needs {witnessed.quorum}"
        )
    size, root = witnessed.checkpoint.size, witnessed.checkpoint.root_hash
    out: list[tuple[int, dict[str, Any]]] = []
    for n, raw in enumerate(_field(doc, "entries", list)):
        if not isinstance(raw, dict):
            raise InvalidInput(f"receipt entry {n} is not an object")
        index = _field(raw, "index", int)
        try:
            entry = base64.b64decode(_field(raw, "entry", str), validate=True)
            proof = [base64.b64decode(h, validate=True) for h in _field(raw, "proof", list)]
        except (binascii.Error, ValueError, TypeError):
            raise InvalidInput(f"receipt entry {n}: entry or proof is not base64") from None
        verify_inclusion(leaf_hash(entry), index, size, proof, root)
        try:
            event = json.loads(entry)
        except ValueError:
            raise InvalidInput(f"receipt entry {n} is not a ledger event") from None
        out.append((index, event if isinstance(event, dict) else {}))
    pending = _field(doc, "pending", list)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in pending):
        raise InvalidInput("receipt field 'pending' must list entry indices")
    return VerifiedReceipt(witnessed, tuple(out), tuple(pending))


def _describe(event: dict[str, Any]) -> str:
    raw_actor, raw_obj = event.get("actor"), event.get("object")
    actor: dict[str, Any] = raw_actor if isinstance(raw_actor, dict) else {}
    obj: dict[str, Any] = raw_obj if isinstance(raw_obj, dict) else {}
    what = f"{obj.get('type', '')} {obj.get('id', '')}".strip()
    fields = (
        event.get("time", "?"),
        actor.get("id", "?"),
        event.get("action", "?"),
        event.get("outcome", "?"),
    )
    return "  ".join(str(f) for f in (*fields, what))


def main(argv: Sequence[str] | None = None) -> int:
    """``medvault-receipt-verify``: check a patient receipt offline with a witness policy."""
    parser = argparse.ArgumentParser(
        prog="medvault-receipt-verify",
        description="Check a medvault patient receipt offline: every listed access is in the log its "
        "witnesses cosigned. Needs only the receipt and the witness policy (the log's and witnesses' keys).",
    )
    parser.add_argument("receipt", help="the receipt file (JSON)")
    parser.add_argument(
        "--policy", required=True, help="the witness policy you trust (not one from the receipt)"
    )
    args = parser.parse_args(argv)
    try:
        with open(args.policy, encoding="utf-8") as fh:
            policy = parse_policy(fh.read())
        with open(args.receipt, "rb") as fh:
            data = fh.read(MAX_RECEIPT_BYTES + 1)
        if len(data) > MAX_RECEIPT_BYTES:
            raise InvalidInput("the receipt is larger than 256 MiB")
        try:
            doc = json.loads(data)
        except ValueError:
            raise InvalidInput("the receipt is not JSON") from None
        result = verify_receipt(doc, policy)
    except (OSError, MedvaultError) as exc:
        message = exc.message if isinstance(exc, MedvaultError) else f"{exc.strerror}: {exc.filename}"
        print(f"receipt NOT verified: {message}", file=sys.stderr)
        return 1
    cp = result.witnessed.checkpoint
    names = ", ".join(c.name for c in result.witnessed.cosigned_by)
    print(f"receipt verified: {len(result.entries)} accesses are in log {cp.origin} at size {cp.size},")
    print(f"cosigned by {names} (the policy needs {result.witnessed.quorum}).")
    for index, event in result.entries:
        print(f"  #{index}  {_describe(event)}")
    if result.pending:
        print(
            f"{len(result.pending)} later accesses are not witnessed yet "
            f"(entries {list(result.pending)[:10]}): ask again later."
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
