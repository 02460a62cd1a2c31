"""Reconciling storage with the index (issue #12, item 9): a crash between writing an object and
indexing it leaves an object that no index row names; fsck finds it, removes it when asked, and
never touches an indexed object or one too recent to judge."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from medvault.archive import Archive
from medvault.crypto.fields import BlindIndex, FieldCipher
from medvault.crypto.kek import KeyringKekProvider
from medvault.crypto.keyring import Keyring
from medvault.fsck import reconcile
from medvault.index.store import Index
from medvault.sample import generate_study
from medvault.storage.filesystem import FilesystemBlobStore

HOUR = 3600.0


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    keyring = Keyring.generate()
    index = Index.open_sqlite(
        tmp_path / "index.db",
        cipher=FieldCipher(keyring.index_key),
        blind=BlindIndex(keyring.blind_index_key),
    )
    archive = Archive(
        index=index, blobs=FilesystemBlobStore(tmp_path / "objects"), keks=KeyringKekProvider(keyring)
    )
    yield archive
    archive.close()


@pytest.fixture
def stored(archive: Archive, tmp_path: Path) -> list[str]:
    files = generate_study(
        tmp_path / "in",
        seed=5,
        series=1,
        instances=3,
        rows=16,
        cols=16,
        patient_name="F^S",
        patient_id="FS-1",
    )
    outcomes = archive.store_batch([p.read_bytes() for p in files])
    assert all(o.status == "stored" for o in outcomes)
    return sorted(r.blob_key for r in archive.index.iter_instances())


def _age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_a_clean_archive_is_clean(archive: Archive, stored: list[str]) -> None:
    report = reconcile(archive, repair=True)
    assert report.clean and report.objects == report.indexed == 3
    assert not report.orphans and report.removed == 0


def test_orphans_and_unfinished_writes_are_found_then_removed(
    archive: Archive, stored: list[str], tmp_path: Path
) -> None:
    blobs = archive.blobs
    assert isinstance(blobs, FilesystemBlobStore)
    # What kill -9 leaves: objects written but never indexed, and a temp file of a write in progress.
    blobs.put("aa" + "0" * 30, b"ciphertext of an instance never indexed")
    blobs.put("bb" + "1" * 30, b"another")
    blobs.put("cc" + "2" * 30, b"a write in flight right now")
    temp = tmp_path / "objects" / "aa" / ".tmp-0123456789abcdef"
    temp.write_bytes(b"half")
    for key in ("aa" + "0" * 30, "bb" + "1" * 30):
        _age(tmp_path / "objects" / key[:2] / key, 2 * HOUR)
    _age(temp, 2 * HOUR)

    found = reconcile(archive, repair=False)
    assert sorted(found.orphans) == ["aa" + "0" * 30, "bb" + "1" * 30]
    assert found.recent_unindexed == 1 and found.partial_writes == ["aa/.tmp-0123456789abcdef"]
    assert not found.clean and found.removed == 0
    assert blobs.exists("aa" + "0" * 30) and temp.exists()  # a report changes nothing

    repaired = reconcile(archive, repair=True)
    assert repaired.removed == 3 and repaired.clean
    assert not blobs.exists("aa" + "0" * 30) and not temp.exists()
    assert blobs.exists("cc" + "2" * 30)  # too recent to judge: maybe another process's write
    assert all(blobs.exists(key) for key in stored)
    assert [a.sop_uid for a in archive.index.iter_instances()] and len(stored) == 3

    later = reconcile(archive, repair=True, grace_seconds=0)
    assert later.removed == 1 and not blobs.exists("cc" + "2" * 30)
    assert all(blobs.exists(key) for key in stored)


def test_an_indexed_object_that_is_missing_is_reported_not_repaired(
    archive: Archive, stored: list[str]
) -> None:
    archive.blobs.delete(stored[0])
    report = reconcile(archive, repair=True)
    assert len(report.missing) == 1 and not report.clean
    assert archive.index.count_instances() == 3  # the row stays: the loss is for a person to handle
