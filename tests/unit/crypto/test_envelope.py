"""The envelope: round trips, ranged reads, and every tampering we can think of."""

from __future__ import annotations

import struct
import time

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from medvault.crypto.envelope import (
    HEADER_SIZE,
    SEGMENT_SIZE_DEFAULT,
    TAG_SIZE,
    EnvelopeHeader,
    ciphertext_length,
    decrypt_object,
    decrypt_object_into,
    decrypt_range,
    encrypt_object,
    parse_header,
)
from medvault.errors import IntegrityError, InvalidInput

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
OID = b"1.2.826.0.1.3680043.8.498.1"
PREFIX = b"\xa0\xa1\xa2\xa3\xa4\xa5\xa6"
SEG = 64


def payload(n: int) -> bytes:
    return bytes((i * 7 + 3) % 256 for i in range(n))


class Reader:
    """A ``read(pos, n)`` over a blob that counts the bytes asked for."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.calls: list[tuple[int, int]] = []

    def __call__(self, pos: int, n: int) -> bytes:
        self.calls.append((pos, n))
        return self.blob[pos : pos + n]

    @property
    def bytes_read(self) -> int:
        return sum(n for _, n in self.calls)


def segments(blob: bytes, seg: int) -> list[bytes]:
    body = blob[HEADER_SIZE:]
    step = seg + TAG_SIZE
    return [body[i : i + step] for i in range(0, len(body), step)]


# -- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, 2 * SEG, 5 * SEG + 17])
def test_round_trip_at_segment_edges(size: int) -> None:
    data = payload(size)
    blob = encrypt_object(data, KEY, object_id=OID, segment_size=SEG)
    assert len(blob) == ciphertext_length(size, SEG)
    assert decrypt_object(blob, KEY, object_id=OID) == data


def test_empty_plaintext_is_one_empty_final_segment() -> None:
    blob = encrypt_object(b"", KEY, object_id=OID, segment_size=SEG)
    assert len(blob) == HEADER_SIZE + TAG_SIZE
    assert parse_header(blob).segment_count == 1


def test_default_segment_size_round_trip() -> None:
    data = payload(3 * SEGMENT_SIZE_DEFAULT + 5)
    blob = encrypt_object(data, KEY, object_id=OID)
    assert parse_header(blob).segment_size == SEGMENT_SIZE_DEFAULT
    assert decrypt_object(blob, KEY, object_id=OID) == data


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=10_000),
    seg=st.integers(16, 4096),
    object_id=st.binary(max_size=64),
)
def test_round_trip_any_data_and_segment_size(data: bytes, seg: int, object_id: bytes) -> None:
    blob = encrypt_object(data, KEY, object_id=object_id, segment_size=seg)
    assert len(blob) == ciphertext_length(len(data), seg)
    assert decrypt_object(blob, KEY, object_id=object_id) == data


def test_encryption_is_randomised() -> None:
    assert encrypt_object(b"x" * 100, KEY, object_id=OID) != encrypt_object(b"x" * 100, KEY, object_id=OID)


def test_accepts_memoryview_and_bytearray() -> None:
    data = bytearray(payload(300))
    blob = encrypt_object(memoryview(data), KEY, object_id=OID, segment_size=SEG)  # type: ignore[arg-type]
    assert decrypt_object(memoryview(blob), KEY, object_id=OID) == data  # type: ignore[arg-type]


# -- the format, built independently from the documented layout -----------------------------------


def test_matches_the_documented_layout() -> None:
    data = payload(150)
    header = b"MVEN" + bytes([1, 1]) + struct.pack(">IQ", SEG, 150) + PREFIX
    assert len(header) == HEADER_SIZE == 25
    aad = header + OID
    aead = AESGCM(KEY)
    chunks = [data[0:64], data[64:128], data[128:150]]
    expected = header + b"".join(
        aead.encrypt(PREFIX + i.to_bytes(4, "big") + bytes([i == 2]), chunk, aad)
        for i, chunk in enumerate(chunks)
    )
    assert encrypt_object(data, KEY, object_id=OID, segment_size=SEG, nonce_prefix=PREFIX) == expected


def test_known_answer_header() -> None:
    blob = encrypt_object(b"abc", KEY, object_id=OID, segment_size=4096, nonce_prefix=PREFIX)
    assert blob[:HEADER_SIZE].hex() == "4d56454e0101000010000000000000000003a0a1a2a3a4a5a6"
    assert parse_header(blob) == EnvelopeHeader(
        version=1, segment_size=4096, plaintext_length=3, nonce_prefix=PREFIX
    )


# -- ranged reads ---------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(data=st.data(), size=st.integers(0, 2000), seg=st.integers(16, 512))
def test_decrypt_range_returns_the_slice_reading_only_covering_segments(
    data: st.DataObject, size: int, seg: int
) -> None:
    plain = payload(size)
    blob = encrypt_object(plain, KEY, object_id=OID, segment_size=seg)
    offset = data.draw(st.integers(0, size + 20), label="offset")
    length = data.draw(st.integers(0, size + 20), label="length")
    reader = Reader(blob)
    got = decrypt_range(reader, KEY, object_id=OID, offset=offset, length=length)
    assert got == plain[offset : offset + length]

    count = max(1, -(-size // seg))
    end = min(offset + length, size)
    covering = [count - 1] if end <= offset else list(range(offset // seg, (end - 1) // seg + 1))
    seg_ct = [min(seg, size - i * seg) + TAG_SIZE for i in covering]
    assert reader.calls[0] == (0, HEADER_SIZE)
    assert len(reader.calls) == 2
    assert reader.calls[1] == (HEADER_SIZE + covering[0] * (seg + TAG_SIZE), sum(seg_ct))


def test_decrypt_range_one_frame_of_many() -> None:
    frame = 512 * 512 * 2
    plain = b"".join(bytes([i]) * frame for i in range(8))
    blob = encrypt_object(plain, KEY, object_id=OID)
    reader = Reader(blob)
    got = decrypt_range(reader, KEY, object_id=OID, offset=5 * frame, length=frame)
    assert got == bytes([5]) * frame
    assert reader.bytes_read < frame + 2 * (SEGMENT_SIZE_DEFAULT + TAG_SIZE) + HEADER_SIZE


def test_decrypt_range_detects_tampering_in_range() -> None:
    blob = bytearray(encrypt_object(payload(1000), KEY, object_id=OID, segment_size=SEG))
    blob[HEADER_SIZE + 3 * (SEG + TAG_SIZE) + 5] ^= 1
    with pytest.raises(IntegrityError):
        decrypt_range(Reader(bytes(blob)), KEY, object_id=OID, offset=3 * SEG, length=10)
    # segments outside the range are not read, so a read elsewhere still succeeds
    assert decrypt_range(Reader(bytes(blob)), KEY, object_id=OID, offset=0, length=10) == payload(10)


def test_decrypt_range_short_read_is_an_integrity_error() -> None:
    blob = encrypt_object(payload(1000), KEY, object_id=OID, segment_size=SEG)
    with pytest.raises(IntegrityError):
        decrypt_range(Reader(blob[:-1]), KEY, object_id=OID, offset=900, length=100)
    with pytest.raises(IntegrityError):
        decrypt_range(Reader(blob[:10]), KEY, object_id=OID, offset=0, length=1)


def test_decrypt_range_forged_length_cannot_hide_data() -> None:
    """Shrinking the header's length (to make a read past it look empty) fails verification."""
    blob = bytearray(encrypt_object(payload(1000), KEY, object_id=OID, segment_size=SEG))
    struct.pack_into(">Q", blob, 10, 100)
    with pytest.raises(IntegrityError):
        decrypt_range(Reader(bytes(blob)), KEY, object_id=OID, offset=500, length=10)


def test_decrypt_range_rejects_negative_arguments() -> None:
    blob = encrypt_object(payload(10), KEY, object_id=OID, segment_size=SEG)
    with pytest.raises(InvalidInput):
        decrypt_range(Reader(blob), KEY, object_id=OID, offset=-1, length=1)
    with pytest.raises(InvalidInput):
        decrypt_range(Reader(blob), KEY, object_id=OID, offset=0, length=-1)


# -- tampering ------------------------------------------------------------------------------------

SIZE = 5 * SEG + 10
BLOB = encrypt_object(payload(SIZE), KEY, object_id=OID, segment_size=SEG)


@settings(max_examples=300, deadline=None)
@given(position=st.integers(0, len(BLOB) - 1), bit=st.integers(0, 7))
def test_flipping_any_bit_is_detected(position: int, bit: int) -> None:
    blob = bytearray(BLOB)
    blob[position] ^= 1 << bit
    with pytest.raises(IntegrityError):
        decrypt_object(bytes(blob), KEY, object_id=OID)


@pytest.mark.parametrize("n_segments", [0, 1, 2, 5])
def test_truncation_at_a_segment_boundary_is_detected(n_segments: int) -> None:
    with pytest.raises(IntegrityError):
        decrypt_object(BLOB[: HEADER_SIZE + n_segments * (SEG + TAG_SIZE)], KEY, object_id=OID)


def test_dropping_the_last_segment_even_with_fixed_up_length_is_detected() -> None:
    segs = segments(BLOB, SEG)
    header = bytearray(BLOB[:HEADER_SIZE])
    struct.pack_into(">Q", header, 10, 5 * SEG)  # claim the object ends where segment 4 ends
    with pytest.raises(IntegrityError):
        decrypt_object(bytes(header) + b"".join(segs[:-1]), KEY, object_id=OID)
    with pytest.raises(IntegrityError):
        decrypt_object(BLOB[:HEADER_SIZE] + b"".join(segs[:-1]), KEY, object_id=OID)


def test_extension_is_detected() -> None:
    with pytest.raises(IntegrityError):
        decrypt_object(BLOB + b"\x00", KEY, object_id=OID)
    with pytest.raises(IntegrityError):
        decrypt_object(BLOB + segments(BLOB, SEG)[0], KEY, object_id=OID)


def test_swapping_two_segments_is_detected() -> None:
    segs = segments(BLOB, SEG)
    segs[1], segs[2] = segs[2], segs[1]
    with pytest.raises(IntegrityError):
        decrypt_object(BLOB[:HEADER_SIZE] + b"".join(segs), KEY, object_id=OID)


def test_swapping_a_segment_between_objects_is_detected() -> None:
    """Same key, same nonce prefix, same length: only the object id differs."""
    a = encrypt_object(payload(SIZE), KEY, object_id=b"object-a", segment_size=SEG, nonce_prefix=PREFIX)
    b = encrypt_object(payload(SIZE)[::-1], KEY, object_id=b"object-b", segment_size=SEG, nonce_prefix=PREFIX)
    assert a[:HEADER_SIZE] == b[:HEADER_SIZE]
    sa, sb = segments(a, SEG), segments(b, SEG)
    mixed = a[:HEADER_SIZE] + b"".join([sa[0], sb[1], *sa[2:]])
    with pytest.raises(IntegrityError):
        decrypt_object(mixed, KEY, object_id=b"object-a")
    with pytest.raises(IntegrityError):  # a whole blob under another object's id
        decrypt_object(a, KEY, object_id=b"object-b")


@pytest.mark.parametrize("new_length", [0, 1, SIZE - 1, SIZE + 1])
def test_changing_the_header_length_is_detected(new_length: int) -> None:
    blob = bytearray(BLOB)
    struct.pack_into(">Q", blob, 10, new_length)
    with pytest.raises(IntegrityError):
        decrypt_object(bytes(blob), KEY, object_id=OID)


def test_changing_the_segment_size_is_detected() -> None:
    blob = bytearray(BLOB)
    struct.pack_into(">I", blob, 6, SEG * 2)
    with pytest.raises(IntegrityError):
        decrypt_object(bytes(blob), KEY, object_id=OID)


def test_wrong_key_is_an_integrity_error_with_one_message() -> None:
    with pytest.raises(IntegrityError) as wrong_key:
        decrypt_object(BLOB, OTHER_KEY, object_id=OID)
    with pytest.raises(IntegrityError) as truncated:
        decrypt_object(BLOB[:-1], KEY, object_id=OID)
    with pytest.raises(IntegrityError) as garbage:
        decrypt_object(b"not an envelope at all, no", KEY, object_id=OID)
    assert str(wrong_key.value) == str(truncated.value) == str(garbage.value)


@pytest.mark.parametrize("bad", [b"", b"MVEN", b"XXXX" + BLOB[4:], BLOB[:4] + b"\x02" + BLOB[5:]])
def test_not_an_envelope(bad: bytes) -> None:
    with pytest.raises(IntegrityError):
        decrypt_object(bad, KEY, object_id=OID)


# -- caller errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [b"", bytes(16), bytes(24), bytes(33)])
def test_only_aes256_keys(key: bytes) -> None:
    with pytest.raises(InvalidInput):
        encrypt_object(b"x", key, object_id=OID)
    with pytest.raises(InvalidInput):
        decrypt_object(BLOB, key, object_id=OID)


@pytest.mark.parametrize("seg", [0, 1, 15, 16 * 1024 * 1024 + 1])
def test_segment_size_limits(seg: int) -> None:
    with pytest.raises(InvalidInput):
        encrypt_object(b"x", KEY, object_id=OID, segment_size=seg)


def test_nonce_prefix_must_be_seven_bytes() -> None:
    with pytest.raises(InvalidInput):
        encrypt_object(b"x", KEY, object_id=OID, nonce_prefix=b"123456")


# -- speed ----------------------------------------------------------------------------------------


def test_half_a_mebibyte_is_fast() -> None:
    data = payload(256) * 2048  # 512 KiB
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        blob = encrypt_object(data, KEY, object_id=OID)
        assert decrypt_object(blob, KEY, object_id=OID) == data
        best = min(best, time.perf_counter() - t0)
    assert best < 0.05, f"encrypt+decrypt of 512 KiB took {best * 1000:.1f} ms"


@given(size=st.integers(0, 5 * SEG + 3))
def test_decrypting_into_a_buffer_gives_the_same_bytes(size: int) -> None:
    data = payload(size)
    blob = encrypt_object(data, KEY, object_id=OID, segment_size=SEG)
    out = bytearray(size)
    decrypt_object_into(blob, KEY, object_id=OID, out=memoryview(out))
    assert out == data
    for wrong in (size + 1, max(size - 1, 0) if size else 1):
        with pytest.raises(IntegrityError):
            decrypt_object_into(blob, KEY, object_id=OID, out=memoryview(bytearray(wrong)))


def test_a_header_claiming_a_huge_length_allocates_nothing() -> None:
    blob = bytearray(encrypt_object(payload(100), KEY, object_id=OID, segment_size=SEG))
    struct.pack_into(">Q", blob, 10, 2**62)  # the plaintext length field
    with pytest.raises(IntegrityError):
        decrypt_object(bytes(blob), KEY, object_id=OID)
