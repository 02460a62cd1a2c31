"""Witness policies, entry bundles and patient receipts: the formats auditors and patients hold."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medvault.errors import InvalidInput, NoteInvalid, ProofInvalid
from medvault.ledger.bundle import decode_bundle, encode_bundle
from medvault.ledger.cosignature import Cosigner, add_signature_lines
from medvault.ledger.merkle import inclusion_proof, leaf_hash, root_from_leaf_hashes
from medvault.ledger.note import Signer, split_note
from medvault.ledger.policy import parse_policy
from medvault.ledger.receipt import ReceiptEntry, build_receipt, main, verify_receipt

ORIGIN = "hospital.example/ledger"
LOG = Signer.from_private_bytes(name=ORIGIN, seed=bytes(range(32)))
W = [Cosigner.from_private_bytes(name=f"w{i}.example/w", seed=bytes([i]) * 32) for i in range(3)]


def policy_text(quorum: int = 2) -> str:
    lines = [f"log {LOG.verifier_key_text()}  # the archive"]
    lines += [f"witness {w.verifier_key_text()} https://w{i}.example" for i, w in enumerate(W)]
    return "\n".join([*lines, "", f"quorum {quorum}"]) + "\n"


def cosigned(leaves: list[bytes], by: list[Cosigner]) -> bytes:
    hashes = [leaf_hash(e) for e in leaves]
    note = LOG.sign_checkpoint(ORIGIN, len(leaves), root_from_leaf_hashes(hashes))
    text = split_note(note)[0]
    return (
        add_signature_lines(note, "".join(w.cosign(text, 1_700_000_000) for w in by).encode()) if by else note
    )


def test_a_policy_round_trips_and_counts_cosignatures() -> None:
    policy = parse_policy(policy_text())
    assert parse_policy(policy.to_text()) == policy
    assert [w.url for w in policy.witnesses] == [
        "https://w0.example",
        "https://w1.example",
        "https://w2.example",
    ]
    leaves = [b"a", b"b", b"c"]
    assert policy.check(cosigned(leaves, W[:2])).met
    assert not policy.check(cosigned(leaves, W[:1])).met
    with pytest.raises(NoteInvalid):
        policy.check(
            Signer.from_private_bytes(name=ORIGIN, seed=bytes(32)).sign_checkpoint(ORIGIN, 0, bytes(32))
        )


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("log nonsense\nquorum 0\n", "policy line 1"),
        (f"log {LOG.verifier_key_text()}\nwitness {LOG.verifier_key_text()}\nquorum 1\n", "policy line 2"),
        (f"log {LOG.verifier_key_text()}\nquorum many\n", "policy line 2"),
        (f"log {LOG.verifier_key_text()}\nfrobnicate x\nquorum 0\n", "policy line 2"),
        (f"log {LOG.verifier_key_text()}\nquorum 3\n", "quorum 3"),
        (f"witness {W[0].verifier_key_text()}\nquorum 1\n", "no 'log"),
        (f"log {LOG.verifier_key_text()}\n", "no 'quorum"),
        (f"log {LOG.verifier_key_text()}\nwitness {W[0].verifier_key_text()} ftp://x\nquorum 1\n", "https"),
    ],
)
def test_a_bad_policy_names_the_line(text: str, line: str) -> None:
    with pytest.raises(InvalidInput, match=line):
        parse_policy(text)


@given(st.lists(st.binary(max_size=300), max_size=50))
def test_bundles_round_trip(entries: list[bytes]) -> None:
    body, n = encode_bundle(entries)
    assert n == len(entries) and decode_bundle(body) == entries


def test_a_bundle_stops_at_its_budget_and_a_truncated_one_is_refused() -> None:
    body, n = encode_bundle([b"x" * 100] * 10, budget=350)
    assert n == 3 and len(decode_bundle(body)) == 3
    for cut in (1, 5, len(body) - 1):
        with pytest.raises(InvalidInput):
            decode_bundle(body[:cut])


def receipt_for(leaves: list[bytes], wanted: list[int], by: list[Cosigner]) -> dict[str, object]:
    hashes = [leaf_hash(e) for e in leaves]
    entries = [ReceiptEntry(i, leaves[i], tuple(inclusion_proof(i, hashes))) for i in wanted]
    return build_receipt(origin=ORIGIN, issued="2026-12-03T00:00:00Z", checkpoint=cosigned(leaves, by),
                         entries=entries, pending=[len(leaves)])  # fmt: skip


LEAVES = [json.dumps({"n": i, "actor": {"id": f"u{i}"}, "action": "study.read"}).encode() for i in range(13)]


def test_a_receipt_verifies_and_any_change_to_an_entry_is_caught() -> None:
    policy = parse_policy(policy_text())
    doc = receipt_for(LEAVES, [1, 5, 12], W)
    verified = verify_receipt(doc, policy)
    assert [i for i, _ in verified.entries] == [1, 5, 12] and verified.pending == (13,)
    entries = doc["entries"]
    assert isinstance(entries, list)
    for field, value in (("index", 2), ("entry", base64.b64encode(b"{}").decode())):
        changed = json.loads(json.dumps(doc))
        changed["entries"][1][field] = value
        with pytest.raises(ProofInvalid):
            verify_receipt(changed, policy)


def test_a_receipt_below_the_quorum_or_for_another_log_is_refused() -> None:
    with pytest.raises(NoteInvalid, match="cosigned by 1"):
        verify_receipt(receipt_for(LEAVES, [0], W[:1]), parse_policy(policy_text()))
    doc = receipt_for(LEAVES, [0], W)
    doc["origin"] = "other.example/log"
    with pytest.raises(NoteInvalid, match="origin"):
        verify_receipt(doc, parse_policy(policy_text()))
    with pytest.raises(InvalidInput, match="not a medvault receipt"):
        verify_receipt({"format": "x"}, parse_policy(policy_text()))


def test_the_command_says_verified_or_not(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.txt").write_text(policy_text())
    (tmp_path / "r.json").write_text(json.dumps(receipt_for(LEAVES, [3], W)))
    assert main([str(tmp_path / "r.json"), "--policy", str(tmp_path / "p.txt")]) == 0
    assert "receipt verified: 1 accesses" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{not json")
    assert main([str(tmp_path / "bad.json"), "--policy", str(tmp_path / "p.txt")]) == 1
    assert "NOT verified: the receipt is not JSON" in capsys.readouterr().err
