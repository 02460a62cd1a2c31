"""The ``BlobStore`` port: the one thing every object backend (folder, S3, memory) provides."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

#: What an object key may be: the archive's keyed tokens (no path separators, no meaning).
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{8,128}$")


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    modified: float  # seconds since the epoch


class BlobStore(Protocol):
    """Stores ciphertext objects under opaque keys (no PHI in keys)."""

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` durably and atomically: a reader sees all of it or nothing."""

    def put_chunks(self, key: str, chunks: Iterable[bytes | bytearray]) -> None:
        """``put`` of the concatenation of ``chunks``, consumed as they come: an object encrypted
        chunk by chunk is never held twice."""

    def get(self, key: str) -> bytes:
        """Return the whole object; ``NotFound`` if absent."""

    def sync(self) -> None:
        """Make every completed ``put`` durable; called once per batch before indexing."""

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """Return up to ``length`` bytes at ``offset`` (fewer at the end of the object)."""

    def delete(self, key: str) -> None:
        """Remove the object; absent objects are not an error."""

    def exists(self, key: str) -> bool: ...

    def list_objects(self) -> Iterator[BlobInfo]:
        """Every complete object (for reconciling storage with the index)."""

    def partial_writes(self, *, older_than: float) -> list[str]:
        """Writes that never completed (a crash's leftovers) last touched before ``older_than``
        (seconds since the epoch): opaque names to pass to :meth:`remove_partial`."""

    def remove_partial(self, name: str) -> None:
        """Remove one leftover named by :meth:`partial_writes`."""
