"""DICOM JSON Model (PS3.18 Annex F.2) and the attribute sets QIDO-RS returns per level.

SPEC: https://dicom.nema.org/medical/dicom/current/output/html/part18.html#sect_F.2

Encoding choices (all within F.2 and CP 1861):

- Keys are 8 upper-case hex digits; group length elements (gggg,0000) and Data Set Trailing
  Padding (FFFC,FFFC) are left out.
- IS/DS values are JSON numbers when they parse as finite numbers, else the original string
  (CP 1861 allows strings); an element that cannot be decoded at all is kept with its VR and no
  ``Value``. Nothing here ever puts a value into an exception message or a warning.
- FL/FD non-finite values are the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``.
- Binary VRs (OB, OD, OF, OL, OV, OW, UN): Pixel Data (and Float/Double Float Pixel Data) is always
  bulk data; others are bulk data when longer than ``bulk_data_threshold`` bytes. Bulk data becomes
  ``{"vr": .., "BulkDataURI": bulk_data_uri(tag_path)}`` when a callable is given, else it is left
  out; shorter binary values are ``InlineBinary`` (base64).
- ``tag_path`` names an element by its tags and 0-based item indexes joined by ``/``:
  ``"7FE00010"`` at top level, ``"00540016/0/00281201"`` inside a sequence item.
"""

from __future__ import annotations

import base64
import copy
import math
import re
import struct
import warnings
from collections.abc import Callable, Iterable
from typing import Any, Literal

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.filewriter import correct_ambiguous_vr_element
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from medvault.errors import InvalidInput

__all__ = [
    "DEFAULT_RETURN_TAGS",
    "INSTANCE_LEVEL_TAGS",
    "PIXEL_DATA_TAGS",
    "SERIES_LEVEL_TAGS",
    "STUDY_LEVEL_TAGS",
    "Level",
    "dataset_to_json",
    "json_to_dataset",
    "level_attributes",
    "with_bulk_data_base",
]

Level = Literal["study", "series", "instance"]

BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
NUMBER_VRS = frozenset({"FL", "FD", "SL", "SS", "SV", "UL", "US", "UV"})
# Pixel Data, Float Pixel Data, Double Float Pixel Data: always bulk data.
PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_TRAILING_PADDING = 0xFFFCFFFC

_DS_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_IS_RE = re.compile(r"^[+-]?\d+$")


def _tag_hex(tag: int) -> str:
    return f"{tag:08X}"


def dataset_to_json(
    ds: Dataset,
    *,
    bulk_data_uri: Callable[[str], str] | None = None,
    bulk_data_threshold: int = 1024,
) -> dict[str, Any]:
    """Return the DICOM JSON Model object of ``ds`` (PS3.18 F.2), tag-keyed.

    Converts every element of ``ds`` (pydicom converts raw elements lazily; the conversion runs
    here with pydicom's warnings silenced, because they can quote values).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _encode_dataset(ds, "", bulk_data_uri, bulk_data_threshold)


def _encode_dataset(
    ds: Dataset, prefix: str, uri: Callable[[str], str] | None, threshold: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        encoding = ds._character_set
    except Exception:  # an unreadable SpecificCharacterSet: pydicom's default applies
        encoding = None
    for tag in sorted(ds.keys()):
        itag = int(tag)
        if itag & 0xFFFF == 0 or itag == _TRAILING_PADDING:
            continue
        key = _tag_hex(itag)
        encoded = _encode_element(ds, itag, prefix + key, uri, threshold, encoding)
        if encoded is not None:
            out[key] = encoded
    return out


def _convert(ds: Dataset, tag: int, encoding: Any) -> DataElement:
    """The converted element, without going through ``Dataset.__getitem__`` (slow) unless needed."""
    item = ds.get_item(tag)
    if isinstance(item, RawDataElement) and item.VR != "SQ" and item.length != 0xFFFFFFFF:
        return convert_raw_data_element(item, encoding=encoding, ds=ds)
    return ds[tag]


def _raw_vr(ds: Dataset, tag: int, raw: RawDataElement) -> str:
    if raw.VR:
        return str(raw.VR)
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _encode_element(
    ds: Dataset, tag: int, path: str, uri: Callable[[str], str] | None, threshold: int, encoding: Any
) -> dict[str, Any] | None:
    item = ds.get_item(tag)
    if isinstance(item, RawDataElement):
        vr = _raw_vr(ds, tag, item)
        if tag in PIXEL_DATA_TAGS:
            # Never convert (copy) pixel data just to drop it.
            vr = vr if " or " not in vr else _pixel_vr(ds)
            return {"vr": vr, "BulkDataURI": uri(path)} if uri is not None else None
        if vr in ("IS", "DS"):
            return _encode_numeric_strings(vr, item.value or b"")
        if vr in BINARY_VRS and item.length != 0xFFFFFFFF and item.length > threshold:
            return {"vr": vr, "BulkDataURI": uri(path)} if uri is not None else None
    try:
        elem = _convert(ds, tag, encoding)
    except Exception:  # a value pydicom cannot decode: keep the VR, drop the value
        raw = ds.get_item(tag)
        vr = _raw_vr(ds, tag, raw) if isinstance(raw, RawDataElement) else "UN"
        return {"vr": vr}
    vr = _resolve_vr(elem, ds)
    value = elem.value
    if tag in PIXEL_DATA_TAGS:
        return {"vr": vr, "BulkDataURI": uri(path)} if uri is not None else None
    if vr == "SQ":
        items = [_encode_dataset(child, f"{path}/{i}/", uri, threshold) for i, child in enumerate(value)]
        return {"vr": vr, "Value": items} if items else {"vr": vr}
    if vr in BINARY_VRS or isinstance(value, bytes | bytearray):
        data = bytes(value) if value is not None else b""
        if not data:
            return {"vr": vr}
        if len(data) > threshold:
            return {"vr": vr, "BulkDataURI": uri(path)} if uri is not None else None
        return {"vr": vr, "InlineBinary": base64.b64encode(data).decode("ascii")}
    values = _as_list(value)
    if vr in ("IS", "DS"):
        encoded_numbers = [_number_or_string(vr, v) for v in values]
        return _with_values(vr, encoded_numbers)
    if vr == "PN":
        return _with_values(vr, [_encode_pn(v) for v in values])
    if vr == "AT":
        return _with_values(vr, [_tag_hex(int(v)) if v is not None else None for v in values])
    if vr in NUMBER_VRS:
        return _with_values(vr, [_encode_number(v) for v in values])
    return _with_values(vr, [_encode_text(v) for v in values])


def _pixel_vr(ds: Dataset) -> str:
    bits = ds.get("BitsAllocated")
    return "OW" if isinstance(bits, int) and bits > 8 else "OB"


def _resolve_vr(elem: DataElement, ds: Dataset) -> str:
    vr = str(elem.VR)
    if " or " not in vr:
        return vr
    try:
        fixed = correct_ambiguous_vr_element(copy.copy(elem), ds, True)
        if " or " not in str(fixed.VR):
            return str(fixed.VR)
    except Exception:  # noqa: S110 - fall back to a plain choice below
        pass
    if isinstance(elem.value, bytes | bytearray):
        return "OW" if "OW" in vr else "OB"
    return vr.split(" or ")[0]


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [value]


def _with_values(vr: str, values: list[Any]) -> dict[str, Any]:
    if not values or all(v is None for v in values):
        return {"vr": vr}
    return {"vr": vr, "Value": values}


def _encode_numeric_strings(vr: str, raw: bytes) -> dict[str, Any]:
    text = raw.decode("ascii", errors="replace").rstrip("\x00 ")
    if not text.strip():
        return {"vr": vr}
    return _with_values(vr, [_number_or_string(vr, part) for part in text.split("\\")])


def _number_or_string(vr: str, value: Any) -> Any:
    """JSON number for a well-formed IS/DS value, else the string itself (CP 1861)."""
    if value is None:
        return None
    original = getattr(value, "original_string", None)
    text = (original if isinstance(original, str) else str(value)).strip()
    if text == "":
        return None
    if vr == "IS" and _IS_RE.match(text):
        return int(text)
    if vr == "DS" and _DS_RE.match(text):
        number = float(text)
        if math.isfinite(number):
            return int(number) if _IS_RE.match(text) else number
    if vr == "IS" and _DS_RE.match(text):
        number = float(text)
        if math.isfinite(number) and number.is_integer():
            return int(number)
    return text


def _encode_number(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        return str(value)


def _encode_text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text if text != "" else None


def _encode_pn(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    name = value if isinstance(value, PersonName) else PersonName(str(value))
    out: dict[str, str] = {}
    for key, part in (
        ("Alphabetic", name.alphabetic),
        ("Ideographic", name.ideographic),
        ("Phonetic", name.phonetic),
    ):
        if part:
            out[key] = str(part)
    return out or None


# --- DICOM JSON straight from raw value bytes (the ingest fast path) ----------------------------
#
# ``raw_value_json`` gives, for one explicit VR little endian element value, exactly what
# ``dataset_to_json`` gives for it after pydicom's conversion with its default configuration
# (values.py converters, charset.decode_bytes, PersonName, UID): see the per-VR notes below. It
# covers the Specific Character Sets that decode with a single Python codec and no code extensions
# (absent, ISO_IR 6, ISO_IR 100, ISO_IR 192); anything else raises ``RawValueUnsupported`` and the
# caller must take the pydicom path. Never raises with a value in the message.


class RawValueUnsupported(Exception):
    """Internal: this raw value needs pydicom's conversion (``dataset_to_json``)."""


# (0008,0005) value -> Python codec; only single, stand-alone character sets without code extensions.
RAW_CHARSETS: dict[str, str] = {
    "": "latin-1",
    "ISO_IR 6": "latin-1",
    "ISO_IR 100": "latin-1",
    "ISO_IR 192": "utf-8",
}


def raw_charset_codec(raw: bytes) -> str | None:
    """The codec of a (0008,0005) value as pydicom reads it, when it is one of ``RAW_CHARSETS``
    (the fast paths decode only those); None otherwise."""
    values = raw.decode("latin-1").rstrip(" \x00").split("\\")
    return RAW_CHARSETS.get(values[0]) if len(values) == 1 else None


# VRs whose text is decoded with the Specific Character Set (the others are always ISO 8859-1).
CHARSET_VRS = frozenset({"SH", "LO", "UC", "ST", "LT", "UT", "PN"})
_NUMBER_FORMATS = {"US": ("H", 2), "SS": ("h", 2), "UL": ("I", 4), "SL": ("i", 4), "FL": ("f", 4),
                   "FD": ("d", 8), "SV": ("q", 8), "UV": ("Q", 8)}  # fmt: skip
_ESC = b"\x1b"


def _values(vr: str, values: list[Any]) -> dict[str, Any]:
    if any(v is not None for v in values):
        return {"vr": vr, "Value": values}
    return {"vr": vr}


def _decode(raw: bytes, encoding: str) -> str:
    # charset.decode_bytes: no escape sequence -> one codec; undecodable bytes would be replaced
    # (with a warning) there, so leave those to pydicom.
    if _ESC in raw:
        raise RawValueUnsupported
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError:
        raise RawValueUnsupported from None


def _raw_string(vr: str, raw: bytes, encoding: str) -> dict[str, Any]:
    # AS, CS, DA, DT, TM: convert_string -> multi_string (datetime_conversion off).
    return _values(vr, [v or None for v in raw.decode("latin-1").rstrip(" \x00").split("\\")])


def _raw_ae(vr: str, raw: bytes, encoding: str) -> dict[str, Any]:
    return _values(vr, [v.strip() or None for v in raw.decode("latin-1").split("\\")])


def _raw_ui(vr: str, raw: bytes, encoding: str) -> dict[str, Any]:
    # convert_UI: rstrip NUL/space, split; UID() strips each value.
    return _values(vr, [v.strip() or None for v in raw.decode("latin-1").rstrip("\x00 ").split("\\")])


def _raw_ur(vr: str, raw: bytes, encoding: str) -> dict[str, Any]:
    return _values(vr, [raw.decode("latin-1").rstrip() or None])


def _raw_text(vr: str, raw: bytes, encoding: str) -> dict[str, Any]:
    # SH, LO, UC: convert_text.
    return _values(vr, [v.rstrip("\x00 ") or None for v in _decode(raw, encoding).split("\\")])


def _raw_single_text(vr: str, raw: bytes, encoding: str) -> dict[str, Any]:
    # ST, LT, UT: convert_single_string (no value multiplicity).
    return _values(vr, [_decode(raw, encoding).rstrip("\x00 ") or None])


def _pn_groups(name: str) -> dict[str, str] | None:
    groups = name.split("=")
    out: dict[str, str] = {}
    if groups[0]:
        out["Alphabetic"] = groups[0]
    if len(groups) > 1 and groups[1]:
        out["Ideographic"] = groups[1]
    if len(groups) > 2 and groups[2]:
        out["Phonetic"] = groups[2]
    return out or None


def _raw_pn(vr: str, raw: bytes, encoding: str) -> dict[str, Any]:
    # convert_PN: rstrip NUL/space, decode, split; each PersonName keeps its '='-separated groups.
    return _values(vr, [_pn_groups(v) for v in _decode(raw.rstrip(b"\x00 "), encoding).split("\\")])


def _raw_numeric_string(vr: str, raw: bytes, encoding: str) -> dict[str, Any]:
    return _encode_numeric_strings(vr, raw)  # the very code dataset_to_json runs on raw IS/DS


def _raw_number(vr: str, raw: bytes, encoding: str) -> dict[str, Any]:
    fmt, size = _NUMBER_FORMATS[vr]
    count, rest = divmod(len(raw), size)
    if rest:
        raise RawValueUnsupported  # a partial value: pydicom's path decides (it may refuse the file)
    if not count:
        return {"vr": vr}
    values = struct.unpack(f"<{count}{fmt}", raw)
    if fmt in "fd":
        return {"vr": vr, "Value": [_encode_number(v) for v in values]}
    return {"vr": vr, "Value": list(values)}


def _raw_at(vr: str, raw: bytes, encoding: str) -> dict[str, Any]:
    if len(raw) % 4:
        raise RawValueUnsupported  # pydicom truncates or retries other VRs
    if not raw:
        return {"vr": vr}
    words = struct.unpack(f"<{len(raw) // 2}H", raw)
    return {"vr": vr, "Value": [f"{words[i] << 16 | words[i + 1]:08X}" for i in range(0, len(words), 2)]}


def _raw_binary(vr: str, raw: bytes, encoding: str) -> dict[str, Any]:
    if not raw:
        return {"vr": vr}
    return {"vr": vr, "InlineBinary": base64.b64encode(raw).decode("ascii")}


RAW_ENCODERS: dict[str, Callable[[str, bytes, str], dict[str, Any]]] = {
    **dict.fromkeys(("AS", "CS", "DA", "DT", "TM"), _raw_string),
    "AE": _raw_ae,
    "UI": _raw_ui,
    "UR": _raw_ur,
    **dict.fromkeys(("SH", "LO", "UC"), _raw_text),
    **dict.fromkeys(("ST", "LT", "UT"), _raw_single_text),
    "PN": _raw_pn,
    "IS": _raw_numeric_string,
    "DS": _raw_numeric_string,
    **dict.fromkeys(_NUMBER_FORMATS, _raw_number),
    "AT": _raw_at,
    **dict.fromkeys(BINARY_VRS, _raw_binary),
}


def raw_value_json(vr: str, raw: bytes, encoding: str) -> dict[str, Any]:
    """DICOM JSON of one non-sequence, non-bulk explicit VR little endian value (see above).

    ``encoding`` is a codec from ``RAW_CHARSETS``; raises ``RawValueUnsupported`` where pydicom's
    conversion must decide.
    """
    return RAW_ENCODERS[vr](vr, raw, encoding)


def json_to_dataset(obj: dict[str, Any]) -> Dataset:
    """Rebuild a :class:`Dataset` from a DICOM JSON Model object.

    Bulk data references (``BulkDataURI``) become empty values; ``InlineBinary`` is decoded.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Dataset.from_json(_strip_bulk(obj), bulk_data_uri_handler=lambda _uri: b"")


def _strip_bulk(obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, element in obj.items():
        if not isinstance(element, dict):
            continue
        if "BulkDataURI" in element:
            out[key] = {"vr": element.get("vr", "UN")}
            continue
        if element.get("vr") == "SQ" and isinstance(element.get("Value"), list):
            out[key] = {
                "vr": "SQ",
                "Value": [_strip_bulk(i) if isinstance(i, dict) else {} for i in element["Value"]],
            }
            continue
        if element.get("vr") in ("IS", "DS") and isinstance(element.get("Value"), list):
            # pydicom wants numbers or numeric strings; keep strings as strings.
            out[key] = {"vr": element["vr"], "Value": list(element["Value"])}
            continue
        out[key] = element
    return out


def with_bulk_data_base(metadata: dict[str, Any], base: str) -> dict[str, Any]:
    """Return a copy of ``metadata`` whose relative ``BulkDataURI`` values are prefixed by ``base``.

    :func:`medvault.dicom.parse.parse_instance` stores bulk data references as bare tag paths
    (``"7FE00010"``); the web layer turns them into absolute URLs at retrieval time, e.g.
    ``with_bulk_data_base(md, f"{instance_url}/bulkdata")``.
    """
    root = base.rstrip("/")

    def walk(ds: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, element in ds.items():
            if isinstance(element, dict) and isinstance(element.get("BulkDataURI"), str):
                ref = element["BulkDataURI"]
                absolute = ref if "://" in ref or ref.startswith("/") else f"{root}/{ref}"
                out[key] = {**element, "BulkDataURI": absolute}
            elif isinstance(element, dict) and element.get("vr") == "SQ" and "Value" in element:
                out[key] = {
                    **element,
                    "Value": [walk(i) if isinstance(i, dict) else i for i in element["Value"]],
                }
            else:
                out[key] = element
        return out

    return walk(metadata)


# --- QIDO-RS level attribute sets (PS3.18 §10.6.3.3, Tables 10.6.3-3/-4/-5) --------------------

_STUDY_REQUIRED = (
    "00080005",  # SpecificCharacterSet
    "00080020",  # StudyDate
    "00080030",  # StudyTime
    "00080050",  # AccessionNumber
    "00080056",  # InstanceAvailability
    "00080061",  # ModalitiesInStudy (computed)
    "00080090",  # ReferringPhysicianName
    "00080201",  # TimezoneOffsetFromUTC
    "00081190",  # RetrieveURL (computed)
    "00100010",  # PatientName
    "00100020",  # PatientID
    "00100030",  # PatientBirthDate
    "00100040",  # PatientSex
    "0020000D",  # StudyInstanceUID
    "00200010",  # StudyID
    "00201206",  # NumberOfStudyRelatedSeries (computed)
    "00201208",  # NumberOfStudyRelatedInstances (computed)
)
_SERIES_REQUIRED = (
    "00080005",  # SpecificCharacterSet
    "00080060",  # Modality
    "00080201",  # TimezoneOffsetFromUTC
    "0008103E",  # SeriesDescription
    "00081190",  # RetrieveURL (computed)
    "0020000E",  # SeriesInstanceUID
    "00200011",  # SeriesNumber
    "00201209",  # NumberOfSeriesRelatedInstances (computed)
    "00400244",  # PerformedProcedureStepStartDate
    "00400245",  # PerformedProcedureStepStartTime
    "00400275",  # RequestAttributesSequence
)
_INSTANCE_REQUIRED = (
    "00080005",  # SpecificCharacterSet
    "00080016",  # SOPClassUID
    "00080018",  # SOPInstanceUID
    "00080056",  # InstanceAvailability
    "00080201",  # TimezoneOffsetFromUTC
    "00081190",  # RetrieveURL (computed)
    "00200013",  # InstanceNumber
    "00280010",  # Rows
    "00280011",  # Columns
    "00280100",  # BitsAllocated
    "00280008",  # NumberOfFrames
)

DEFAULT_RETURN_TAGS: dict[Level, tuple[str, ...]] = {
    "study": _STUDY_REQUIRED,
    "series": _SERIES_REQUIRED,
    "instance": _INSTANCE_REQUIRED,
}


def _tags(required: Iterable[str], extra: Iterable[str]) -> frozenset[str]:
    return frozenset(required) | frozenset(extra)


STUDY_LEVEL_TAGS: frozenset[str] = _tags(
    _STUDY_REQUIRED,
    (
        # Patient module
        "00100021",  # IssuerOfPatientID
        "00100032",  # PatientBirthTime
        "00101000",  # OtherPatientIDs (retired, still common)
        "00101001",  # OtherPatientNames
        "00101002",  # OtherPatientIDsSequence
        "00102160",  # EthnicGroup
        "00104000",  # PatientComments
        "00120062",  # PatientIdentityRemoved
        # Patient study module (commonly matched)
        "00101010",  # PatientAge
        "00101020",  # PatientSize
        "00101030",  # PatientWeight
        # General study module
        "00080051",  # IssuerOfAccessionNumberSequence
        "00081030",  # StudyDescription
        "00081048",  # PhysiciansOfRecord
        "00081060",  # NameOfPhysiciansReadingStudy
        "00081032",  # ProcedureCodeSequence
        "00080062",  # SOPClassesInStudy
    ),
)
SERIES_LEVEL_TAGS: frozenset[str] = _tags(
    _SERIES_REQUIRED,
    (
        "00080021",  # SeriesDate
        "00080031",  # SeriesTime
        "00080070",  # Manufacturer
        "00081010",  # StationName
        "00081050",  # PerformingPhysicianName
        "00081070",  # OperatorsName
        "00180015",  # BodyPartExamined
        "00181030",  # ProtocolName
        "00185100",  # PatientPosition
        "00200060",  # Laterality
        "00400253",  # PerformedProcedureStepID
    ),
)
INSTANCE_LEVEL_TAGS: frozenset[str] = _tags(
    _INSTANCE_REQUIRED,
    (
        "00080008",  # ImageType
        "00080012",  # InstanceCreationDate
        "00080013",  # InstanceCreationTime
        "00080023",  # ContentDate
        "00080033",  # ContentTime
        "0008002A",  # AcquisitionDateTime
        "00200012",  # AcquisitionNumber
        "00280002",  # SamplesPerPixel
        "00280004",  # PhotometricInterpretation
        "00280101",  # BitsStored
        "0040A491",  # CompletionFlag
        "0040A493",  # VerificationFlag
    ),
)

_LEVEL_TAGS: dict[Level, frozenset[str]] = {
    "study": STUDY_LEVEL_TAGS,
    "series": SERIES_LEVEL_TAGS,
    "instance": INSTANCE_LEVEL_TAGS,
}


def level_attributes(metadata: dict[str, Any], level: Level) -> dict[str, Any]:
    """Pick the attributes of ``level`` out of a full instance's DICOM JSON (tag order kept)."""
    try:
        wanted = _LEVEL_TAGS[level]
    except KeyError:
        raise InvalidInput(f"unknown query level {level!r}") from None
    return {tag: element for tag, element in metadata.items() if tag in wanted}
