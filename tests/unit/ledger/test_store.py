"""The SQLite ledger: roots and proofs for every size against the pure functions, threads, processes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medvault.errors import InvalidInput, LedgerError, NotFound
from medvault.ledger import (
    EventKind,
    Ledger,
    Signer,
    canonical_bytes,
    merkle,
    parse_and_verify,
    verify_ledger,
)
from medvault.ledger.merkle import leaf_hash

from .conftest import ORIGIN, make_event

CHILD = Path(__file__).with_name("ledger_child.py")


def check_against_pure(ledger: Ledger, leaves: list[bytes]) -> None:
    hashes = [leaf_hash(d) for d in leaves]
    n = len(leaves)
    assert ledger.size == n
    for m in range(n + 1):
        root_m = merkle.root_from_leaf_hashes(hashes[:m])
        assert ledger.root(m) == root_m
        for i in range(m):
            proof = ledger.inclusion_proof(i, m)
            assert list(proof.hashes) == merkle.inclusion_proof(i, hashes[:m])
            proof.verify(hashes[i], root_m)
        proof_c = ledger.consistency_proof(m, n)
        if m:
            assert list(proof_c.hashes) == merkle.consistency_proof(m, hashes)
        proof_c.verify(root_m, merkle.root_from_leaf_hashes(hashes))


def test_every_size_up_to_40(ledger: Ledger) -> None:
    events = [make_event(i) for i in range(40)]
    assert ledger.root(0) == merkle.EMPTY_ROOT
    assert [ledger.append(e) for e in events[:5]] == [0, 1, 2, 3, 4]
    assert ledger.append_many(events[5:40]) == list(range(5, 40))
    leaves = [canonical_bytes(e) for e in events]
    assert [ledger.entry(i) for i in range(40)] == leaves
    assert ledger.entries(38, 100) == leaves[38:]
    check_against_pure(ledger, leaves)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.integers(1, 40), min_size=1, max_size=6))
def test_batches_of_any_shape(tmp_path: Path, signer: Signer, chunks: list[int]) -> None:
    path = tmp_path / f"l{time.monotonic_ns()}.sqlite"
    leaves: list[bytes] = []
    with Ledger.open(path, signer=signer, origin=ORIGIN) as ledger:
        for c in chunks:
            events = [make_event(len(leaves) + j) for j in range(c)]
            ledger.append_many(events)
            leaves += [canonical_bytes(e) for e in events]
        hashes = [leaf_hash(d) for d in leaves]
        n = len(leaves)
        assert ledger.root() == merkle.root_from_leaf_hashes(hashes)
        for i in range(0, n, 7):
            assert list(ledger.inclusion_proof(i, n).hashes) == merkle.inclusion_proof(i, hashes)
        for m in range(1, n, 5):
            assert list(ledger.consistency_proof(m, n).hashes) == merkle.consistency_proof(m, hashes)


def test_bad_requests(ledger: Ledger) -> None:
    ledger.append_many([make_event(i) for i in range(3)])
    with pytest.raises(NotFound):
        ledger.entry(3)
    with pytest.raises(InvalidInput):
        ledger.root(4)
    with pytest.raises(InvalidInput):
        ledger.inclusion_proof(3, 3)
    with pytest.raises(InvalidInput):
        ledger.inclusion_proof(0, 4)
    with pytest.raises(InvalidInput):
        ledger.consistency_proof(2, 4)
    with pytest.raises(InvalidInput):
        ledger.consistency_proof(3, 2)
    assert ledger.consistency_proof(0, 3).hashes == ()
    assert ledger.append_many([]) == []


def test_checkpoints_are_signed_and_kept(ledger: Ledger, ledger_path: Path, signer: Signer) -> None:
    assert ledger.latest_checkpoint() is None
    first = ledger.checkpoint()
    cp0 = parse_and_verify(first, signer.verifier_key_text(), origin=ORIGIN)
    assert (cp0.size, cp0.root_hash) == (0, merkle.EMPTY_ROOT)
    ledger.append_many([make_event(i) for i in range(10)])
    note = ledger.checkpoint()
    assert ledger.latest_checkpoint() == note
    cp = parse_and_verify(note, ledger.verifier_key_text(), origin=ORIGIN)
    assert (cp.size, cp.root_hash) == (10, ledger.root(10))
    report = verify_ledger(ledger_path, verifier_key=signer.verifier_key_text())
    assert report.ok and report.checkpoints_verified == 2 and report.latest_checkpoint == cp


def test_no_signer_no_checkpoint_and_origin_is_fixed(ledger_path: Path, signer: Signer) -> None:
    with Ledger.open(ledger_path, signer=None, origin=ORIGIN) as ledger:
        ledger.append(make_event())
        with pytest.raises(LedgerError):
            ledger.checkpoint()
        with pytest.raises(LedgerError):
            ledger.verifier_key_text()
    with pytest.raises(LedgerError, match="origin"):
        Ledger.open(ledger_path, signer=signer, origin="other.example/log")
    with pytest.raises(InvalidInput):
        Ledger.open(ledger_path, signer=signer, origin="bad origin")


def test_group_commit(ledger_path: Path, signer: Signer) -> None:
    ledger = Ledger.open(ledger_path, signer=signer, origin=ORIGIN, group_commit_interval=0.02)
    with pytest.raises(InvalidInput, match="change event"):
        ledger.record(make_event(0, EventKind.DELETE))
    for i in range(5):
        ledger.record(make_event(i, EventKind.QUERY))
    deadline = time.monotonic() + 10
    while ledger.size < 5 and time.monotonic() < deadline:  # the background thread commits them
        time.sleep(0.01)
    assert ledger.size == 5
    ledger.record(make_event(9, EventKind.RETRIEVE))
    assert ledger.flush() in ([5], [])  # the thread may have been first
    for i in range(3):
        ledger.record(make_event(i, EventKind.QUERY))
    ledger.close()  # flushes
    with Ledger.open(ledger_path, signer=signer, origin=ORIGIN) as again:
        assert again.size == 9
    with pytest.raises(LedgerError):
        ledger.record(make_event(0, EventKind.QUERY))


def test_threads(ledger: Ledger, ledger_path: Path, signer: Signer) -> None:
    got: list[int] = []
    lock = threading.Lock()

    def work(t: int) -> None:
        for i in range(30):
            idx = ledger.append(make_event(i)) if i % 2 else ledger.append_many([make_event(i)] * 3)[0]
            ledger.record(make_event(i, EventKind.QUERY))
            with lock:
                got.append(idx)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger.flush()
    assert len(set(got)) == 120
    assert ledger.size == 4 * (15 + 15 * 3 + 30)
    ledger.checkpoint()
    assert verify_ledger(ledger_path, verifier_key=signer.verifier_key_text()).ok


def test_several_processes_append_to_one_file(ledger_path: Path, signer: Signer) -> None:
    Ledger.open(ledger_path, signer=signer, origin=ORIGIN).close()
    children = [
        subprocess.Popen(
            [sys.executable, str(CHILD), str(ledger_path), "30", "10"], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    acknowledged: list[int] = []
    for child in children:
        out, _ = child.communicate(timeout=120)
        assert child.returncode == 0
        acknowledged += [int(line) for line in out.split()]
    # each child: 20 single appends + 10 batches of 8
    assert sorted(acknowledged) == list(range(3 * (20 + 80)))
    report = verify_ledger(ledger_path, verifier_key=signer.verifier_key_text())
    assert report.ok, report.summary()
    assert report.size == 300 and report.checkpoints_verified == 9
