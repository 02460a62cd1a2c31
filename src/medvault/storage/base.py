"""The ``BlobStore`` port: the one thing every object backend (folder, S3, memory) provides."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


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
