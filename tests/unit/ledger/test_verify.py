"""verify_ledger against a tampered SQLite file (each case names the first bad index) and a kill -9."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from medvault.errors import LedgerTampered, NoteInvalid, NotFound
from medvault.ledger import Ledger, Signer, verify_ledger
from medvault.ledger.merkle import leaf_hash

from .conftest import ORIGIN, make_event

CHILD = Path(__file__).with_name("ledger_child.py")
N = 100


@pytest.fixture
def filled(ledger_path: Path, signer: Signer) -> tuple[Path, bytes]:
    """100 entries; checkpoints at 40 and 100; returns the path and the size-40 checkpoint."""
    with Ledger.open(ledger_path, signer=signer, origin=ORIGIN) as ledger:
        ledger.append_many([make_event(i) for i in range(40)])
        early = ledger.checkpoint()
        for i in range(40, N):
            ledger.append(make_event(i))
        ledger.checkpoint()
    return ledger_path, early


def tamper(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path)
    with conn:
        for s in statements:
            conn.execute(s)
    conn.close()


def test_intact_ledger_verifies(filled: tuple[Path, bytes], signer: Signer) -> None:
    path, early = filled
    report = verify_ledger(path, verifier_key=signer.verifier_key_text(), trusted_checkpoint=early)
    assert report.ok, report.summary()
    assert (report.size, report.checkpoints_verified, report.first_bad_index) == (N, 2, None)
    assert report.latest_checkpoint is not None and report.latest_checkpoint.size == N
    report.raise_for_problems()
    assert "ledger OK" in report.summary()


CASES: dict[str, tuple[list[str], int]] = {
    "edit bytes": (
        [
            "UPDATE entries SET data = CAST(replace(CAST(data AS TEXT), 'user', 'usEr') AS BLOB) "
            "WHERE idx = 57"
        ],
        57,
    ),
    "delete a row": (["DELETE FROM entries WHERE idx = 23"], 23),
    "swap two rows": (
        [
            "UPDATE entries SET idx = -1 WHERE idx = 31",
            "UPDATE entries SET idx = 31 WHERE idx = 64",
            "UPDATE entries SET idx = 64 WHERE idx = -1",
        ],
        31,
    ),
    "insert a row": (
        [
            "UPDATE entries SET idx = -idx - 1000 WHERE idx >= 70",
            "UPDATE entries SET idx = -idx - 1000 + 1 WHERE idx < 0",
            "INSERT INTO entries (idx, data) SELECT 70, data FROM entries WHERE idx = 3",
        ],
        70,
    ),
    "append a forged row": (
        ["INSERT INTO entries (idx, data) SELECT 100, data FROM entries WHERE idx = 3"],
        100,
    ),
    "truncate": (["DELETE FROM entries WHERE idx >= 90"], 90),
    "truncate with its tree rows": (
        ["DELETE FROM entries WHERE idx >= 90", "DELETE FROM tree WHERE (idx + 1) << level > 90"],
        90,
    ),
    "alter a stored tree node": (["UPDATE tree SET hash = zeroblob(32) WHERE level = 3 AND idx = 5"], 40),
}


@pytest.mark.parametrize("case", CASES)
def test_tampering_is_detected_at_the_first_bad_index(
    filled: tuple[Path, bytes], signer: Signer, case: str
) -> None:
    path, _ = filled
    statements, first_bad = CASES[case]
    tamper(path, *statements)
    report = verify_ledger(path, verifier_key=signer.verifier_key_text())
    assert not report.ok
    assert report.first_bad_index == first_bad, report.summary()
    with pytest.raises(LedgerTampered):
        report.raise_for_problems()


def test_consistent_rewrite_is_caught_by_the_signed_checkpoints(
    filled: tuple[Path, bytes], signer: Signer
) -> None:
    """An attacker rewrites entry 57 AND every stored hash: only the size-100 checkpoint disagrees."""
    path, _ = filled
    conn = sqlite3.connect(path)
    forged = bytes(conn.execute("SELECT data FROM entries WHERE idx = 57").fetchone()[0]).replace(
        b"user", b"usEr"
    )
    leaves = [bytes(r[0]) for r in conn.execute("SELECT data FROM entries ORDER BY idx")]
    leaves[57] = forged
    conn.close()
    rebuilt = path.with_name("rebuilt.sqlite")
    with Ledger.open(rebuilt, signer=None, origin=ORIGIN) as other:
        other._append_leaves(leaves)
    tamper(
        path,
        "ATTACH DATABASE '" + str(rebuilt) + "' AS r",
        "DELETE FROM tree",
        "INSERT INTO tree SELECT * FROM r.tree",
        "DELETE FROM entries",
        "INSERT INTO entries SELECT * FROM r.entries",
    )
    report = verify_ledger(path, verifier_key=signer.verifier_key_text())
    assert not report.ok and report.first_bad_index == 40, report.summary()
    assert "[40, 100)" in report.summary()


def test_rollback_behind_a_trusted_checkpoint(filled: tuple[Path, bytes], signer: Signer) -> None:
    path, _ = filled
    with Ledger.open(path, signer=signer, origin=ORIGIN) as ledger:
        trusted = ledger.latest_checkpoint()
    assert trusted is not None
    # roll the whole file back to 80 entries, erasing the newer checkpoint too
    tamper(
        path,
        "DELETE FROM entries WHERE idx >= 80",
        "DELETE FROM tree WHERE (idx + 1) << level > 80",
        "DELETE FROM checkpoints WHERE size > 80",
    )
    assert verify_ledger(path, verifier_key=signer.verifier_key_text()).ok  # nothing inside says so
    report = verify_ledger(path, verifier_key=signer.verifier_key_text(), trusted_checkpoint=trusted)
    assert not report.ok and report.first_bad_index == 80
    assert "rolled back" in report.summary()


def test_forged_or_foreign_checkpoints(filled: tuple[Path, bytes], signer: Signer) -> None:
    path, early = filled
    other = Signer.generate(name=ORIGIN)
    forged = early.replace(b"\n40\n", b"\n41\n").hex()
    tamper(path, f"UPDATE checkpoints SET note = X'{forged}' WHERE size = 40")
    report = verify_ledger(path, verifier_key=signer.verifier_key_text())
    assert not report.ok and "does not verify" in report.summary()
    with pytest.raises(NoteInvalid):
        verify_ledger(
            path,
            verifier_key=signer.verifier_key_text(),
            trusted_checkpoint=other.sign_checkpoint(ORIGIN, 1, leaf_hash(b"")),
        )
    with pytest.raises(NotFound):
        verify_ledger(path.with_name("missing.sqlite"), verifier_key=signer.verifier_key_text())


def test_kill_9_loses_no_acknowledged_entry(ledger_path: Path, signer: Signer) -> None:
    Ledger.open(ledger_path, signer=signer, origin=ORIGIN).close()
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(ledger_path), "0", "7"], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    acknowledged: list[int] = []
    read_line: Callable[[], str] = child.stdout.readline
    while len(acknowledged) < 300:
        line = read_line()
        assert line, "the child died"
        acknowledged.append(int(line))
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    child.stdout.close()
    report = verify_ledger(ledger_path, verifier_key=signer.verifier_key_text())
    assert report.ok, report.summary()
    assert report.checkpoints_verified >= 1
    assert max(acknowledged) < report.size
    with Ledger.open(ledger_path, signer=signer, origin=ORIGIN) as ledger:
        for i in acknowledged:
            ledger.entry(i)
        ledger.append(make_event(1))  # and it goes on appending
        ledger.checkpoint()
    assert verify_ledger(ledger_path, verifier_key=signer.verifier_key_text()).ok
