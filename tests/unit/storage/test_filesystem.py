"""The folder object store: atomic writes, ranges, and leftovers of crashed writes."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from tests.blob_contract import check_round_trip

from medvault.errors import StorageError
from medvault.storage.filesystem import STALE_TEMP_SECONDS, FilesystemBlobStore


def test_objects_round_trip_and_are_private(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path / "objects")
    check_round_trip(store)
    store.put("abcdef0123456789", b"ciphertext")
    path = tmp_path / "objects" / "ab" / "abcdef0123456789"
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    "key", ["short", "../../etc/passwd0", "a/b/c/d/e/f/g/h", "x" * 129, "name with space"]
)
def test_keys_cannot_leave_the_folder(tmp_path: Path, key: str) -> None:
    store = FilesystemBlobStore(tmp_path / "objects")
    with pytest.raises(StorageError):
        store.put(key, b"data")


def test_a_crashed_writes_leftover_is_swept_but_a_write_in_flight_is_not(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    FilesystemBlobStore(root).put("ab00000000000000", b"kept")
    stale = root / "ab" / ".tmp-00000000000000aa"
    in_flight = root / "ab" / ".tmp-00000000000000bb"
    stale.write_bytes(b"half a ciphertext")
    in_flight.write_bytes(b"a ciphertext being written")
    old = time.time() - STALE_TEMP_SECONDS - 60
    os.utime(stale, (old, old))

    store = FilesystemBlobStore(root)  # another process opening the same folder

    assert not stale.exists()
    assert in_flight.exists()
    assert store.get("ab00000000000000") == b"kept"


def test_opening_the_folder_elsewhere_never_breaks_a_write_in_flight(tmp_path: Path) -> None:
    """Each server worker, the DIMSE listener and `medvault import` open the same folder; opening
    it must not delete the temp file of another's write before its rename (it did: the store
    then failed with 'No such file or directory')."""
    root = tmp_path / "objects"
    writer = FilesystemBlobStore(root)
    done = threading.Event()
    opened = 0

    def open_repeatedly() -> None:
        nonlocal opened
        while not done.is_set():
            FilesystemBlobStore(root)
            opened += 1

    opener = threading.Thread(target=open_repeatedly)
    opener.start()
    try:
        payload = os.urandom(256 * 1024)
        for n in range(150):
            writer.put(f"{n % 7:02d}{n:014d}", payload)
    finally:
        done.set()
        opener.join()
    assert opened > 10
    assert all(writer.get(f"{n % 7:02d}{n:014d}") == payload for n in range(150))
