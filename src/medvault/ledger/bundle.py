"""Entry bundles: many ledger entries in one response, for mirrors and auditors that copy the log.

Format (``application/x.medvault.entries``): for each entry, its length as a big-endian 32-bit
unsigned integer, then its bytes exactly as hashed into the tree. Entries are consecutive, from the
``start`` asked for; a bundle may hold fewer than asked (the end of the log, or the byte budget), so
a reader continues from ``start + len(entries)``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from medvault.errors import InvalidInput

__all__ = ["BUNDLE_MEDIA_TYPE", "MAX_BUNDLE_BYTES", "MAX_BUNDLE_ENTRIES", "decode_bundle", "encode_bundle"]

BUNDLE_MEDIA_TYPE = "application/x.medvault.entries"
MAX_BUNDLE_ENTRIES = 1024
MAX_BUNDLE_BYTES = 4 * 1024 * 1024
MAX_ENTRY_BYTES = 1024 * 1024


def encode_bundle(entries: Sequence[bytes], *, budget: int = MAX_BUNDLE_BYTES) -> tuple[bytes, int]:
    """The bundle of the longest prefix of ``entries`` within ``budget`` bytes (at least one
    entry), and how many it holds."""
    parts: list[bytes] = []
    used = 0
    for entry in entries:
        if parts and used + 4 + len(entry) > budget:
            break
        parts.append(struct.pack(">I", len(entry)))
        parts.append(entry)
        used += 4 + len(entry)
    return b"".join(parts), len(parts) // 2


def decode_bundle(data: bytes, *, max_entries: int = MAX_BUNDLE_ENTRIES) -> list[bytes]:
    """The entries of a bundle; a truncated or oversized one is :class:`InvalidInput`."""
    entries: list[bytes] = []
    view = memoryview(data)
    offset = 0
    while offset < len(view):
        if len(entries) == max_entries:
            raise InvalidInput(f"an entry bundle holds at most {max_entries} entries")
        if offset + 4 > len(view):
            raise InvalidInput("entry bundle truncated inside a length")
        (length,) = struct.unpack_from(">I", view, offset)
        if length > MAX_ENTRY_BYTES:
            raise InvalidInput(f"an entry of {length} bytes in the bundle (at most {MAX_ENTRY_BYTES})")
        offset += 4
        if offset + length > len(view):
            raise InvalidInput("entry bundle truncated inside an entry")
        entries.append(bytes(view[offset : offset + length]))
        offset += length
    return entries
