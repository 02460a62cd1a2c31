"""What every ``BlobStore`` must do, as one check the folder store's and the S3 store's tests share."""

from __future__ import annotations

import pytest

from medvault.errors import NotFound, StorageError
from medvault.storage.base import BlobStore


def check_round_trip(store: BlobStore) -> None:
    """Put, sync, get, ranges (also at and past the end), exists, idempotent delete, NotFound,
    and keys that could leave the store refused."""
    store.put("abcdef0123456789", b"ciphertext" * 1000)
    store.sync()
    assert store.get("abcdef0123456789") == b"ciphertext" * 1000
    assert store.read_range("abcdef0123456789", 10, 4) == b"ciph"
    assert store.read_range("abcdef0123456789", 9_998, 100) == b"xt"
    assert store.read_range("abcdef0123456789", 10_000, 5) == b""  # at the end: nothing, as a file
    assert store.exists("abcdef0123456789")
    store.delete("abcdef0123456789")
    store.delete("abcdef0123456789")  # absent is not an error
    assert not store.exists("abcdef0123456789")
    with pytest.raises(NotFound):
        store.get("abcdef0123456789")
    with pytest.raises(NotFound):
        store.read_range("abcdef0123456789", 0, 1)
    for key in ("short", "../../etc/passwd0", "a/b/c/d/e/f/g/h", "x" * 129):
        with pytest.raises(StorageError):
            store.put(key, b"x")
