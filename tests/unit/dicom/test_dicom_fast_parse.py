"""The raw-bytes fast path of ``parse_instance`` against the pydicom path it replaces.

Oracles: ``legacy_parse.parse_instance`` (a frozen copy of the parser before the fast path: pydicom
reads the file, ``dataset_to_json`` converts it) for every outcome, refusals included, and
``dataset_to_json(dcmread(...))`` for the metadata.
"""

from __future__ import annotations

import io
import json
import struct
import warnings
from pathlib import Path
from typing import Any

import legacy_parse
import pydicom
import pytest
from dicom_testkit import make_dataset, to_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless

import medvault.errors
from medvault.dicom.dicomjson import PIXEL_DATA_TAGS, dataset_to_json
from medvault.dicom.parse import ParsedInstance, is_valid_uid, parse_instance
from medvault.errors import InvalidInput, MedvaultError


def _bulk(path: str) -> str:
    return path


def _outcome(parse: Any, data: bytes) -> tuple[str, Any]:
    try:
        parsed = parse(data)
    except Exception as exc:
        return "error", (type(exc).__name__, str(exc))
    return "ok", parsed


def _json_dataset(ds: pydicom.Dataset) -> dict[str, Any]:
    return dataset_to_json(ds, bulk_data_uri=_bulk)


def assert_equivalent(data: bytes, *, compare_dataset: bool = True) -> ParsedInstance | None:
    """Same outcome as the pydicom path: the same refusal, or the same parsed instance."""
    kind, new = _outcome(parse_instance, data)
    old_kind, old = _outcome(legacy_parse.parse_instance, data)
    if old_kind == "error" and not issubclass(getattr(medvault.errors, old[0], Exception), MedvaultError):
        # The old path let pydicom's own exception escape (a crash on malformed data): the current
        # one must refuse the file cleanly instead.
        assert kind == "error" and new[0] == "InvalidInput", (new, old)
        return None
    if kind == "error" and old_kind == "ok" and "is not a valid UID" in new[1]:
        # Ingest refuses UIDs that break PS3.5 §9.1 (issue 12, item 10), which the old path took:
        # the refusal must be right, i.e. one of the instance's UIDs really is invalid.
        uids = (old.sop_class_uid, old.sop_instance_uid, old.study_instance_uid, old.series_instance_uid)
        assert not all(is_valid_uid(u) for u in uids), (new, uids)
        return None
    assert (kind, new if kind == "error" else None) == (old_kind, old if old_kind == "error" else None)
    if kind == "error":
        return None
    assert isinstance(new, ParsedInstance)
    assert new.metadata == old.metadata
    assert json.dumps(new.metadata) == json.dumps(old.metadata)  # key order and number spelling too
    for name in (
        "sop_class_uid",
        "sop_instance_uid",
        "study_instance_uid",
        "series_instance_uid",
        "transfer_syntax_uid",
        "number_of_frames",
        "meta_disagreements",
    ):
        assert getattr(new, name) == getattr(old, name), name
    assert [f.fragments for f in new.frames] == [f.fragments for f in old.frames]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oracle = dataset_to_json(pydicom.dcmread(io.BytesIO(data)), bulk_data_uri=_bulk)
        assert new.metadata == oracle
        if compare_dataset:
            assert _json_dataset(new.dataset) == _json_dataset(old.dataset)
            for tag in PIXEL_DATA_TAGS:
                assert (tag in new.dataset) == (tag in old.dataset)
                if tag in old.dataset:
                    assert (new.dataset[tag].VR, new.dataset[tag].value) == (old.dataset[tag].VR, b"")
    return new


def _fast(parsed: ParsedInstance | None) -> bool:
    return parsed is not None and isinstance(parsed.source, bytes)


def _bundled_files() -> list[Path]:
    found = get_testdata_file("CT_small.dcm", download=False)
    if not found:
        return []
    return sorted(p for p in Path(str(found)).parent.rglob("*") if p.is_file())


BUNDLED = _bundled_files()


@pytest.mark.parametrize("path", BUNDLED, ids=[p.name for p in BUNDLED])
def test_bundled_file_equivalent(path: Path) -> None:
    assert_equivalent(path.read_bytes())


def test_common_files_take_the_fast_path() -> None:
    if not BUNDLED:
        pytest.skip("pydicom test files are not bundled here")
    by_name = {p.name: p for p in BUNDLED}
    for name in ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "SC_rgb_rle_2frame.dcm"):
        parsed = assert_equivalent(by_name[name].read_bytes())
        assert _fast(parsed), name
    # Implicit VR and big endian are read by pydicom.
    for name in ("MR_small_implicit.dcm", "MR_small_bigendian.dcm"):
        parsed = assert_equivalent(by_name[name].read_bytes())
        assert parsed is not None and not _fast(parsed), name


def test_generated_ct_files_equivalent(tmp_path: Path) -> None:
    """The files the benchmark ingests (medvault.sample CT) take the fast path, with equal results."""
    from medvault.sample import generate_study

    files = generate_study(
        tmp_path, seed=3, series=2, instances=5, rows=128, cols=128, patient_name="DOE^JANE", patient_id="P3"
    )
    for path in files:
        assert _fast(assert_equivalent(path.read_bytes()))


def test_builder_instances_equivalent() -> None:
    cases = [
        make_dataset(),
        make_dataset(frames=3, bits=8),
        make_dataset(samples=3, bits=8, rows=3, columns=5),
        make_dataset(SpecificCharacterSet="ISO_IR 192", PatientName="Müller^Jörg=山田^太郎=やまだ^たろう"),
        make_dataset(SpecificCharacterSet="ISO_IR 100", PatientName="Müller^Jörg", StudyDescription="Ähre"),
        # ISO_IR 144 (Cyrillic) falls back to pydicom
        make_dataset(SpecificCharacterSet="ISO_IR 144", PatientName="\u0416\u0443\u043a^\u042f"),
        make_dataset(ImageType=["ORIGINAL", "PRIMARY", ""], WindowCenter=["40", "400"], InstanceNumber="7"),
    ]
    fast = 0
    for ds in cases:
        fast += _fast(assert_equivalent(to_bytes(ds)))
    assert fast == len(cases) - 1
    frames = [bytes([i]) * 16 for i in range(3)]
    ds = make_dataset(frames=3, bits=8, transfer_syntax=RLELossless, pixel_data=encapsulate(frames))
    ds["PixelData"].VR = "OB"
    assert assert_equivalent(to_bytes(ds)) is not None


def test_truncations_and_byte_flips_keep_refusals() -> None:
    seeds = [to_bytes(make_dataset(frames=2, bits=8, ReferencedImageSequence=_ref_sequence()))]
    if BUNDLED:
        by_name = {p.name: p for p in BUNDLED}
        seeds += [by_name[n].read_bytes() for n in ("CT_small.dcm", "SC_rgb_rle_2frame.dcm")]
    for data in seeds:
        step = max(1, (len(data) - 128) // 150)
        for cut in range(128, len(data), step):
            assert_equivalent(data[:cut], compare_dataset=False)
        for pos in range(132, min(len(data), 2500), 7):
            for value in (0x00, 0xFF, 0x5C, 0x20):
                assert_equivalent(data[:pos] + bytes([value]) + data[pos + 1 :], compare_dataset=False)


def _ref_sequence() -> list[pydicom.Dataset]:
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    return [item, pydicom.Dataset()]


# --- hypothesis: raw data sets written byte by byte -------------------------------------------

LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
TEXT_VRS = ["AE", "AS", "CS", "DA", "DT", "TM", "UI", "UR", "SH", "LO", "UC", "ST", "LT", "UT", "PN"]
NUMBER_VRS = ["US", "SS", "UL", "SL", "FL", "FD", "SV", "UV", "AT"]
BINARY_VRS = ["OB", "OD", "OF", "OL", "OV", "OW", "UN"]
# Tags of several kinds: standard (their dictionary VR or not), private creators and private data,
# LUT descriptors, a repeating group, the tags parse_instance reads itself.
TAG_POOL = [
    0x00080008, 0x00080020, 0x00080030, 0x00080050, 0x00080060, 0x00080090, 0x00081030, 0x0008103E,
    0x00100010, 0x00100020, 0x00100030, 0x00101010, 0x00104000, 0x00181063, 0x00200013, 0x00200032,
    0x00201041, 0x00280030, 0x00281050, 0x00281101, 0x00283002, 0x00291010, 0x00291011, 0x00291110,
    0x00291111, 0x00291210, 0x00330001, 0x00331010, 0x00540016, 0x60003000, 0x00090010, 0x00091001,
    0x00091002, 0x0040A730, 0x00081155, 0x00400275, 0x00280008, 0x00280004, 0x0011FFFF, 0x00500004,
]  # fmt: skip
UIDS = {
    0x00080016: b"1.2.840.10008.5.1.4.1.1.7",
    0x00080018: b"1.2.826.0.1.3680043.8.498.3",
    0x0020000D: b"1.2.826.0.1.3680043.8.498.1",
    0x0020000E: b"1.2.826.0.1.3680043.8.498.2",
}
CHARSETS = [
    None, b"", b"ISO_IR 6", b"ISO_IR 100", b"ISO_IR 192", b"ISO_IR 100 ", b"ISO_IR 144",
    b"ISO_IR 192\\GB18030", b"\\ISO 2022 IR 87", b"ISO 2022 IR 100", b"GB18030", b"bogus", b"ISO_IR 100\x00",
]  # fmt: skip
PIECES = [
    "A", "b", "7", " ", "\\", "=", "^", "\x00", "é", "Ä", "山", "ø", "-", ".", "+", "e", "1.5", "\t",
    "\x1b$B", "\xa0", "NaN", "inf", "  ", "\u2028",
]  # fmt: skip


def element(tag: int, vr: str, value: bytes, *, undefined: bool = False) -> bytes:
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    length = 0xFFFFFFFF if undefined else len(value)
    if vr in LONG_VRS:
        return head + struct.pack("<HI", 0, length) + value
    return head + struct.pack("<H", length) + value


def sequence(tag: int, items: list[bytes], *, undefined: bool, items_undefined: bool) -> bytes:
    body = b""
    for item in items:
        if items_undefined:
            body += b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + item + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
        else:
            body += b"\xfe\xff\x00\xe0" + struct.pack("<I", len(item)) + item
    if undefined:
        return element(tag, "SQ", body + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", undefined=True)
    return element(tag, "SQ", body)


def part10(body: bytes, ts: bytes = b"1.2.840.10008.1.2.1\x00") -> bytes:
    meta = (
        element(0x00020001, "OB", b"\x00\x01")
        + element(0x00020002, "UI", UIDS[0x00080016] + b"\x00")
        + element(0x00020003, "UI", UIDS[0x00080018] + b"\x00")
        + element(0x00020010, "UI", ts)
    )
    return b"\x00" * 128 + b"DICM" + element(0x00020000, "UL", struct.pack("<I", len(meta))) + meta + body


TAME_CHARSETS = [None, b"", b"ISO_IR 6", b"ISO_IR 100", b"ISO_IR 192", b"ISO_IR 100 "]
TAME_PIECES = [p for p in PIECES if "\x1b" not in p]


@st.composite
def text_bytes(draw: st.DrawFn, codec: str, tame: bool = False) -> bytes:
    if not tame and draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=24))
    text = "".join(draw(st.lists(st.sampled_from(TAME_PIECES if tame else PIECES), max_size=10)))
    return text.encode(codec, errors="replace")


@st.composite
def value_for(draw: st.DrawFn, vr: str, codec: str, tame: bool) -> bytes:
    if vr in ("IS", "DS"):
        numbers = st.sampled_from(
            ["1", " 2", "-3 ", "4.5", "1e3", "x", "", "007", "+8", "1.0", "nan", "1e999", "1234567890123"]
        )
        return "\\".join(draw(st.lists(numbers, max_size=4))).encode("ascii")
    if vr in TEXT_VRS:
        return draw(text_bytes(codec, tame))
    if vr in NUMBER_VRS:
        size = {"US": 2, "SS": 2, "AT": 4, "UL": 4, "SL": 4, "FL": 4}.get(vr, 8)
        count = draw(st.integers(0, 4))
        extra = draw(st.sampled_from([0, 0, 0, 1]))
        return draw(st.binary(min_size=size * count + extra, max_size=size * count + extra))
    if draw(st.integers(0, 15)) == 0:
        return bytes(draw(st.integers(1020, 1100)))  # around the bulk data threshold
    return draw(st.binary(max_size=20))


@st.composite
def data_set(draw: st.DrawFn, codec: str, depth: int, tame: bool) -> bytes:
    tags = draw(st.lists(st.sampled_from(TAG_POOL), max_size=8, unique=True))
    if tame or draw(st.integers(0, 19)):
        tags.sort()
    out = b""
    for tag in tags:
        kind = draw(st.integers(0, 9))
        if kind == 0 and depth < 2:
            items = draw(st.lists(data_set(codec, depth + 1, tame), max_size=3))
            out += sequence(tag, items, undefined=draw(st.booleans()), items_undefined=draw(st.booleans()))
            continue
        vr = draw(st.sampled_from(TEXT_VRS + NUMBER_VRS + BINARY_VRS + ["IS", "DS", "PN", "PN", "LO"]))
        if tame and vr == "UN":
            vr = "OB"
        out += element(tag, vr, draw(value_for(vr, codec, tame)))
    return out


@st.composite
def instance(draw: st.DrawFn, tame: bool = False) -> bytes:
    """A Part 10 file; ``tame``: only what the fast path is meant to take (mostly)."""
    charset = draw(st.sampled_from(TAME_CHARSETS if tame else CHARSETS))
    codec = "utf-8" if charset and b"192" in charset else "latin-1"
    head = b""
    if charset is not None:
        vr = "CS" if tame else draw(st.sampled_from(["CS", "CS", "CS", "LO"]))
        head += element(0x00080005, vr, charset)
    head += element(0x00080016, "UI", UIDS[0x00080016])
    head += element(0x00080018, "UI", UIDS[0x00080018])
    body = draw(data_set(codec, 0, tame))
    if draw(st.integers(0, 4)) == 0:
        # a sequence whose items carry their own Specific Character Set
        charsets = TAME_CHARSETS if tame else CHARSETS
        inner = element(0x00080005, "CS", draw(st.sampled_from([c for c in charsets if c is not None])))
        inner += element(0x00100010, "PN", draw(text_bytes(codec, tame)))
        body += sequence(0x00400275, [inner], undefined=draw(st.booleans()), items_undefined=False)
    tail = element(0x0020000D, "UI", UIDS[0x0020000D]) + element(0x0020000E, "UI", UIDS[0x0020000E])
    pixel = b""
    if draw(st.booleans()):
        pixel = (
            element(0x00280002, "US", b"\x01\x00")
            + element(0x00280004, "CS", b"MONOCHROME2 ")
            + element(0x00280008, "IS", draw(st.sampled_from([b"1 ", b"2 ", b"", b"0 ", b"x "])))
            + element(0x00280010, "US", b"\x02\x00")
            + element(0x00280011, "US", b"\x02\x00")
            + element(0x00280100, "US", b"\x08\x00")
            + element(0x7FE00010, "OB", bytes(range(8)))
        )
    # Sort the top level elements by tag (the generated body may hold out-of-order tags on purpose).
    return part10(_sorted_top(head + body + tail) + pixel)


def _sorted_top(raw: bytes) -> bytes:
    chunks = []
    pos = 0
    while pos < len(raw):
        tag = struct.unpack_from("<HH", raw, pos)
        vr = raw[pos + 4 : pos + 6].decode("ascii")
        if vr in LONG_VRS:
            length = struct.unpack_from("<I", raw, pos + 8)[0]
            start = pos + 12
        else:
            length = struct.unpack_from("<H", raw, pos + 6)[0]
            start = pos + 8
        if length == 0xFFFFFFFF:
            end = _undefined_end(raw, start)
        else:
            end = start + length
        chunks.append((tag, raw[pos:end]))
        pos = end
    return b"".join(chunk for _, chunk in sorted(chunks, key=lambda c: c[0]))


def _undefined_end(raw: bytes, pos: int) -> int:
    """End of an undefined-length sequence written by ``sequence`` (items may nest)."""
    depth = 1
    while depth:
        tag = raw[pos : pos + 4]
        length = struct.unpack_from("<I", raw, pos + 4)[0] if tag[:2] == b"\xfe\xff" else None
        if tag == b"\xfe\xff\xdd\xe0":
            depth -= 1
            pos += 8
        elif tag == b"\xfe\xff\x00\xe0":
            pos += 8 if length == 0xFFFFFFFF else 8 + (length or 0)
        elif tag == b"\xfe\xff\x0d\xe0":
            pos += 8
        else:
            vr = raw[pos + 4 : pos + 6].decode("ascii")
            if vr in LONG_VRS:
                length = struct.unpack_from("<I", raw, pos + 8)[0]
                if length == 0xFFFFFFFF:
                    depth += 1
                    pos += 12
                    continue
                pos += 12 + length
            else:
                pos += 8 + struct.unpack_from("<H", raw, pos + 6)[0]
    return pos


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instance())
def test_generated_instances_equivalent(data: bytes) -> None:
    assert_equivalent(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instance(tame=True))
def test_generated_tame_instances_equivalent(data: bytes) -> None:
    assert_equivalent(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instance(), st.integers(0, 10_000), st.integers(0, 255))
def test_generated_instances_with_a_flipped_byte_equivalent(data: bytes, where: int, value: int) -> None:
    pos = 132 + where % (len(data) - 132)
    assert_equivalent(data[:pos] + bytes([value]) + data[pos + 1 :], compare_dataset=False)


def test_generated_plain_instance_takes_the_fast_path() -> None:
    body = (
        element(0x00080005, "CS", b"ISO_IR 192")
        + element(0x00080016, "UI", UIDS[0x00080016])
        + element(0x00080018, "UI", UIDS[0x00080018])
        + element(0x00100010, "PN", "Yamada^Tarou=山田^太郎=やまだ^たろう\\B^C ".encode())
        + element(0x0020000D, "UI", UIDS[0x0020000D])
        + element(0x0020000E, "UI", UIDS[0x0020000E])
        + sequence(0x00400275, [element(0x00321060, "LO", "Schädel ".encode())], undefined=True,
                   items_undefined=True)
    )  # fmt: skip
    parsed = assert_equivalent(part10(body))
    assert _fast(parsed)
    assert parsed is not None and parsed.metadata["00100010"]["Value"][0]["Ideographic"] == "山田^太郎"


def test_a_partial_binary_value_is_a_clean_refusal() -> None:
    """Found by hypothesis: a private creator written as US with one byte. pydicom raises its own
    exception there; parse_instance must refuse the file with InvalidInput, never crash."""
    data = b"\x00" * 128 + bytes.fromhex(
        "4449434d02000000554c040070000000020001004f4200000200000000010200020055491a00312e322e3834302e3130"
        "3030382e352e312e342e312e312e37000200030055491c00312e322e3832362e302e312e333638303034332e382e3439"
        "382e33000200100055491400312e322e3834302e31303030382e312e322e310008000800414500000800160055491900"
        "312e322e3834302e31303030382e352e312e342e312e312e370800180055491b00312e322e3832362e302e312e333638"
        "303034332e382e3439382e33090010005553010000090001104953000010001000535100000000000010002000535100"
        "000000000010003000535100000000000020000d0055491b00312e322e3832362e302e312e333638303034332e382e34"
        "39382e3120000e0055491b00312e322e3832362e302e312e333638303034332e382e3439382e32400075025351000018"
        "000000feff00e010000000080005004353000010001000504e0000"
    )
    with pytest.raises(InvalidInput, match="cannot be parsed"):
        parse_instance(data)
