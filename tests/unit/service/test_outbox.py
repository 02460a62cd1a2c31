"""The ledger outbox (medvault.index.outbox): a crash between an index change and its ledger event
cannot leave one without the other. Found by tests/integration/test_crash.py: after kill -9, four
instances were indexed and had no store event in the ledger."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from medvault.archive import Archive
from medvault.audit import LedgerAudit
from medvault.crypto.fields import BlindIndex, FieldCipher
from medvault.crypto.kek import KeyringKekProvider
from medvault.crypto.keyring import Keyring
from medvault.fsck import publish_outbox
from medvault.index.outbox import owner_alive, process_tag
from medvault.index.store import Index
from medvault.ledger.store import Ledger
from medvault.sample import generate_study
from medvault.testing import MemoryBlobStore


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    keyring = Keyring.generate()
    index = Index.open_sqlite(
        tmp_path / "index.db",
        cipher=FieldCipher(keyring.index_key),
        blind=BlindIndex(keyring.blind_index_key),
    )
    ledger = Ledger.open(tmp_path / "ledger.db", signer=None, origin="test.example/ledger")
    archive = Archive(
        index=index, blobs=MemoryBlobStore(), keks=KeyringKekProvider(keyring), audit=LedgerAudit(ledger)
    )
    yield archive
    archive.close()
    ledger.close()


@pytest.fixture
def files(tmp_path: Path) -> list[bytes]:
    paths = generate_study(
        tmp_path / "in", seed=9, series=1, instances=3, rows=8, cols=8, patient_name="O^B", patient_id="OB-1"
    )
    return [p.read_bytes() for p in paths]


def _store_events(archive: Archive) -> list[bytes]:
    assert archive.audit is not None
    ledger = archive.audit.ledger
    return [e for e in (ledger.entry(i) for i in range(ledger.size)) if b'"kind":"store"' in e]


def test_a_store_leaves_no_outbox_rows_and_one_event_each(archive: Archive, files: list[bytes]) -> None:
    """Published rows go with the process's next index write (one commit less per C-STORE)."""
    assert all(o.status == "stored" for o in archive.store_batch(files[:2]))
    first = archive.index.outbox_rows()
    assert len(first) == 2 and {r.owner for r in first} == {process_tag()}
    assert len(_store_events(archive)) == 2
    assert all(o.status == "stored" for o in archive.store_batch(files[2:]))
    left = archive.index.outbox_rows()
    assert len(left) == 1 and not {r.id for r in left} & {r.id for r in first}  # cleared in that commit
    archive.index.flush_published()
    assert archive.index.outbox_rows() == []
    assert len(_store_events(archive)) == 3
    assert publish_outbox(archive) == (0, 0)


def test_published_rows_of_a_killed_writer_are_cleared_not_republished(
    archive: Archive, files: list[bytes]
) -> None:
    archive.store_batch(files)
    with archive.index._writer.begin() as conn:  # as if the writer died before its next write
        conn.exec_driver_sql("UPDATE ledger_outbox SET owner = '1:never'")
    archive.index._published.clear()
    assert publish_outbox(archive) == (0, 0)
    assert archive.index.outbox_rows() == [] and len(_store_events(archive)) == 3


def test_a_crash_before_the_ledger_append_is_repaired_exactly_once(
    archive: Archive, files: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulate the kill: the index commit (with its outbox rows) happened, the append did not."""
    monkeypatch.setattr(archive, "_publish", lambda _outbox: None)
    archive.store_batch(files)
    rows = archive.index.outbox_rows()
    assert len(rows) == 3 and _store_events(archive) == []
    assert publish_outbox(archive) == (0, 3)  # the writer (this process) is alive: hands off
    dead = "1:never"  # no process 1 started at that time
    with archive.index._writer.begin() as conn:
        conn.execute(text("UPDATE ledger_outbox SET owner = :owner"), {"owner": dead})
    assert publish_outbox(archive, dry_run=True) == (3, 0)
    assert publish_outbox(archive) == (3, 0)
    assert len(_store_events(archive)) == 3 and archive.index.outbox_rows() == []
    assert publish_outbox(archive) == (0, 0)


def test_a_crash_after_the_ledger_append_is_not_published_twice(
    archive: Archive, files: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kill came after the append and before the outbox rows went: nothing is appended again."""
    monkeypatch.setattr(archive.index, "outbox_done", lambda _ids: None)
    archive.store_batch(files)
    assert len(_store_events(archive)) == 3
    with archive.index._writer.begin() as conn:
        conn.exec_driver_sql("UPDATE ledger_outbox SET owner = '1:never'")
    monkeypatch.undo()
    assert publish_outbox(archive) == (0, 0)
    assert len(_store_events(archive)) == 3 and archive.index.outbox_rows() == []


def test_deletes_go_through_the_outbox_too(archive: Archive, files: list[bytes]) -> None:
    outcomes = archive.store_batch(files)
    archive.delete(outcomes[0].study_uid or "")
    archive.index.flush_published()
    assert archive.index.outbox_rows() == []
    assert archive.audit is not None
    ledger = archive.audit.ledger
    deletes = [e for e in (ledger.entry(i) for i in range(ledger.size)) if b'"kind":"delete"' in e]
    assert len(deletes) == 3


def test_owner_tags() -> None:
    assert owner_alive(process_tag())
    child = subprocess.run(
        [sys.executable, "-c", "from medvault.index.outbox import process_tag; print(process_tag())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert child != process_tag() and not owner_alive(child)  # it has exited
    assert not owner_alive("garbage") and not owner_alive("1:never")


def test_an_append_the_ledger_refuses_is_tried_again_with_the_next_change(
    archive: Archive, files: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transient ledger failure (a full disk) neither fails a stored instance nor leaves its
    event unpublished until a restart: the next change publishes it first, once."""
    assert archive.audit is not None
    ledger = archive.audit.ledger
    real = ledger.append_leaves

    def refused(_leaves: object) -> list[int]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ledger, "append_leaves", refused)
    assert [o.status for o in archive.store_batch(files[:1])] == ["stored"]
    assert _store_events(archive) == [] and len(archive.index.outbox_rows()) == 1
    assert archive._publisher is not None and archive._publisher.waiting == 1
    monkeypatch.setattr(ledger, "append_leaves", real)
    assert [o.status for o in archive.store_batch(files[1:])] == ["stored", "stored"]
    assert len(_store_events(archive)) == 3 and archive._publisher.waiting == 0
    archive.index.flush_published()
    assert archive.index.outbox_rows() == []


def test_a_retry_does_not_append_what_the_ledger_already_holds(
    archive: Archive, files: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The append committed and then failed (say, after its fsync): the retry adds nothing twice."""
    assert archive.audit is not None
    ledger = archive.audit.ledger
    real = ledger.append_leaves

    def committed_then_failed(leaves: list[bytes]) -> list[int]:
        real(leaves)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(ledger, "append_leaves", committed_then_failed)
    archive.store_batch(files[:1])
    monkeypatch.setattr(ledger, "append_leaves", real)
    archive.store_batch(files[1:])
    assert len(_store_events(archive)) == 3
