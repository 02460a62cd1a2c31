"""Moving a home's objects from its folder into an S3 bucket (``medvault migrate --storage``).

The objects are ciphertext already, so moving them is a byte copy: nothing is decrypted, nothing
is re-encrypted, the keys stay in the keyring. Every object the index names is copied (streamed
in pieces: memory stays bounded whatever the object's size), then read back from the bucket and
compared with the folder's copy by SHA-256; only then does ``medvault.toml`` switch to the bucket,
in one atomic rewrite, and the home is opened on the bucket and every object checked against its
store event in the ledger (decrypted and hashed, as ``ledger verify`` does). A copy that stops
(a crash, a network cut, Ctrl-C) is resumed by running the command again: objects already in the
bucket with the right size are not sent twice, and the folder is left as it was.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from medvault.errors import StorageError
from medvault.storage.base import BlobStore

PIECE = 8 << 20  # bytes read and sent at a time


@dataclass
class CopyReport:
    objects: int = 0  # the objects the index names
    copied: int = 0
    already_there: int = 0  # in the bucket with the right size: a resumed run
    bytes_copied: int = 0
    verified: int = 0
    missing_in_source: list[str] = field(default_factory=list)  # indexed but not in the folder


def copy_objects(
    source: BlobStore,
    target: BlobStore,
    keys: Sequence[str],
    *,
    sizes: dict[str, int],
    progress: Callable[[int], None] = lambda _: None,
) -> CopyReport:
    """Copy ``keys`` from ``source`` to ``target`` and compare every copy with its source. An
    object ``target`` already holds (``sizes``: its listing) is kept when it is byte for byte the
    source's, copied again otherwise (a resumed run; an object someone changed in the bucket)."""
    report = CopyReport(objects=len(keys))
    present = {info.key: info.size for info in source.list_objects()}
    for key in keys:
        size = present.get(key)
        if size is None:
            report.missing_in_source.append(key)
        elif sizes.get(key) == size and _same(source, target, key, size):
            report.already_there += 1
            report.verified += 1
        else:
            target.put_chunks(key, _pieces(source, key, size))
            if not _same(source, target, key, size):
                raise StorageError(
                    "an object read back from the bucket differs from the folder's copy",
                    hint="Run the migration again (the object is copied anew); if it happens again, "
                    "check the object store's health.",
                )
            report.copied += 1
            report.bytes_copied += size
            report.verified += 1
        progress(1)
    return report


def _same(source: BlobStore, target: BlobStore, key: str, size: int) -> bool:
    # nothing past ``size`` either: a longer object would hash the same over its first bytes
    return _digest(source, key, size) == _digest(target, key, size) and target.read_range(key, size, 1) == b""


def _pieces(store: BlobStore, key: str, size: int) -> Iterator[bytes]:
    for offset in range(0, size, PIECE):
        yield store.read_range(key, offset, PIECE)


def _digest(store: BlobStore, key: str, size: int) -> bytes:
    h = hashlib.sha256()
    for piece in _pieces(store, key, size):
        h.update(piece)
    return h.digest()
