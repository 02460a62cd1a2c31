"""The envelope: medvault's versioned, segmented AEAD format for stored objects.

Every object (a DICOM instance, a rendered frame, an export) is encrypted under its own 256-bit
data key with the STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizár ("Online
Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance", CRYPTO 2015, section 7) over
AES-256-GCM. The plaintext is cut into fixed-size segments, each sealed on its own, so that one
frame can be read and verified without decrypting the whole object (:func:`decrypt_range`).

Byte layout (all integers big-endian; see docs/encryption-format.md)::

    offset size  field
    0      4     magic            b"MVEN"
    4      1     format version   1
    5      1     algorithm id     1 = AES-256-GCM STREAM
    6      4     segment size     u32, plaintext bytes per segment (the last may be shorter)
    10     8     plaintext length u64
    18     7     nonce prefix     random per object
    25     ...   segments: segment i = AES-256-GCM(data_key, nonce_i, chunk_i, aad) = ct || 16-byte tag

    nonce_i = nonce_prefix (7) || i as u32 (4) || last flag (1: 0x01 for the final segment, else 0x00)
    aad     = the 25 header bytes || object_id

An empty plaintext is one empty final segment (16 bytes of tag). Binding the header into every
segment's AAD authenticates the segment size and the plaintext length; the counter in the nonce
stops reordering and dropping; the last flag stops truncation at a segment boundary; the object id
in the AAD stops a segment (or a whole blob) being moved between objects that share a key.

Every failure to decrypt raises :class:`~medvault.errors.IntegrityError` with one message (no
oracle). A caller error (a key that is not 32 bytes, a bad segment size) raises
:class:`~medvault.errors.InvalidInput`.

The data key must be fresh per object (:func:`medvault.crypto.new_data_key`); the 56-bit random
nonce prefix is a second line of defence, not a licence to reuse keys.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medvault.errors import IntegrityError, InvalidInput

__all__ = [
    "ALG_AES256GCM_STREAM",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_SEGMENT_SIZE",
    "MIN_SEGMENT_SIZE",
    "NONCE_PREFIX_SIZE",
    "SEGMENT_SIZE_DEFAULT",
    "TAG_SIZE",
    "EnvelopeHeader",
    "ciphertext_length",
    "decrypt_object",
    "decrypt_range",
    "encrypt_object",
    "encrypt_object_chunks",
    "parse_header",
]

MAGIC: Final = b"MVEN"
FORMAT_VERSION: Final = 1
ALG_AES256GCM_STREAM: Final = 1
NONCE_PREFIX_SIZE: Final = 7
TAG_SIZE: Final = 16
KEY_SIZE: Final = 32
SEGMENT_SIZE_DEFAULT: Final = 64 * 1024
MIN_SEGMENT_SIZE: Final = 16
MAX_SEGMENT_SIZE: Final = 16 * 1024 * 1024
MAX_SEGMENTS: Final = 2**32  # the counter is a u32

_HEADER: Final = struct.Struct(">4sBBIQ7s")
HEADER_SIZE: Final = _HEADER.size  # 25
_LAST: Final = b"\x01"
_NOT_LAST: Final = b"\x00"

# One message for every decryption failure: which check failed is not told (no oracle).
_FAILED: Final = "encrypted object failed its integrity check"


@dataclass(frozen=True)
class EnvelopeHeader:
    """The public, fixed-size header of an envelope (authenticated by every segment)."""

    version: int
    segment_size: int
    plaintext_length: int
    nonce_prefix: bytes

    @property
    def segment_count(self) -> int:
        """How many segments the object has (at least one: an empty object has one empty segment)."""
        return _segment_count(self.plaintext_length, self.segment_size)

    @property
    def blob_length(self) -> int:
        """The exact length of the stored blob, header included."""
        return ciphertext_length(self.plaintext_length, self.segment_size)

    def to_bytes(self) -> bytes:
        return _HEADER.pack(
            MAGIC,
            self.version,
            ALG_AES256GCM_STREAM,
            self.segment_size,
            self.plaintext_length,
            self.nonce_prefix,
        )


def _segment_count(plaintext_length: int, segment_size: int) -> int:
    return max(1, -(-plaintext_length // segment_size))


def _check_segment_size(segment_size: int) -> None:
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise InvalidInput(
            f"segment size must be between {MIN_SEGMENT_SIZE} and {MAX_SEGMENT_SIZE} bytes, "
            f"not {segment_size}"
        )


def _aead(data_key: bytes) -> AESGCM:
    if len(data_key) != KEY_SIZE:
        # AESGCM would silently accept a 16- or 24-byte key: refuse anything but AES-256.
        raise InvalidInput(f"a data key must be {KEY_SIZE} bytes, not {len(data_key)}")
    return AESGCM(data_key)


def ciphertext_length(plaintext_length: int, segment_size: int) -> int:
    """The length of the whole stored blob (header + segments) for a plaintext of this length."""
    _check_segment_size(segment_size)
    if plaintext_length < 0:
        raise InvalidInput("plaintext length cannot be negative")
    return HEADER_SIZE + plaintext_length + TAG_SIZE * _segment_count(plaintext_length, segment_size)


def parse_header(header: bytes) -> EnvelopeHeader:
    """Parse (but not authenticate) the first :data:`HEADER_SIZE` bytes of a blob.

    Raises :class:`IntegrityError` when the bytes are not a medvault envelope this version reads.
    The header is only trusted after a segment has been verified against it.
    """
    if len(header) < HEADER_SIZE:
        raise IntegrityError(_FAILED, hint="the object is shorter than an envelope header")
    magic, version, alg, segment_size, plaintext_length, prefix = _HEADER.unpack_from(header)
    if magic != MAGIC:
        raise IntegrityError(_FAILED, hint="the object is not a medvault envelope")
    if version != FORMAT_VERSION or alg != ALG_AES256GCM_STREAM:
        raise IntegrityError(_FAILED, hint="unsupported envelope version or algorithm")
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise IntegrityError(_FAILED)
    if _segment_count(plaintext_length, segment_size) > MAX_SEGMENTS:
        raise IntegrityError(_FAILED)
    return EnvelopeHeader(
        version=version,
        segment_size=segment_size,
        plaintext_length=plaintext_length,
        nonce_prefix=prefix,
    )


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + index.to_bytes(4, "big") + (_LAST if last else _NOT_LAST)


def encrypt_object(
    plaintext: bytes,
    data_key: bytes,
    *,
    object_id: bytes,
    segment_size: int = SEGMENT_SIZE_DEFAULT,
    nonce_prefix: bytes | None = None,
) -> bytes:
    """Encrypt ``plaintext`` into an envelope bound to ``object_id``.

    ``nonce_prefix`` is for known-answer tests only; leave it ``None`` (7 random bytes).
    """
    return b"".join(
        encrypt_object_chunks(
            plaintext, data_key, object_id=object_id, segment_size=segment_size, nonce_prefix=nonce_prefix
        )
    )


#: Plaintext sealed per chunk by :func:`encrypt_object_chunks` (a whole number of segments).
CHUNK_BYTES: Final = 1024 * 1024


def encrypt_object_chunks(
    plaintext: bytes,
    data_key: bytes,
    *,
    object_id: bytes,
    segment_size: int = SEGMENT_SIZE_DEFAULT,
    nonce_prefix: bytes | None = None,
) -> Iterator[bytes | bytearray]:
    """The envelope of :func:`encrypt_object` as consecutive chunks (the header, then about 1 MiB
    of sealed segments at a time), so that a writer needs no second copy of a large object."""
    _check_segment_size(segment_size)
    aead = _aead(data_key)
    if nonce_prefix is None:
        nonce_prefix = os.urandom(NONCE_PREFIX_SIZE)
    elif len(nonce_prefix) != NONCE_PREFIX_SIZE:
        raise InvalidInput(f"a nonce prefix must be {NONCE_PREFIX_SIZE} bytes")
    total = len(plaintext)
    count = _segment_count(total, segment_size)
    if count > MAX_SEGMENTS:
        raise InvalidInput("object too large for this segment size")
    header = EnvelopeHeader(FORMAT_VERSION, segment_size, total, bytes(nonce_prefix)).to_bytes()
    aad = header + bytes(object_id)
    yield header
    view = memoryview(plaintext)
    last = count - 1
    per_chunk = max(1, CHUNK_BYTES // segment_size)
    for first in range(0, count, per_chunk):
        segments = range(first, min(first + per_chunk, count))
        plain = sum(len(view[i * segment_size : (i + 1) * segment_size]) for i in segments)
        chunk = bytearray(plain + TAG_SIZE * len(segments))
        pos = 0
        for i in segments:
            piece = view[i * segment_size : (i + 1) * segment_size]
            aead.encrypt_into(
                _nonce(nonce_prefix, i, i == last),
                piece,
                aad,
                memoryview(chunk)[pos : pos + len(piece) + TAG_SIZE],
            )
            pos += len(piece) + TAG_SIZE
        yield chunk  # no copy: the writer takes any buffer


def decrypt_object(blob: bytes, data_key: bytes, *, object_id: bytes) -> bytes:
    """Verify and decrypt a whole envelope. Any failure raises :class:`IntegrityError`."""
    out = bytearray(plaintext_length(blob))
    decrypt_object_into(blob, data_key, object_id=object_id, out=memoryview(out))
    return bytes(out)


def _checked_header(blob: bytes) -> EnvelopeHeader:
    """The blob's header, once it parses and agrees with the blob's own length (so a damaged
    header cannot ask for a huge buffer); authenticated only once a segment verifies."""
    try:
        hdr = parse_header(blob)
    except IntegrityError:
        raise IntegrityError(_FAILED) from None
    if len(blob) != hdr.blob_length:  # truncated or extended
        raise IntegrityError(_FAILED)
    return hdr


def plaintext_length(blob: bytes) -> int:
    """The plaintext length a blob's header claims (see :func:`_checked_header`)."""
    return _checked_header(blob).plaintext_length


def decrypt_object_into(blob: bytes, data_key: bytes, *, object_id: bytes, out: memoryview) -> None:
    """Verify and decrypt a whole envelope straight into ``out`` (no intermediate copies), which
    must be exactly as long as the plaintext. Any failure raises :class:`IntegrityError`; ``out``
    then holds unverified bytes that the caller must discard."""
    aead = _aead(data_key)
    hdr = _checked_header(blob)
    if len(out) != hdr.plaintext_length:
        raise IntegrityError(_FAILED, hint="the object's length differs from the one recorded")
    aad = bytes(blob[:HEADER_SIZE]) + bytes(object_id)
    view = memoryview(blob)
    seg = hdr.segment_size
    step = seg + TAG_SIZE
    count = hdr.segment_count
    try:
        for i in range(count):
            start = HEADER_SIZE + i * step
            segment = view[start : start + step]
            target = out[i * seg : i * seg + len(segment) - TAG_SIZE]
            aead.decrypt_into(_nonce(hdr.nonce_prefix, i, i == count - 1), segment, aad, target)
    except InvalidTag:
        raise IntegrityError(_FAILED) from None


def decrypt_range(
    read: Callable[[int, int], bytes],
    data_key: bytes,
    *,
    object_id: bytes,
    offset: int,
    length: int,
) -> bytes:
    """Return ``plaintext[offset:offset + length]`` reading and verifying only the covering segments.

    ``read(pos, n)`` must return ``n`` bytes of the stored blob starting at ``pos`` (fewer only at
    the end of the blob). It is called once for the header and once for the covering segments,
    which are read in one contiguous span. A range past the end is clamped; an empty range still
    verifies the final segment, so the header (and so the length) is authenticated either way.
    """
    if offset < 0 or length < 0:
        raise InvalidInput("a range needs a non-negative offset and length")
    aead = _aead(data_key)
    raw_header = bytes(read(0, HEADER_SIZE))
    if len(raw_header) != HEADER_SIZE:
        raise IntegrityError(_FAILED)
    try:
        hdr = parse_header(raw_header)
    except IntegrityError:
        raise IntegrityError(_FAILED) from None
    aad = raw_header + bytes(object_id)
    seg = hdr.segment_size
    count = hdr.segment_count
    end = min(offset + length, hdr.plaintext_length)
    if end <= offset:
        first = last = count - 1  # nothing to return: verify the final segment only
    else:
        first, last = offset // seg, (end - 1) // seg
    step = seg + TAG_SIZE
    span_start = HEADER_SIZE + first * step
    final_len = hdr.plaintext_length - (count - 1) * seg + TAG_SIZE
    span_len = (last - first) * step + (final_len if last == count - 1 else step)
    span = read(span_start, span_len)
    if len(span) != span_len:
        raise IntegrityError(_FAILED)
    view = memoryview(span)
    parts: list[bytes] = []
    try:
        for i in range(first, last + 1):
            pos = (i - first) * step
            parts.append(
                aead.decrypt(_nonce(hdr.nonce_prefix, i, i == count - 1), view[pos : pos + step], aad)
            )
    except InvalidTag:
        raise IntegrityError(_FAILED) from None
    if end <= offset:
        return b""
    plain = b"".join(parts)
    lo = offset - first * seg
    return plain[lo : lo + (end - offset)]
