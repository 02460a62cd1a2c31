"""The de-identifier's fast path: read and write Part 10 files straight from their bytes.

pydicom's reading, value conversion and writing were about 60 % of the time of de-identifying
a typical file, although the engine looks at few values and copies most of them unchanged.
Here a file is walked once into :class:`RawElement` objects that keep their value bytes, decode
a value only when the engine asks for it (with pydicom's own decoding rules), and are written
back as the same bytes when the engine keeps them. The engine (``_engine._Run``) is the same for
both paths; only the element model differs.

Only the plain case is taken: a Part 10 file (preamble, file meta) whose data set is explicit
VR little endian, in ascending tag order, with a default / Latin-1 / UTF-8 character set set at
the top level only, no UN elements, and nothing truncated. Anything else raises
:class:`Fallback` and the caller uses the pydicom path, which handles (or refuses) it.
Equivalence of the two paths is tested on every Table E.1-1 case and on real files.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

from medvault.dicom.dicomjson import CHARSET_VRS, PIXEL_DATA_TAGS, raw_charset_codec

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"

_PREAMBLE = 128
_ITEM = 0xFFFEE000
_ITEM_DELIM = 0xFFFEE00D
_SEQ_DELIM = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_CHARSET = 0x00080005

_SHORT = struct.Struct("<HH2sH")
_LONG = struct.Struct("<HH2sHI")
_U32 = struct.Struct("<I")
_TAG_LEN = struct.Struct("<HHI")

_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
# UN is absent: pydicom re-types it by the dictionary (see _public_un)
_KNOWN_VRS = frozenset(
    "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM"
    " UC UI UL UR US UT UV".split()
)
_UID_CHARS = b"0123456789.\\"  # a UI value (or several) before its trailing padding
_NUMBER_CHARS = b"0123456789+-.eE \\"  # DS / IS values, as pydicom parses them without surprises
_SPLIT_STRIPPED = frozenset({"AS", "CS", "DA", "DT", "TM", "DS", "IS"})
_SINGLE_TEXT = frozenset({"ST", "LT", "UT"})
_NUMBERS = {"US": "<H", "SS": "<h", "UL": "<I", "SL": "<i", "UV": "<Q", "SV": "<q", "FL": "<f", "FD": "<d"}
_VR_BYTES = {vr: vr.encode("ascii") for vr in _KNOWN_VRS | {"UN"}}


class Fallback(Exception):
    """The input (or an output value) is outside the fast path: use the pydicom path."""


_UNSET: Any = object()


class RawElement:
    """One data element: its value bytes as read (``raw``), or a value the engine built.

    ``value`` follows pydicom's types for what the engine reads: ``str`` or ``list[str]`` for
    string VRs, a list of :class:`RawDataset` for SQ, bytes for everything else.
    """

    __slots__ = ("VR", "_value", "codec", "is_undefined_length", "raw", "tag")

    def __init__(
        self,
        tag: int,
        vr: str,
        raw: bytes | None,
        value: Any = _UNSET,
        codec: str = "latin-1",
        *,
        undefined: bool = False,
    ) -> None:
        self.tag = tag
        self.VR = vr
        self.raw = raw
        self._value = value
        self.codec = codec
        self.is_undefined_length = undefined

    @property
    def value(self) -> Any:
        if self._value is _UNSET:
            self._value = _decode(self.VR, self.raw or b"", self.codec)
        return self._value


def _one_or_list(values: list[str]) -> str | list[str]:
    return values[0] if len(values) == 1 else values


def _decode(vr: str, raw: bytes, codec: str) -> Any:
    """A value as pydicom's converters give it (``pydicom.values``), as str / list of str."""
    try:
        if vr in _SPLIT_STRIPPED:
            return _one_or_list(raw.decode("latin-1").rstrip(" \x00").split("\\"))
        if vr == "UI":
            return _one_or_list(raw.decode("latin-1").rstrip("\0 ").split("\\"))
        if vr == "AE":
            return _one_or_list([s.strip() for s in raw.decode("latin-1").split("\\")])
        if vr == "UR":
            return raw.decode("latin-1").rstrip()
        if vr in _SINGLE_TEXT:
            return raw.decode(codec).rstrip("\0 ")
        if vr == "PN":
            return _one_or_list(raw.rstrip(b"\x00 ").decode(codec).split("\\"))
        if vr in CHARSET_VRS:  # SH, LO, UC
            return _one_or_list([v.rstrip("\0 ") for v in raw.decode(codec).split("\\")])
    except UnicodeDecodeError as exc:
        raise Fallback from exc
    return raw


@functools.cache
def _tag(keyword: str) -> int | None:
    return tag_for_keyword(keyword)


class RawDataset:
    """An ordered set of :class:`RawElement` with the part of pydicom's Dataset API the engine uses."""

    __slots__ = ("elements",)

    def __init__(self) -> None:
        self.elements: dict[int, RawElement] = {}

    def __iter__(self) -> Iterator[RawElement]:
        return iter(self.elements.values())

    def __len__(self) -> int:
        return len(self.elements)

    def add(self, elem: RawElement) -> None:
        self.elements[elem.tag] = elem

    def _resolve(self, key: int | str) -> int | None:
        return key if isinstance(key, int) else _tag(key)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, int | str):
            return False
        return self._resolve(key) in self.elements

    def element(self, key: int | str) -> RawElement | None:
        tag = self._resolve(key)
        return self.elements.get(tag) if tag is not None else None

    def get(self, key: int | str, default: Any = None) -> Any:
        """The *value* for a keyword (as pydicom's ``Dataset.get``), the *element* for a tag."""
        elem = self.element(key)
        if elem is None:
            return default
        return elem if isinstance(key, int) else elem.value


# --- reading ----------------------------------------------------------------------------


def _public_un(tag: int) -> bool:
    """pydicom keeps UN for a public attribute only when its dictionary has no better VR."""
    try:
        return bool(dictionary_VR(tag) == "UN")
    except KeyError:
        return True


class _Reader:
    __slots__ = ("codec", "data", "private_un")

    def __init__(self, data: bytes, *, private_un: bool) -> None:
        self.data = data
        self.codec = "latin-1"
        self.private_un = private_un

    def dataset(self, pos: int, end: int, *, top: bool, delimited: bool) -> tuple[RawDataset, int]:
        """Elements from ``pos`` to ``end`` (or to an item delimiter when ``delimited``)."""
        data = self.data
        ds = RawDataset()
        elements = ds.elements
        last = -1
        while pos < end:
            if pos + 8 > end:
                raise Fallback
            group, number, vr_bytes, length = _SHORT.unpack_from(data, pos)
            tag = group << 16 | number
            if tag == _ITEM_DELIM and delimited:
                return ds, pos + 8
            if tag <= last or group == 0xFFFE or group == 0x0002:
                raise Fallback  # out of order, stray delimiter, file meta in the body
            last = tag
            vr = vr_bytes.decode("latin-1")
            if vr not in _KNOWN_VRS and (
                vr != "UN" or not (self.private_un if group & 1 else _public_un(tag))
            ):
                raise Fallback
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    raise Fallback
                length = _U32.unpack_from(data, pos + 8)[0]
                start = pos + 12
            else:
                start = pos + 8
            if vr == "SQ":
                items, pos = self.items(start, length, end)
                elements[tag] = RawElement(tag, "SQ", None, items)
                continue
            if length == _UNDEFINED:
                if tag not in PIXEL_DATA_TAGS:
                    raise Fallback
                stop = self.encapsulated_end(start, end)
                elements[tag] = RawElement(tag, vr, data[start:stop], undefined=True)
                pos = stop
                continue
            stop = start + length
            if stop > end:
                raise Fallback  # truncated: the pydicom path reports it
            raw = data[start:stop]
            if vr == "UI":
                _check_uid(raw)
            elif (vr == "DS" or vr == "IS") and raw.translate(None, _NUMBER_CHARS):
                raise Fallback  # pydicom would re-read (and rewrite) such a number differently
            if tag == _CHARSET:
                if not top:
                    raise Fallback  # a character set changed inside an item
                self.codec = _codec(raw)
            elements[tag] = RawElement(tag, vr, raw, codec=self.codec)
            pos = stop
        if delimited:
            raise Fallback  # an undefined-length item without its delimiter
        return ds, pos

    def items(self, pos: int, length: int, end: int) -> tuple[list[RawDataset], int]:
        data = self.data
        undefined = length == _UNDEFINED
        stop = end if undefined else pos + length
        if stop > end:
            raise Fallback
        items: list[RawDataset] = []
        while pos < stop:
            if pos + 8 > stop:
                raise Fallback
            group, number, item_length = _TAG_LEN.unpack_from(data, pos)
            tag = group << 16 | number
            if tag == _SEQ_DELIM and undefined:
                return items, pos + 8
            if tag != _ITEM:
                raise Fallback
            if item_length == _UNDEFINED:
                item, pos = self.dataset(pos + 8, stop, top=False, delimited=True)
            else:
                item_end = pos + 8 + item_length
                if item_end > stop:
                    raise Fallback
                item, _ = self.dataset(pos + 8, item_end, top=False, delimited=False)
                pos = item_end
            items.append(item)
        if undefined:
            raise Fallback
        return items, pos

    def encapsulated_end(self, pos: int, end: int) -> int:
        """Where encapsulated pixel data (fragment items + sequence delimiter) ends."""
        data = self.data
        while pos + 8 <= end:
            group, number, length = _TAG_LEN.unpack_from(data, pos)
            tag = group << 16 | number
            if tag == _SEQ_DELIM:
                return pos + 8
            if tag != _ITEM or length == _UNDEFINED or pos + 8 + length > end:
                raise Fallback
            pos += 8 + length
        raise Fallback


def _check_uid(raw: bytes) -> None:
    """Only digits and dots before the padding: pydicom's ``UID()`` strips any whitespace
    (leading, control characters), which a byte-for-byte copy would not."""
    if raw.rstrip(b"\0 ").translate(None, _UID_CHARS):
        raise Fallback


def _codec(raw: bytes) -> str:
    codec = raw_charset_codec(raw)
    if codec is None:
        raise Fallback
    return codec


@dataclass(frozen=True)
class RawFile:
    syntax: str  # transfer syntax UID
    dataset: RawDataset
    codec: str  # of the top-level Specific Character Set


def read(data: bytes, *, private_un: bool = False) -> RawFile:
    """A Part 10 file on the fast path, or :class:`Fallback`.

    ``private_un``: accept private elements of VR UN (pydicom may re-type those from its private
    dictionary; harmless when every private element is removed anyway).
    """
    if len(data) < _PREAMBLE + 4 + 12 or data[_PREAMBLE : _PREAMBLE + 4] != b"DICM":
        raise Fallback
    pos = _PREAMBLE + 4
    group, number, vr, _ = _SHORT.unpack_from(data, pos)
    if (group, number, vr) != (0x0002, 0x0000, b"UL"):
        raise Fallback
    meta_end = pos + 12 + _U32.unpack_from(data, pos + 8)[0]
    if meta_end > len(data):
        raise Fallback
    meta = _meta(data, pos + 12, meta_end)
    syntax = meta.get("TransferSyntaxUID")
    if not isinstance(syntax, str) or syntax in (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN, DEFLATED):
        raise Fallback
    reader = _Reader(data, private_un=private_un)
    ds, _ = reader.dataset(meta_end, len(data), top=True, delimited=False)
    return RawFile(syntax, ds, reader.codec)


def _meta(data: bytes, pos: int, end: int) -> RawDataset:
    """File meta elements (group 0002, always explicit VR little endian)."""
    meta = RawDataset()
    while pos < end:
        if pos + 8 > end:
            raise Fallback
        group, number, vr_bytes, length = _SHORT.unpack_from(data, pos)
        vr = vr_bytes.decode("latin-1")
        if group != 0x0002 or vr not in _KNOWN_VRS or vr == "SQ":
            raise Fallback
        start = pos + 8
        if vr in _LONG_VRS:
            if pos + 12 > end:
                raise Fallback
            length = _U32.unpack_from(data, pos + 8)[0]
            start = pos + 12
        if length == _UNDEFINED or start + length > end:
            raise Fallback
        tag = group << 16 | number
        raw = data[start : start + length]
        if vr == "UI":
            _check_uid(raw)
        meta.add(RawElement(tag, vr, raw))
        pos = start + length
    return meta


# --- writing ----------------------------------------------------------------------------


def _pad(vr: str, value: bytes) -> bytes:
    if len(value) % 2 == 0:
        return value
    return value + (b"\0" if vr == "UI" or vr not in _TEXT_VRS else b" ")


_TEXT_VRS = frozenset("AE AS CS DA DS DT IS LO LT PN SH ST TM UC UI UR UT".split())


def _encode_value(vr: str, value: Any, codec: str) -> bytes:
    """An engine-built value as bytes (padded to even length), as pydicom's writer would."""
    if value is None or (isinstance(value, str | bytes | list) and len(value) == 0):
        return b""
    if isinstance(value, bytes):
        return _pad(vr, value)
    if vr in _TEXT_VRS:
        values = value if isinstance(value, list) else [value]
        text = "\\".join(str(v) for v in values)
        try:
            encoded = text.encode(codec if vr in CHARSET_VRS else "latin-1")
        except UnicodeEncodeError as exc:
            raise Fallback from exc
        return _pad(vr, encoded)
    if vr in _NUMBERS:
        values = value if isinstance(value, list) else [value]
        return b"".join(struct.pack(_NUMBERS[vr], v) for v in values)
    if vr == "AT":
        values = value if isinstance(value, list) else [value]
        return b"".join(struct.pack("<HH", v >> 16, v & 0xFFFF) for v in values)
    raise Fallback


def _header(tag: int, vr: str, length: int) -> bytes:
    if vr in _LONG_VRS:
        return _LONG.pack(tag >> 16, tag & 0xFFFF, _VR_BYTES[vr], 0, length)
    if length > 0xFFFF:
        raise Fallback  # cannot be encoded; the pydicom path gives the error
    return _SHORT.pack(tag >> 16, tag & 0xFFFF, _VR_BYTES[vr], length)


def _write_dataset(ds: RawDataset, out: list[bytes]) -> None:
    for tag in sorted(ds.elements):
        elem = ds.elements[tag]
        vr = elem.VR
        if vr == "SQ":
            body: list[bytes] = []
            for item in elem.value:
                encoded: list[bytes] = []
                _write_dataset(item, encoded)
                joined = b"".join(encoded)
                body.append(_TAG_LEN.pack(0xFFFE, 0xE000, len(joined)))
                body.append(joined)
            value = b"".join(body)
            out.append(_header(tag, "SQ", len(value)))
            out.append(value)
            continue
        if elem._value is _UNSET and elem.raw is not None:  # kept as read
            if elem.is_undefined_length:
                out.append(_LONG.pack(tag >> 16, tag & 0xFFFF, _VR_BYTES[vr], 0, _UNDEFINED))
                out.append(elem.raw)
                continue
            value = _pad(vr, elem.raw)
        else:
            value = _encode_value(vr, elem._value, elem.codec)
        out.append(_header(tag, vr, len(value)))
        out.append(value)


def write(
    ds: RawDataset, *, sop_class: str, sop_instance: str, syntax: str, implementation: tuple[str, str]
) -> bytes:
    """A Part 10 file: preamble, new file meta, then ``ds`` as explicit VR little endian."""
    meta = RawDataset()
    meta.add(RawElement(0x00020001, "OB", b"\x00\x01"))
    meta.add(RawElement(0x00020002, "UI", None, sop_class))
    meta.add(RawElement(0x00020003, "UI", None, sop_instance))
    meta.add(RawElement(0x00020010, "UI", None, syntax))
    meta.add(RawElement(0x00020012, "UI", None, implementation[0]))
    meta.add(RawElement(0x00020013, "SH", None, implementation[1]))
    meta_parts: list[bytes] = []
    _write_dataset(meta, meta_parts)
    meta_bytes = b"".join(meta_parts)
    body: list[bytes] = [
        b"\0" * _PREAMBLE,
        b"DICM",
        _SHORT.pack(0x0002, 0x0000, b"UL", 4),
        _U32.pack(len(meta_bytes)),
        meta_bytes,
    ]
    _write_dataset(ds, body)
    return b"".join(body)


class RawModel:
    """Builds output elements for the engine on the fast path (see ``_engine._PydicomModel``)."""

    __slots__ = ("codec",)

    def __init__(self, codec: str) -> None:
        self.codec = codec

    def new(self, tag: int, vr: str, value: Any) -> RawElement:
        return RawElement(tag, vr, None, value, self.codec)

    def like(self, elem: RawElement, value: Any) -> RawElement:
        return RawElement(elem.tag, elem.VR, None, value, elem.codec)

    def copy(self, elem: RawElement) -> RawElement:
        return elem  # never modified in place: sharing is safe

    def sequence(self, tag: int, items: list[RawDataset]) -> RawElement:
        return RawElement(tag, "SQ", None, items)

    def dataset(self) -> RawDataset:
        return RawDataset()
