"""medvault's tamper-evident ledger: an append-only RFC 9162 Merkle log of audit events.

* :mod:`~medvault.ledger.merkle` — pure RFC 9162 §2.1 hashing, inclusion and consistency proofs.
* :mod:`~medvault.ledger.note` — C2SP signed notes (Ed25519) and tlog checkpoints.
* :mod:`~medvault.ledger.events` — the audit event model and its RFC 8785 canonical bytes.
* :mod:`~medvault.ledger.store` — :class:`Ledger`, the durable SQLite log.
* :mod:`~medvault.ledger.verify` — :func:`verify_ledger`, the independent ``fsck``.

Errors raised (all from :mod:`medvault.errors`)::

    MedvaultError
    ├── InvalidInput        bad event field (PHI-looking detail, naive time …), bad proof request
    ├── NotFound            no such entry / no ledger file
    └── LedgerError         no signer, origin mismatch, group commit failed
        ├── ProofInvalid    a proof does not verify
        ├── NoteInvalid     a note / checkpoint is malformed or lacks a valid signature by the key
        └── LedgerTampered  stored tree nodes missing; VerifyReport.raise_for_problems()

Formats and the offline audit recipe: docs/ledger.md.
"""

from medvault.ledger.events import (
    Actor,
    ActorKind,
    AuditEvent,
    EventKind,
    ObjectRef,
    Outcome,
    canonical_bytes,
    parse_event,
)
from medvault.ledger.merkle import (
    ConsistencyProof,
    InclusionProof,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from medvault.ledger.note import Checkpoint, Signer, Verifier, parse_and_verify
from medvault.ledger.store import Ledger
from medvault.ledger.verify import VerifyReport, verify_ledger

__all__ = [
    "Actor",
    "ActorKind",
    "AuditEvent",
    "Checkpoint",
    "ConsistencyProof",
    "EventKind",
    "InclusionProof",
    "Ledger",
    "ObjectRef",
    "Outcome",
    "Signer",
    "Verifier",
    "VerifyReport",
    "canonical_bytes",
    "leaf_hash",
    "parse_and_verify",
    "parse_event",
    "verify_consistency",
    "verify_inclusion",
    "verify_ledger",
]
