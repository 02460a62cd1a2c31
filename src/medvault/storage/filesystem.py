"""Objects in a local folder, fanned out by key prefix, written atomically (temp file + rename).

Temp files live inside the objects folder and only ever hold ciphertext, so an interrupted write
leaves no plaintext anywhere. Leftover ``.tmp-*`` files are swept when a store is opened, but only
once they are an hour old: several processes open the same folder (each server worker, the DIMSE
listener, ``medvault import``), and a younger temp file may be another process's write in flight.

Durability: ``put`` fsyncs the object's data (on the archive's writer threads, overlapped with
parsing) before the rename; ``sync`` then fsyncs the directories whose entries the renames created,
once per batch, before the index commit acknowledges anything.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from medvault.errors import NotFound, StorageError
from medvault.storage.base import KEY_PATTERN, BlobInfo

# No write of one object stays unfinished this long; a temp file older than this is a crash's leftover.
STALE_TEMP_SECONDS = 3600


class FilesystemBlobStore:
    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        self._pending: set[Path] = set()
        self._lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._sweep_leftovers()

    def _sweep_leftovers(self) -> None:
        cutoff = time.time() - STALE_TEMP_SECONDS
        for leftover in self.root.glob("*/.tmp-*"):
            try:
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
            except FileNotFoundError:  # finished (renamed) or swept by another process meanwhile
                pass

    def _path(self, key: str) -> Path:
        if not KEY_PATTERN.match(key):
            raise StorageError("invalid object key")
        return self.root / key[:2] / key

    def put(self, key: str, data: bytes) -> None:
        self.put_chunks(key, (data,))

    def put_chunks(self, key: str, chunks: Iterable[bytes | bytearray]) -> None:
        """``put`` of the concatenation of ``chunks``, written as they come (no joined copy)."""
        path = self._path(key)
        path.parent.mkdir(exist_ok=True, mode=0o700)
        tmp = path.parent / f".tmp-{secrets.token_hex(8)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                for chunk in chunks:
                    view = memoryview(chunk)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"could not write object: {exc.strerror}") from None
        if self.fsync:
            with self._lock:
                self._pending.add(path.parent)

    def sync(self) -> None:
        """Make the directory entries of every ``put`` so far durable (data was fsynced in ``put``)."""
        with self._lock:
            directories, self._pending = self._pending, set()
        try:
            for directory in directories:
                fd = os.open(directory, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            raise StorageError(f"could not make objects durable: {exc.strerror}") from None

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound("object not found in storage") from None

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        try:
            with self._path(key).open("rb") as fh:
                fh.seek(offset)
                return fh.read(length)
        except FileNotFoundError:
            raise NotFound("object not found in storage") from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list_objects(self) -> Iterator[BlobInfo]:
        for folder in sorted(self.root.iterdir()):
            if not folder.is_dir() or len(folder.name) != 2:
                continue
            for path in sorted(folder.iterdir()):
                if path.name.startswith(".") or not KEY_PATTERN.match(path.name):
                    continue
                try:
                    info = path.stat()
                except FileNotFoundError:  # deleted meanwhile
                    continue
                yield BlobInfo(path.name, info.st_size, info.st_mtime)

    def partial_writes(self, *, older_than: float) -> list[str]:
        found = []
        for leftover in self.root.glob("*/.tmp-*"):
            try:
                if leftover.stat().st_mtime < older_than:
                    found.append(f"{leftover.parent.name}/{leftover.name}")
            except FileNotFoundError:
                pass
        return sorted(found)

    def remove_partial(self, name: str) -> None:
        folder, _, leaf = name.partition("/")
        if len(folder) != 2 or not leaf.startswith(".tmp-") or "/" in leaf:
            raise StorageError("not the name of a partial write")
        (self.root / folder / leaf).unlink(missing_ok=True)
