"""In-memory twins of the ports, for tests that need no disk."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator

from medvault.errors import NotFound
from medvault.storage.base import BlobInfo


class MemoryBlobStore:
    """A ``BlobStore`` in a dict; behaves like the folder store, including ``NotFound``."""

    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}
        self._modified: dict[str, float] = {}
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes) -> None:
        with self._lock:
            self._objects[key] = bytes(data)
            self._modified[key] = time.time()

    def put_chunks(self, key: str, chunks: Iterable[bytes | bytearray]) -> None:
        self.put(key, b"".join(chunks))

    def get(self, key: str) -> bytes:
        with self._lock:
            try:
                return self._objects[key]
            except KeyError:
                raise NotFound("object not found in storage") from None

    def sync(self) -> None:
        """Memory is as durable as it gets here."""

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        return self.get(key)[offset : offset + length]

    def delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(key, None)

    def exists(self, key: str) -> bool:
        with self._lock:
            return key in self._objects

    def list_objects(self) -> Iterator[BlobInfo]:
        with self._lock:
            items = sorted(self._objects.items())
        for key, data in items:
            yield BlobInfo(key, len(data), self._modified.get(key, 0.0))

    def partial_writes(self, *, older_than: float) -> list[str]:
        """A dict write cannot be half done."""
        return []

    def remove_partial(self, name: str) -> None:
        raise NotFound("no such partial write")

    def keys(self) -> list[str]:
        with self._lock:
            return sorted(self._objects)
