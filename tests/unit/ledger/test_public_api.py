"""The public surface of medvault.ledger is what we meant it to be."""

from __future__ import annotations

import medvault.ledger as ledger


def test_public_names() -> None:
    assert sorted(ledger.__all__) == sorted(
        [
            "Actor", "ActorKind", "AuditEvent", "Checkpoint", "ConsistencyProof", "EventKind",
            "InclusionProof", "Ledger", "ObjectRef", "Outcome", "Signer", "Verifier", "VerifyReport",
            "canonical_bytes", "leaf_hash", "parse_and_verify", "parse_event", "verify_consistency",
            "verify_inclusion", "verify_ledger",
        ]
    )  # fmt: skip
    for name in ledger.__all__:
        assert getattr(ledger, name) is not None
