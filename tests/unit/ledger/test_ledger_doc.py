"""docs/ledger.md: its stand-alone auditor snippet verifies what the ledger serves; its vectors are true."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from medvault.ledger import Ledger, Signer, canonical_bytes

from .conftest import ORIGIN, make_event

DOC = Path(__file__).resolve().parents[3] / "docs" / "ledger.md"


def snippet() -> dict[str, Any]:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1
    namespace: dict[str, Any] = {}
    exec(compile(blocks[0], str(DOC), "exec"), namespace)
    return namespace


def test_auditor_snippet(ledger_path: Path, signer: Signer) -> None:
    ns = snippet()
    with Ledger.open(ledger_path, signer=signer, origin=ORIGIN) as ledger:
        ledger.append_many([make_event(i) for i in range(5)])
        old = ledger.checkpoint()
        ledger.append_many([make_event(i) for i in range(5, 23)])
        new = ledger.checkpoint()
        key = ledger.verifier_key_text()
        size_old, root_old = ns["check_note"](old, key)
        size_new, root_new = ns["check_note"](new, key)
        assert (size_old, size_new) == (5, 23)
        ns["check_consistency"](ledger.consistency_proof(5, 23).to_json(), root_old, root_new)
        for i in range(23):
            ns["check_inclusion"](ledger.entry(i), ledger.inclusion_proof(i, 23).to_json(), root_new)
        with pytest.raises(ValueError):
            ns["check_inclusion"](ledger.entry(3), ledger.inclusion_proof(4, 23).to_json(), root_new)
        with pytest.raises(ValueError):
            ns["check_consistency"](ledger.consistency_proof(6, 23).to_json(), root_old, root_new)
        with pytest.raises(Exception, match=r".*"):
            ns["check_note"](new.replace(b"\n23\n", b"\n24\n"), key)


def test_auditor_snippet_counts_cosignatures(ledger_path: Path, signer: Signer) -> None:
    from medvault.ledger.cosignature import Cosigner, add_signature_lines
    from medvault.ledger.note import split_note

    ns = snippet()
    witnesses = [
        Cosigner.from_private_bytes(name=f"w{i}.example/w", seed=bytes([i + 1]) * 32) for i in range(3)
    ]
    with Ledger.open(ledger_path, signer=signer, origin=ORIGIN) as ledger:
        ledger.append_many([make_event(i) for i in range(4)])
        note = ledger.checkpoint()
    text = split_note(note)[0]
    cosigned = add_signature_lines(
        note, "".join(w.cosign(text, 1_700_000_000 + i) for i, w in enumerate(witnesses[:2])).encode()
    )
    keys = [w.verifier_key_text() for w in witnesses]
    assert ns["cosigners"](cosigned, keys) == {"w0.example/w": 1_700_000_000, "w1.example/w": 1_700_000_001}
    assert (
        ns["check_note"](cosigned, signer.verifier_key_text())[0] == 4
    )  # the log's own signature still checks
    forged = add_signature_lines(note, witnesses[2].cosign(text.replace("\n4\n", "\n5\n"), 7).encode())
    with pytest.raises(Exception, match=r".*"):
        ns["cosigners"](forged, keys)
    with pytest.raises(ValueError, match="cosignature key"):
        ns["cosigners"](cosigned, [signer.verifier_key_text()])


def test_doc_vectors_are_current(signer: Signer) -> None:
    text = DOC.read_text(encoding="utf-8")
    assert signer.verifier_key_text() in text
    assert canonical_bytes(make_event(3)).decode() in text
