"""Parse and validate a DICOM Part 10 instance at ingest, and locate its frames in the file bytes.

SPEC: https://dicom.nema.org/medical/dicom/current/output/html/part10.html#chapter_7 (file format)
SPEC: https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_A.4 (encapsulation)

The file is read twice, both without decoding pixels: once by a small walker over the raw bytes
(checks that every element is complete, finds where each frame lies), once by pydicom
(``dcmread`` without ``force``) for the values. Frame locations are byte ranges in the original
file, so the archive can decrypt one frame's segments without touching the rest.

Fast path (ingest hot spot): explicit VR little endian files that pydicom would read without
surprises are walked once here and their DICOM JSON is built straight from the raw value bytes
(``dicomjson.raw_value_json``), with the same result as the pydicom path; pydicom then reads the
file only if ``ParsedInstance.dataset`` is asked for. Everything else (implicit VR, big endian,
other character sets, anything odd, every refusal) takes the pydicom path. See "fast path" below.

Refusals (all carry no patient values):

- :class:`NotDicom`: no ``DICM`` prefix, no readable file meta, pydicom cannot read it.
- :class:`InvalidInput`: truncated (``truncated at offset N in element (gggg,eeee)``), bad UID
  syntax, pixel data shorter than its frames need,
  frames that cannot be located; :class:`UnsupportedMedia` for the Deflated transfer syntax
  (frames cannot be located in deflated bytes).
- :class:`MissingAttribute`: no SOPClassUID / SOPInstanceUID / StudyInstanceUID / SeriesInstanceUID.
- :class:`TooLarge`: more than ``max_bytes``.

File-meta SOP UIDs that disagree with the data set are tolerated (the data set decides) and
reported in ``ParsedInstance.meta_disagreements``.
"""

from __future__ import annotations

import io
import itertools
import re
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import pydicom.uid
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.hooks import hooks as pydicom_hooks
from pydicom.hooks import raw_element_value, raw_element_vr

from medvault.dicom.dicomjson import (
    CHARSET_VRS,
    PIXEL_DATA_TAGS,
    RAW_CHARSETS,
    RAW_ENCODERS,
    dataset_to_json,
    raw_charset_codec,
)
from medvault.errors import (
    InvalidInput,
    MedvaultError,
    MissingAttribute,
    NotDicom,
    TooLarge,
    UnsupportedMedia,
)

__all__ = [
    "DEFLATED_TRANSFER_SYNTAXES",
    "FrameLocation",
    "ParsedInstance",
    "is_valid_uid",
    "parse_instance",
]

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_TRANSFER_SYNTAXES = frozenset({"1.2.840.10008.1.2.1.99"})
NATIVE_TRANSFER_SYNTAXES = frozenset(
    {IMPLICIT_VR_LITTLE_ENDIAN, "1.2.840.10008.1.2.1", EXPLICIT_VR_BIG_ENDIAN, "1.2.840.10008.1.2.1.99"}
)

_PREAMBLE = 128
_ITEM = 0xFFFEE000
_ITEM_DELIM = 0xFFFEE00D
_SEQ_DELIM = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_STRICT_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_REQUIRED = (
    ("SOPClassUID", 0x00080016),
    ("SOPInstanceUID", 0x00080018),
    ("StudyInstanceUID", 0x0020000D),
    ("SeriesInstanceUID", 0x0020000E),
)


@dataclass(frozen=True)
class FrameLocation:
    """Where one frame lies in the original file: ``(offset, length)`` ranges, in order.

    Native pixel data: one range. Encapsulated: the values of the frame's fragment items (their
    concatenation is the frame's compressed bitstream).
    """

    fragments: tuple[tuple[int, int], ...]

    @property
    def length(self) -> int:
        return sum(length for _, length in self.fragments)

    def read(self, data: bytes) -> bytes:
        """The frame's bytes out of the original file bytes (for tests and small files)."""
        return b"".join(data[o : o + n] for o, n in self.fragments)


@dataclass(frozen=True)
class ParsedInstance:
    """One validated instance.

    ``dataset`` holds every element; the pixel data element is kept with an empty value (its VR
    tells the byte layout of native big-endian frames). Frame bytes come from ``frames``. It is
    read by pydicom on first access (ingest needs only ``metadata``, the UIDs and ``frames``), so
    an instance parsed on the fast path keeps a reference to the file bytes until then.
    """

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    number_of_frames: int
    frames: tuple[FrameLocation, ...]
    metadata: dict[str, Any]
    meta_disagreements: tuple[str, ...] = ()  # file-meta UIDs that differ from the data set
    # The pydicom data set already read (pixel data emptied), or the file bytes to read it from.
    source: Dataset | bytes = field(default=b"", repr=False, compare=False)

    @cached_property
    def dataset(self) -> Dataset:
        if isinstance(self.source, Dataset):
            return self.source
        ds = _read_dataset(self.source)
        _empty_pixel_data(ds)
        return ds


def is_valid_uid(uid: str, *, strict: bool = True) -> bool:
    """PS3.5 §9.1 UID syntax: digits and dots, at most 64 characters, no empty component, and no
    component with a leading zero (``1.02``: "the first digit of each component shall not be zero
    unless the component is a single digit"). Ingest refuses such UIDs (400 / DIMSE 0xC000), as
    docs/dicomweb.md says; ``strict=False`` accepts them, for reading queries leniently.
    """
    pattern = _STRICT_UID_RE if strict else _UID_RE
    return 0 < len(uid) <= 64 and pattern.match(uid) is not None


def _bulk_tag_path(path: str) -> str:
    return path


def parse_instance(
    data: bytes,
    *,
    max_bytes: int | None = None,
    bulk_data_uri: Callable[[str], str] | None = _bulk_tag_path,
) -> ParsedInstance:
    """Parse and validate a DICOM Part 10 file; see the module docstring for the refusals.

    ``metadata`` is :func:`dataset_to_json` of the data set with bulk data referenced through
    ``bulk_data_uri``; by default the reference is the bare tag path (``"7FE00010"``), to be made
    absolute with :func:`medvault.dicom.dicomjson.with_bulk_data_base` when served.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise TooLarge(f"instance is {len(data)} bytes, more than the limit of {max_bytes}")
    if len(data) < _PREAMBLE + 4 or data[_PREAMBLE : _PREAMBLE + 4] != b"DICM":
        raise NotDicom("not a DICOM Part 10 file: no 'DICM' prefix after the 128-byte preamble")
    meta = _read_file_meta(data)
    ts = meta.transfer_syntax
    if ts in DEFLATED_TRANSFER_SYNTAXES:
        raise UnsupportedMedia(
            f"transfer syntax {ts} (deflated) is not accepted: frames cannot be located; "
            "send it uncompressed or with a compressed pixel data transfer syntax"
        )
    if meta.plain and ts not in _NOT_FAST and type(data) is bytes and _pydicom_is_default():
        try:
            return _parse_fast(data, meta, bulk_data_uri)
        except Exception:  # noqa: S110 - _Fallback, a refusal, anything: the pydicom path decides
            pass  # (and words any refusal exactly as it always did)
    try:
        return _parse_with_pydicom(data, meta, bulk_data_uri)
    except MedvaultError:
        raise
    except Exception as exc:  # pydicom's own errors on malformed data: a refusal, never a crash
        raise InvalidInput(
            f"the data set cannot be parsed ({type(exc).__name__}); check the sending application"
        ) from None


def _parse_with_pydicom(
    data: bytes, meta: _FileMeta, bulk_data_uri: Callable[[str], str] | None
) -> ParsedInstance:
    """The reference path: pydicom reads every element, ``dataset_to_json`` converts them."""
    ts = meta.transfer_syntax
    ds = _read_dataset(data)
    walker = _Walker(data, little=ts != EXPLICIT_VR_BIG_ENDIAN, implicit=_looks_implicit(data, meta.end, ts))
    top = walker.walk_dataset(meta.end, len(data))
    if ds.file_meta.get("TransferSyntaxUID") != ts:
        raise InvalidInput("file meta TransferSyntaxUID (0002,0010) could not be read consistently")
    uids: dict[str, str] = {}
    for keyword, tag in _REQUIRED:
        uids[keyword] = _required_uid(ds, keyword, tag)
    meta_disagreements = _meta_disagreements(ds, uids)
    metadata = dataset_to_json(ds, bulk_data_uri=bulk_data_uri)

    pixel = next((e for e in top if e.tag in PIXEL_DATA_TAGS), None)
    number_of_frames = 0
    frames: tuple[FrameLocation, ...] = ()
    if pixel is not None:
        number_of_frames = _number_of_frames(ds)
        if pixel.length == _UNDEFINED:
            frames = _encapsulated_frames(walker, pixel, number_of_frames, lambda: _extended_offset_table(ds))
        else:
            frames = _native_frames(pixel, number_of_frames, ds, big_endian=not walker.little)
    _empty_pixel_data(ds)
    return ParsedInstance(
        source=ds,
        sop_class_uid=uids["SOPClassUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        transfer_syntax_uid=ts,
        number_of_frames=number_of_frames,
        frames=frames,
        metadata=metadata,
        meta_disagreements=meta_disagreements,
    )


def _empty_pixel_data(ds: Dataset) -> None:
    for tag in PIXEL_DATA_TAGS:
        if tag in ds:
            # Keep the element, empty, so its VR (OB/OW: byte order in big endian) stays known.
            vr = _element_vr(ds, tag)
            del ds[tag]
            ds.add_new(tag, vr, b"")


# --- raw walker ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Element:
    tag: int
    vr: bytes | None
    length: int  # _UNDEFINED for undefined length
    value_offset: int
    end: int  # offset just past the element (delimiter included)


@dataclass(frozen=True)
class _FileMeta:
    transfer_syntax: str
    end: int
    media_sop_class: str | None
    media_sop_instance: str | None
    plain: bool = False  # pydicom reads exactly these values (see _plain_meta_element)


def _tag_name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class _Walker:
    """Walks DICOM elements in raw bytes, checking that each one is complete. Never decodes values."""

    def __init__(self, data: bytes, *, little: bool, implicit: bool) -> None:
        self.data = data
        self.little = little
        self.implicit = implicit
        self._u16 = struct.Struct("<H" if little else ">H").unpack_from
        self._u32 = struct.Struct("<I" if little else ">I").unpack_from
        self._le_u32 = struct.Struct("<I").unpack_from
        self._le_u16 = struct.Struct("<H").unpack_from

    def _need(self, pos: int, n: int, end: int, tag: int | None) -> None:
        if pos + n > end:
            where = f" in element {_tag_name(tag)}" if tag is not None else ""
            raise InvalidInput(f"truncated at offset {min(end, len(self.data))}{where}")

    def walk_dataset(
        self,
        pos: int,
        end: int,
        *,
        implicit: bool | None = None,
        little: bool | None = None,
        nested: bool = False,
    ) -> list[_Element]:
        """Elements from ``pos`` to ``end`` (or to an item delimiter when ``nested``)."""
        implicit = self.implicit if implicit is None else implicit
        little = self.little if little is None else little
        u16 = self._u16 if little == self.little else self._le_u16
        u32 = self._u32 if little == self.little else self._le_u32
        data = self.data
        out: list[_Element] = []
        while pos < end:
            self._need(pos, 8, end, None)
            tag = int((u16(data, pos)[0] << 16) | u16(data, pos + 2)[0])
            if tag == _ITEM_DELIM:
                if nested:
                    return [*out, _Element(tag, None, 0, pos + 8, pos + 8)]
                raise InvalidInput(f"unexpected item delimiter at offset {pos}")
            vr: bytes | None
            if implicit or (tag >> 16) == 0xFFFE:
                vr = None
                length = int(u32(data, pos + 4)[0])
                value = pos + 8
            else:
                vr = data[pos + 4 : pos + 6]
                if vr in _LONG_VRS:
                    self._need(pos, 12, end, tag)
                    length = int(u32(data, pos + 8)[0])
                    value = pos + 12
                elif len(vr) == 2 and vr.isalpha() and vr.isupper():
                    length = int(u16(data, pos + 6)[0])
                    value = pos + 8
                else:
                    raise InvalidInput(f"invalid VR at offset {pos + 4} in element {_tag_name(tag)}")
            if length == _UNDEFINED:
                # UN of undefined length is implicit VR little endian inside (PS3.5 §6.2.2).
                inner_implicit = True if vr == b"UN" else implicit
                inner_little = True if vr == b"UN" else little
                stop = self._skip_undefined(value, end, tag, inner_implicit, inner_little)
                out.append(_Element(tag, vr, length, value, stop))
                pos = stop
            else:
                self._need(value, length, end, tag)
                out.append(_Element(tag, vr, length, value, value + length))
                pos = value + length
        if nested:
            raise InvalidInput(f"truncated at offset {end}: item delimiter missing")
        return out

    def items(self, pos: int, end: int, tag: int, *, implicit: bool, little: bool) -> list[_Element]:
        """Items of an undefined-length value, up to and including the sequence delimiter."""
        u16 = self._u16 if little == self.little else self._le_u16
        u32 = self._u32 if little == self.little else self._le_u32
        data = self.data
        out: list[_Element] = []
        while True:
            self._need(pos, 8, end, tag)
            item_tag = int((u16(data, pos)[0] << 16) | u16(data, pos + 2)[0])
            length = int(u32(data, pos + 4)[0])
            if item_tag == _SEQ_DELIM:
                out.append(_Element(item_tag, None, 0, pos + 8, pos + 8))
                return out
            if item_tag != _ITEM:
                raise InvalidInput(f"expected an item tag at offset {pos} in element {_tag_name(tag)}")
            if length == _UNDEFINED:
                inner = self.walk_dataset(pos + 8, end, implicit=implicit, little=little, nested=True)
                stop = inner[-1].end if inner else pos + 8
                out.append(_Element(item_tag, None, length, pos + 8, stop))
                pos = stop
            else:
                self._need(pos + 8, length, end, tag)
                out.append(_Element(item_tag, None, length, pos + 8, pos + 8 + length))
                pos = pos + 8 + length

    def _skip_undefined(self, pos: int, end: int, tag: int, implicit: bool, little: bool) -> int:
        found = self.items(pos, end, tag, implicit=implicit, little=little)
        return found[-1].end


def _read_file_meta(data: bytes) -> _FileMeta:
    walker = _Walker(data, little=True, implicit=False)
    pos = _PREAMBLE + 4
    values: dict[int, str] = {}
    end_of_meta = pos
    plain = True
    last = -1
    while pos + 8 <= len(data) and struct.unpack_from("<H", data, pos)[0] == 0x0002:
        try:
            (element,) = walker.walk_dataset(pos, _next_element_end(data, pos))
        except (InvalidInput, struct.error, ValueError):
            raise NotDicom("file meta information (group 0002) is malformed or truncated") from None
        raw = data[element.value_offset : element.end]
        if element.vr in (b"UI", b"AE", b"SH", b"CS"):
            values[element.tag] = raw.decode("ascii", errors="replace").rstrip("\x00 ")
        plain = plain and element.tag > last and _plain_meta_element(element, raw)
        last = element.tag
        pos = end_of_meta = element.end
    if end_of_meta == _PREAMBLE + 4:
        raise NotDicom("file meta information (group 0002) is missing")
    ts = values.get(0x00020010)
    if not ts:
        raise InvalidInput("file meta lacks TransferSyntaxUID (0002,0010)")
    if not is_valid_uid(ts):
        raise InvalidInput("file meta TransferSyntaxUID (0002,0010) is not a valid UID")
    return _FileMeta(ts, end_of_meta, values.get(0x00020002), values.get(0x00020003), plain)


_PLAIN_UID = re.compile(rb"[0-9.]*[\x00 ]*")
_META_UIDS = frozenset({0x00020002, 0x00020003, 0x00020010})


def _plain_meta_element(element: _Element, raw: bytes) -> bool:
    """Would pydicom read this file meta element without trouble, to the value read here?

    Known VR, whole numbers, and the three UIDs used (media SOP class / instance, transfer
    syntax) as UI made of digits and dots only.
    """
    vr = _VR_STR.get(element.vr or b"")
    if vr is None:
        return False
    if element.tag in _META_UIDS:
        return vr == "UI" and _PLAIN_UID.fullmatch(raw) is not None
    size = _NUMBER_SIZES.get(vr)
    return size is None or len(raw) % size == 0


def _next_element_end(data: bytes, pos: int) -> int:
    """End of the explicit-VR-LE element at ``pos`` (file meta elements have defined lengths)."""
    vr = data[pos + 4 : pos + 6]
    if vr in _LONG_VRS:
        if pos + 12 > len(data):
            raise ValueError("truncated")
        length = struct.unpack_from("<I", data, pos + 8)[0]
        if length == _UNDEFINED:
            raise ValueError("undefined length in file meta")
        return int(pos + 12 + length)
    length = struct.unpack_from("<H", data, pos + 6)[0]
    return int(pos + 8 + length)


def _element_vr(ds: Dataset, tag: int) -> str:
    item = ds.get_item(tag)
    vr = getattr(item, "VR", None)
    if not vr or " or " in str(vr):
        bits = ds.get("BitsAllocated")
        return "OW" if isinstance(bits, int) and bits > 8 else "OB"
    return str(vr)


def _looks_implicit(data: bytes, start: int, ts: str) -> bool:
    """Implicit VR? Like pydicom, believe the first element over the file meta: some writers put
    an implicit VR data set under an explicit transfer syntax, and pydicom reads it as such."""
    if start + 8 > len(data):
        return ts == IMPLICIT_VR_LITTLE_ENDIAN
    vr = data[start + 4 : start + 6]
    return not (vr.isalpha() and vr.isupper())


def _read_dataset(data: bytes) -> Dataset:
    # pydicom warnings can quote element values (PHI): silence them here, where every value is read.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return dcmread(io.BytesIO(data))
        except InvalidDicomError:
            raise NotDicom("pydicom does not recognise this as a DICOM Part 10 file") from None
        except Exception as exc:  # pydicom raises many kinds; never echo their text (values)
            raise InvalidInput(f"the data set cannot be parsed ({type(exc).__name__})") from None


def _required_uid(ds: Dataset, keyword: str, tag: int) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = ds.get(keyword)
        except Exception:
            raise InvalidInput(f"{keyword} {_tag_name(tag)} cannot be decoded") from None
    if value is None or str(value).strip("\x00 ") == "":
        raise MissingAttribute(f"required attribute {keyword} {_tag_name(tag)} is missing or empty")
    if not isinstance(value, str):
        raise InvalidInput(f"{keyword} {_tag_name(tag)} must hold exactly one UID")
    uid = value.strip("\x00 ")
    if not is_valid_uid(uid):
        raise InvalidInput(f"{keyword} {_tag_name(tag)} is not a valid UID (digits and dots, at most 64)")
    return uid


def _meta_disagreements(ds: Dataset, uids: dict[str, str]) -> tuple[str, ...]:
    """File-meta UIDs that disagree with the data set (tolerated: the data set decides).

    Writers that forget to update the file meta after editing a data set are common (pydicom's
    own RT test files are such); Orthanc and dcm4chee accept them, and refusing them would
    lose images. The bytes are kept exactly as sent; the data set's UIDs index them.
    """
    meta = ds.file_meta
    found = []
    for meta_kw, ds_kw in (
        ("MediaStorageSOPInstanceUID", "SOPInstanceUID"),
        ("MediaStorageSOPClassUID", "SOPClassUID"),
    ):
        value = str(meta.get(meta_kw) or "").strip("\x00 ")
        if value and value != uids[ds_kw]:
            found.append(meta_kw)
    return tuple(found)


def _int_attr(ds: Dataset, keyword: str, default: int | None = None) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = ds.get(keyword)
            if value is None or value == "":
                if default is None:
                    raise MissingAttribute(f"pixel data present but {keyword} is missing")
                return default
            return int(value)
        except MissingAttribute:
            raise
        except Exception:
            raise InvalidInput(f"{keyword} is not a valid integer") from None


def _number_of_frames(ds: Dataset) -> int:
    frames = _int_attr(ds, "NumberOfFrames", 1)
    if frames < 1:
        raise InvalidInput("NumberOfFrames (0028,0008) must be at least 1 when pixel data is present")
    return frames


def _native_frames(
    pixel: _Element, frames: int, ds: Dataset, *, big_endian: bool = False
) -> tuple[FrameLocation, ...]:
    rows = _int_attr(ds, "Rows")
    columns = _int_attr(ds, "Columns")
    samples = _int_attr(ds, "SamplesPerPixel", 1)
    bits = _int_attr(ds, "BitsAllocated")
    return _native_layout(
        pixel,
        frames,
        (rows, columns, samples, bits),
        lambda: str(ds.get("PhotometricInterpretation", "")).strip(),
        big_endian=big_endian,
    )


def _native_layout(
    pixel: _Element,
    frames: int,
    image: tuple[int, int, int, int],
    photometric_interpretation: Callable[[], str],
    *,
    big_endian: bool,
) -> tuple[FrameLocation, ...]:
    rows, columns, samples, bits = image
    if pixel.tag == 0x7FE00008:
        bits = 32
    elif pixel.tag == 0x7FE00009:
        bits = 64
    if rows < 1 or columns < 1 or samples < 1 or bits < 1 or (bits != 1 and bits % 8):
        raise InvalidInput(
            "image pixel attributes (Rows, Columns, SamplesPerPixel, BitsAllocated) are invalid"
        )
    frame_bits = rows * columns * samples * bits
    swapped_words = big_endian and pixel.vr == b"OW" and bits == 8
    photometric = photometric_interpretation()
    if photometric == "YBR_FULL_422":
        frame_bits = frame_bits * 2 // 3  # 2 samples' worth per pixel pair (PS3.3 C.7.6.3.1.2)
    if frame_bits * frames > pixel.length * 8:
        raise InvalidInput(
            f"PixelData is {pixel.length} bytes, shorter than the {frames} frame(s) it should hold "
            "(truncated or wrong image pixel attributes)"
        )
    out = []
    for i in range(frames):
        start_bit = i * frame_bits
        start = start_bit // 8
        stop = -(-(start_bit + frame_bits) // 8)
        if swapped_words and stop % 2:
            # Big-endian OW holding 8-bit samples: bytes are swapped in pairs, so a frame must
            # cover whole words (exact only for single frames or even frame sizes; retired TS).
            stop = min(stop + 1, pixel.length)
        out.append(FrameLocation(((pixel.value_offset + start, stop - start),)))
    return tuple(out)


_JPEG_SOI = b"\xff\xd8"
_J2K_SOC = b"\xff\x4f\xff\x51"
_JP2_SIG = b"\x00\x00\x00\x0cjP  "


def _encapsulated_frames(
    walker: _Walker, pixel: _Element, frames: int, extended_offset_table: Callable[[], list[int] | None]
) -> tuple[FrameLocation, ...]:
    items = walker.items(pixel.value_offset, len(walker.data), pixel.tag, implicit=False, little=True)
    items = items[:-1]  # the sequence delimiter
    if not items or any(item.length == _UNDEFINED for item in items):
        raise InvalidInput("encapsulated PixelData lacks its Basic Offset Table item")
    bot, fragments = items[0], items[1:]
    if not fragments:
        raise InvalidInput("encapsulated PixelData holds no fragments")
    first = fragments[0].value_offset - 8  # offsets count from the first fragment's item tag
    relative = [f.value_offset - 8 - first for f in fragments]
    data = walker.data

    def by_starts(starts: list[int]) -> tuple[FrameLocation, ...]:
        index = {offset: i for i, offset in enumerate(relative)}
        try:
            positions = [index[s] for s in starts]
        except KeyError:
            raise InvalidInput("PixelData offset table does not point at fragment items") from None
        if positions != sorted(positions) or (positions and positions[0] != 0):
            raise InvalidInput("PixelData offset table is not increasing from the first fragment")
        bounds = [*positions, len(fragments)]
        return tuple(
            FrameLocation(tuple((f.value_offset, f.length) for f in fragments[a:b]))
            for a, b in itertools.pairwise(bounds)
        )

    eot = extended_offset_table()
    if eot is not None:
        if len(eot) != frames:
            raise InvalidInput("ExtendedOffsetTable (7FE0,0001) does not list NumberOfFrames entries")
        return by_starts(eot)
    if bot.length:
        if bot.length % 4:
            raise InvalidInput("Basic Offset Table length is not a multiple of 4")
        starts = list(struct.unpack_from(f"<{bot.length // 4}I", data, bot.value_offset))
        if len(starts) != frames:
            raise InvalidInput("Basic Offset Table does not list NumberOfFrames entries")
        return by_starts(starts)
    if len(fragments) == frames:
        return tuple(FrameLocation(((f.value_offset, f.length),)) for f in fragments)
    if frames == 1:
        return (FrameLocation(tuple((f.value_offset, f.length) for f in fragments)),)
    # No offset table and several fragments per frame: a frame starts where a codestream starts.
    starts = [
        rel
        for rel, f in zip(relative, fragments, strict=True)
        if data[f.value_offset : f.value_offset + 8].startswith((_JPEG_SOI, _J2K_SOC, _JP2_SIG))
    ]
    if len(starts) == frames and starts[0] == 0:
        return by_starts(starts)
    raise InvalidInput(f"cannot locate {frames} frames in {len(fragments)} fragments without an offset table")


def _extended_offset_table(ds: Dataset) -> list[int] | None:
    raw = ds.get("ExtendedOffsetTable")
    if raw is None:
        return None
    value = bytes(raw) if isinstance(raw, bytes | bytearray) else b""
    return _offsets_from_table(value)


def _offsets_from_table(value: bytes) -> list[int] | None:
    if not value:
        return None
    if len(value) % 8:
        raise InvalidInput("ExtendedOffsetTable (7FE0,0001) length is not a multiple of 8")
    return list(struct.unpack(f"<{len(value) // 8}Q", value))


# --- fast path: DICOM JSON and attributes straight from the raw bytes ---------------------------
#
# For explicit VR little endian data sets that pydicom would read without surprises, the elements
# are walked and encoded here (dicomjson.raw_value_json) instead of through pydicom's Dataset,
# RawDataElement conversion hooks and Tag objects; the pydicom Dataset is then read only if someone
# asks for ``ParsedInstance.dataset``. The result is the same as ``_parse_with_pydicom``'s. Anything
# this path is not sure about raises ``_Fallback`` (or any refusal) and ``_parse_with_pydicom`` runs
# instead, from scratch: it decides every refusal, so errors keep their wording and precedence.
#
# Fast-path conditions (else fallback): transfer syntax explicit VR little endian (not implicit, big
# endian, deflated or a pydicom private one) and the data set really explicit; pydicom's reading
# configuration and hooks at their defaults; file meta with known VRs and plain UIDs; in every data
# set (items too): known VRs, strictly ascending tags, no group 0000-0002 at top level, defined
# lengths except for sequences and (encapsulated) pixel data, sequences and items well formed and
# exactly filling their defined lengths, explicit VR inside items; Specific Character Set absent or
# one of dicomjson.RAW_CHARSETS, coded as CS, and no sequence or charset-dependent text before it;
# no escape sequences or undecodable bytes in charset-dependent text; UN values that pydicom would
# re-type (dictionary tags, private creators, private tags with their creator present); AT values
# of partial length; LUT descriptors; required UIDs and image pixel attributes that are absent,
# multi-valued or not plain digits (their refusals come from the pydicom path).


class _Fallback(Exception):
    """Internal: the fast path is not sure; take the pydicom path."""


_NOT_FAST = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN, *DEFLATED_TRANSFER_SYNTAXES})
_KNOWN_VRS = (
    "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV"
)
_VR_STR: dict[bytes, str] = {vr.encode("ascii"): vr for vr in _KNOWN_VRS.split()}
_NUMBER_SIZES = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "SV": 8, "UV": 8, "AT": 4}
_BINARY = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_BULK_THRESHOLD = 1024  # dataset_to_json's default, which parse_instance uses
_LUT_DESCRIPTORS = frozenset({0x00281101, 0x00281102, 0x00281103, 0x00283002})
_HEADER = struct.Struct("<HH2sH").unpack_from
_LE_U32 = struct.Struct("<I").unpack_from
_LE_U16 = struct.Struct("<H").unpack_from
_CHARSET = 0x00080005
_ATTRIBUTES = frozenset(
    {
        0x00080016, 0x00080018, 0x0020000D, 0x0020000E,  # required UIDs
        0x00280002, 0x00280004, 0x00280008, 0x00280010, 0x00280011, 0x00280100,  # image pixel
        0x7FE00001,  # Extended Offset Table
    }
)  # fmt: skip


def _pydicom_is_default() -> bool:
    """pydicom reads and converts as the fast path assumes (its defaults; checked per call, cheap)."""
    settings = pydicom_config.settings
    return (
        pydicom_hooks.raw_element_vr is raw_element_vr
        and pydicom_hooks.raw_element_value is raw_element_value
        and not pydicom_hooks.raw_element_kwargs
        and pydicom_config.data_element_callback is None
        and not pydicom_config.datetime_conversion
        and not pydicom_config.use_none_as_empty_text_VR_value
        and pydicom_config.replace_un_with_known_vr
        and not pydicom_config.convert_wrong_length_to_UN
        and pydicom_config.assume_implicit_vr_switch
        and settings.infer_sq_for_un_vr
        and settings.reading_validation_mode == pydicom_config.WARN
        and not pydicom.uid.PrivateTransferSyntaxes
    )


@dataclass
class _Top:
    """What the fast scan keeps of the top-level data set besides its JSON."""

    attributes: dict[int, tuple[str, int, int]] = field(default_factory=dict)  # tag -> vr, offset, length
    pixel: _Element | None = None


class _FastScanner:
    def __init__(self, data: bytes, uri: Callable[[str], str] | None) -> None:
        self.data = data
        self.uri = uri

    def dataset(
        self, pos: int, end: int, encoding: str, prefix: str, *, delimited: bool, top: _Top | None
    ) -> tuple[dict[str, Any], int]:
        """JSON of the data set from ``pos``: up to ``end``, or to its item delimiter when
        ``delimited``; and the offset just past it."""
        data = self.data
        uri = self.uri
        header = _HEADER
        vr_str = _VR_STR
        encoders = RAW_ENCODERS
        out: dict[str, Any] = {}
        last = 0x0002FFFF if top is not None else -1
        charset_dependent_seen = False
        creators: set[int] | None = None
        while pos < end:
            if pos + 8 > end:
                raise _Fallback
            group, element, vr_bytes, length = header(data, pos)
            tag = group << 16 | element
            if group == 0xFFFE:
                if delimited and tag == _ITEM_DELIM and length == 0:
                    return out, pos + 8
                raise _Fallback
            if tag <= last:
                raise _Fallback
            last = tag
            vr = vr_str.get(vr_bytes)
            if vr is None:
                raise _Fallback
            if vr_bytes in _LONG_VRS:
                if pos + 12 > end:
                    raise _Fallback
                length = _LE_U32(data, pos + 8)[0]
                value = pos + 12
            else:
                value = pos + 8
            key = f"{tag:08X}"
            if length == _UNDEFINED:
                if vr == "SQ":
                    charset_dependent_seen = True
                    items, pos = self.sequence(value, end, None, encoding, prefix + key)
                    if element and tag != _TRAILING_PADDING:
                        out[key] = {"vr": vr, "Value": items} if items else {"vr": vr}
                    continue
                if tag not in PIXEL_DATA_TAGS or vr not in ("OB", "OW"):
                    raise _Fallback
                pos = self.encapsulated_end(value, end, tag)
                if top is not None and top.pixel is None:
                    top.pixel = _Element(tag, vr_bytes, _UNDEFINED, value, pos)
                if uri is not None:
                    out[key] = {"vr": vr, "BulkDataURI": uri(prefix + key)}
                continue
            stop = value + length
            if stop > end:
                raise _Fallback
            pos = stop
            if top is not None:
                if tag in PIXEL_DATA_TAGS:
                    if top.pixel is None:
                        top.pixel = _Element(tag, vr_bytes, length, value, stop)
                elif tag in _ATTRIBUTES:
                    top.attributes[tag] = (vr, value, length)
            if tag in PIXEL_DATA_TAGS:
                if uri is not None:
                    out[key] = {"vr": vr, "BulkDataURI": uri(prefix + key)}
                continue
            if vr == "SQ":
                charset_dependent_seen = True
                items, _ = self.sequence(value, stop, stop, encoding, prefix + key)
                if element and tag != _TRAILING_PADDING:
                    out[key] = {"vr": vr, "Value": items} if items else {"vr": vr}
                continue
            if tag == _CHARSET:
                if vr != "CS" or charset_dependent_seen:
                    raise _Fallback
                encoding = _charset_codec(data[value:stop])
            elif group & 1 and 0x10 <= element <= 0xFF:
                creators = creators or set()
                creators.add(tag)
            if not element or tag == _TRAILING_PADDING:
                continue  # group length, trailing padding: never in the JSON
            if vr in _BINARY:
                if length > _BULK_THRESHOLD:
                    if uri is not None:
                        out[key] = {"vr": vr, "BulkDataURI": uri(prefix + key)}
                    continue
                if vr == "UN" and _un_retyped(tag, creators):
                    raise _Fallback
            elif vr in CHARSET_VRS:
                charset_dependent_seen = True
            encoded = encoders[vr](vr, data[value:stop], encoding)
            if tag in _LUT_DESCRIPTORS:
                encoded = _lut_descriptor(encoded)
            out[key] = encoded
        if delimited or pos != end:
            raise _Fallback
        return out, pos

    def sequence(
        self, pos: int, end: int, stop: int | None, encoding: str, path: str
    ) -> tuple[list[dict[str, Any]], int]:
        """Items of a sequence value from ``pos``: exactly up to ``stop`` (defined length) or to
        the sequence delimiter (undefined length, ``stop`` None) within ``end``."""
        data = self.data
        items: list[dict[str, Any]] = []
        while stop is None or pos < stop:
            if pos + 8 > end:
                raise _Fallback
            tag = _LE_U16(data, pos)[0] << 16 | _LE_U16(data, pos + 2)[0]
            length = _LE_U32(data, pos + 4)[0]
            if tag == _SEQ_DELIM and stop is None and length == 0:
                return items, pos + 8
            if tag != _ITEM:
                raise _Fallback
            prefix = f"{path}/{len(items)}/"
            if length == _UNDEFINED:
                item, pos = self.dataset(pos + 8, end, encoding, prefix, delimited=True, top=None)
            else:
                item_end = pos + 8 + length
                if item_end > end:
                    raise _Fallback
                item, pos = self.dataset(pos + 8, item_end, encoding, prefix, delimited=False, top=None)
            items.append(item)
        if pos != stop:
            raise _Fallback
        return items, pos

    def encapsulated_end(self, pos: int, end: int, tag: int) -> int:
        """End of an undefined-length pixel data value: defined-length items, then the sequence
        delimiter (pydicom walks the same items to find it)."""
        walker = _Walker(self.data, little=True, implicit=False)
        items = walker.items(pos, end, tag, implicit=False, little=True)
        delimiter = items[-1]
        if any(item.length == _UNDEFINED for item in items[:-1]):
            raise _Fallback
        if _LE_U32(self.data, delimiter.value_offset - 4)[0] != 0:
            raise _Fallback
        return delimiter.end


_TRAILING_PADDING = 0xFFFCFFFC


def _charset_codec(raw: bytes) -> str:
    """The codec of a (0008,0005) value, as pydicom's multi_string + convert_encodings see it."""
    codec = raw_charset_codec(raw)
    if codec is None:
        raise _Fallback
    return codec


def _lut_descriptor(encoded: dict[str, Any]) -> dict[str, Any]:
    """pydicom's raw_element_value hook reads a negative first LUT descriptor value as unsigned."""
    if encoded["vr"] not in ("US", "SS"):
        raise _Fallback
    values = encoded.get("Value")
    if values is not None and len(values) > 1 and values[0] < 0:
        values[0] += 65536
    return encoded


def _un_retyped(tag: int, creators: set[int] | None) -> bool:
    """Would pydicom give this UN element another VR (``replace_un_with_known_vr``)?"""
    group, element = tag >> 16, tag & 0xFFFF
    if group & 1:
        if 0x10 <= element <= 0xFF:
            return True  # a private creator: LO
        creator = group << 16 | element >> 8
        return bool(element & 0xFF00) and creators is not None and creator in creators
    try:
        dictionary_VR(tag)
    except KeyError:
        return False
    return True


def _parse_fast(data: bytes, meta: _FileMeta, bulk_data_uri: Callable[[str], str] | None) -> ParsedInstance:
    ts = meta.transfer_syntax
    start = meta.end
    if start + 8 > len(data) or data[start + 4 : start + 6] not in _VR_STR:
        raise _Fallback  # no data set, or not explicit VR
    top = _Top()
    metadata, _ = _FastScanner(data, bulk_data_uri).dataset(
        start, len(data), RAW_CHARSETS[""], "", delimited=False, top=top
    )
    attributes = top.attributes
    uids = {keyword: _fast_uid(data, attributes.get(tag)) for keyword, tag in _REQUIRED}
    disagreements = tuple(
        keyword
        for keyword, value, ds_keyword in (
            ("MediaStorageSOPInstanceUID", meta.media_sop_instance, "SOPInstanceUID"),
            ("MediaStorageSOPClassUID", meta.media_sop_class, "SOPClassUID"),
        )
        if value and value != uids[ds_keyword]
    )
    pixel = top.pixel
    number_of_frames = 0
    frames: tuple[FrameLocation, ...] = ()
    if pixel is not None:
        number_of_frames = _fast_number_of_frames(data, attributes.get(0x00280008))
        if number_of_frames < 1:
            raise _Fallback
        if pixel.length == _UNDEFINED:
            walker = _Walker(data, little=True, implicit=False)
            eot = _fast_extended_offset_table(data, attributes.get(0x7FE00001))
            frames = _encapsulated_frames(walker, pixel, number_of_frames, lambda: eot)
        else:
            image = (
                _fast_us(data, attributes.get(0x00280010)),
                _fast_us(data, attributes.get(0x00280011)),
                _fast_us(data, attributes.get(0x00280002), 1),
                _fast_us(data, attributes.get(0x00280100)),
            )
            photometric = _fast_photometric(data, attributes.get(0x00280004))
            frames = _native_layout(pixel, number_of_frames, image, lambda: photometric, big_endian=False)
    return ParsedInstance(
        sop_class_uid=uids["SOPClassUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        transfer_syntax_uid=ts,
        number_of_frames=number_of_frames,
        frames=frames,
        metadata=metadata,
        meta_disagreements=disagreements,
        source=data,
    )


def _raw(data: bytes, attribute: tuple[str, int, int] | None, vr: str) -> bytes:
    if attribute is None or attribute[0] != vr:
        raise _Fallback
    _, offset, length = attribute
    return data[offset : offset + length]


def _fast_uid(data: bytes, attribute: tuple[str, int, int] | None) -> str:
    # As _required_uid on pydicom's value: exactly one valid UID, else the pydicom path refuses.
    values = _raw(data, attribute, "UI").decode("latin-1").rstrip("\x00 ").split("\\")
    if len(values) != 1:
        raise _Fallback
    uid = values[0].strip().strip("\x00 ")
    if not is_valid_uid(uid):
        raise _Fallback
    return uid


_DIGITS = re.compile(r"[0-9]{1,9}")


def _fast_number_of_frames(data: bytes, attribute: tuple[str, int, int] | None) -> int:
    if attribute is None:
        return 1
    text = _raw(data, attribute, "IS").decode("latin-1").rstrip(" \x00")
    if text == "":
        return 1
    if _DIGITS.fullmatch(text) is None:
        raise _Fallback
    return int(text)


def _fast_us(data: bytes, attribute: tuple[str, int, int] | None, default: int | None = None) -> int:
    if attribute is None and default is not None:
        return default
    raw = _raw(data, attribute, "US")
    if len(raw) != 2:
        raise _Fallback
    return int(_LE_U16(raw, 0)[0])


def _fast_photometric(data: bytes, attribute: tuple[str, int, int] | None) -> str:
    if attribute is None:
        return ""
    text = _raw(data, attribute, "CS").decode("latin-1").rstrip(" \x00")
    if "\\" in text:
        raise _Fallback
    return text.strip()


def _fast_extended_offset_table(data: bytes, attribute: tuple[str, int, int] | None) -> list[int] | None:
    if attribute is None:
        return None
    if attribute[0] not in ("OV", "OB"):
        raise _Fallback
    return _offsets_from_table(_raw(data, attribute, attribute[0]))
