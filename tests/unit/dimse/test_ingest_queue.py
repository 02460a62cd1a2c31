"""C-STORE requests of concurrent associations are written together (medvault.dimse.ingest):
one session (one transaction, one ledger append) for what one node has waiting, each store event
naming its own association, each request answered with its own outcome."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from medvault.archive import Archive, StoreSession
from medvault.audit import LedgerAudit
from medvault.crypto.fields import BlindIndex, FieldCipher
from medvault.crypto.kek import KeyringKekProvider
from medvault.crypto.keyring import Keyring
from medvault.dimse.ingest import StoreQueue
from medvault.index.store import Index
from medvault.ledger.events import Actor, ActorKind
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
    ledger = Ledger.open(tmp_path / "ledger.db", signer=None, origin="test.example/ingest")
    archive = Archive(
        index=index, blobs=MemoryBlobStore(), keks=KeyringKekProvider(keyring), audit=LedgerAudit(ledger)
    )
    yield archive
    archive.close()
    ledger.close()


@pytest.fixture
def files(tmp_path: Path) -> list[bytes]:
    paths = generate_study(
        tmp_path / "in", seed=5, series=1, instances=6, rows=8, cols=8, patient_name="Q^U", patient_id="QU-1"
    )
    return [p.read_bytes() for p in paths]


def actor(port: int) -> Actor:
    return Actor(kind=ActorKind.NODE, id="ct1", address=f"10.0.0.5:{port}", auth="mtls")


def test_waiting_requests_of_one_node_share_one_session(
    archive: Archive, files: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions: list[int] = []
    gate = threading.Event()
    original = archive.begin_store

    def counted(**kw: Any) -> StoreSession:
        sessions.append(len(sessions))
        if len(sessions) == 1:
            assert gate.wait(30)  # hold the first group while the others queue up
        return original(**kw)

    monkeypatch.setattr(archive, "begin_store", counted)
    queue = StoreQueue(archive)
    outcomes: dict[int, str] = {}

    def send(i: int, node: str = "ct1") -> None:
        outcomes[i] = queue.store(files[i], node=node, actor=actor(4000 + i), check=None).status

    first = threading.Thread(target=send, args=(0,))
    first.start()
    while not sessions:
        time.sleep(0.005)
    others = [threading.Thread(target=send, args=(i,)) for i in (1, 2, 3)]
    other_node = threading.Thread(target=send, args=(4, "mr2"))
    for t in [*others, other_node]:
        t.start()
    while len(queue._queue) < 4:
        time.sleep(0.005)
    gate.set()
    for t in [first, *others, other_node]:
        t.join(30)
    queue.close()

    assert outcomes == dict.fromkeys(range(5), "stored")
    assert len(sessions) == 3  # [0], [1, 2, 3] together, [4] (another node) alone
    assert archive.audit is not None
    ledger = archive.audit.ledger
    stores = [json.loads(ledger.entry(i)) for i in range(ledger.size)]
    addresses = sorted(e["actor"]["address"] for e in stores if e["kind"] == "store")
    assert addresses == [f"10.0.0.5:{4000 + i}" for i in range(5)]  # each names its association


def test_a_failing_write_answers_every_request_of_its_group(
    archive: Archive, files: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(**kw: Any) -> StoreSession:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(archive, "begin_store", broken)
    queue = StoreQueue(archive)
    with pytest.raises(OSError, match="No space"):
        queue.store(files[0], node="ct1", actor=actor(1), check=None)
    queue.close()
    with pytest.raises(RuntimeError, match="shutting down"):
        queue.store(files[1], node="ct1", actor=actor(2), check=None)


def test_a_duplicate_in_one_group_is_already_present_not_a_conflict(
    archive: Archive, files: list[bytes]
) -> None:
    """A modality retrying on a second association while the first is still being written."""
    queue = StoreQueue(archive)
    results: list[str] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                queue.store(files[0], node="ct1", actor=actor(9), check=None).status
            )
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    queue.close()
    assert sorted(results) == ["already_present", "already_present", "stored"]
