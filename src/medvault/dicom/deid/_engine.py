"""The de-identification engine: one data set in, a de-identified copy (or an exclusion) out.

Pure: no I/O, no clock, no randomness; the input data set is never modified. Every element,
at every depth (sequence items, SR content trees, private sequences), gets the action of
PS3.15 Table E.1-1 under the configured options (see ``_table``); elements outside the table are
handled by the rules below, which close the leaks the table leaves open:

* UI values that are not registered DICOM UIDs and not class/syntax/scheme UIDs are replaced
  like the table's U rows, so references anywhere follow the instances they point to;
* PN values outside the table are replaced by a dummy; DA/DT/TM outside the table follow the
  date policy (removed, kept, or shifted);
* kept text is cleaned of the values the profile removed elsewhere in the instance and of
  quoted UIDs; free text (ST/LT/UT, SR TextValue, code meanings, overlay labels) and the C
  action get the full cleaning of ``_text``;
* overlay planes are removed with their data (unless Clean Graphics keeps them masked);
* private attributes are removed, except the safe-private allowlist under Retain Safe Private,
  whose sequences are walked like any other (standard attributes nested there get the table).
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydicom._dicom_dict import DicomDictionary
from pydicom._uid_dict import UID_dictionary
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from medvault.dicom.deid import _pixels, _raw
from medvault.dicom.deid._config import DatePolicy, DeidConfig, PixelMaskRule
from medvault.dicom.deid._keys import Keys
from medvault.dicom.deid._table import (
    CompiledActions,
    active_columns,
    compile_actions,
    load_data,
    load_table,
    resolve_combined,
)
from medvault.dicom.deid._text import Scrubber, vocabulary_terms

_IGNORE = 0  # pydicom.config.IGNORE: values we build are valid by construction

# An element on either path: pydicom's DataElement or the fast path's _raw.RawElement (same
# duck-typed surface: tag, VR, value, is_undefined_length). Data sets likewise.
Elem = Any

IMPLEMENTATION_CLASS_UID = UID("2.25." + str(int.from_bytes(hashlib.sha256(b"medvault-deid").digest()[:16])))
IMPLEMENTATION_VERSION_NAME = "MEDVAULT_DEID_1"

PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
CODE_MEANING = 0x00080104
TEXT_VALUE = 0x0040A160
UNFORMATTED_TEXT_VALUE = 0x00700006
SOP_INSTANCE_UID = 0x00080018
SOP_CLASS_UID = 0x00080016
IDENTITY_REMOVED = 0x00120062
DEID_METHOD = 0x00120063
DEID_METHOD_CODES = 0x00120064
TEMPORAL_MODIFIED = 0x00280303

_LIGHT_TEXT = frozenset({"LO", "SH", "UC", "UR"})
_FREE_TEXT = frozenset({"ST", "LT", "UT"})
_TEXT = _LIGHT_TEXT | _FREE_TEXT
_DATES = frozenset({"DA", "DT"})
_BYTES = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})
_FULL_SCRUB_TAGS = frozenset({CODE_MEANING, TEXT_VALUE, UNFORMATTED_TEXT_VALUE})
_VOCABULARY_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC", "DA", "DT", "AE"})
_MAX_LEN = {"SH": 16, "LO": 64, "ST": 1024, "LT": 10240, "AE": 16, "CS": 16, "UC": 2**32 - 2}

DUMMY_TEXT = "ANONYMIZED"
_DUMMIES: dict[str, Any] = {
    "AE": DUMMY_TEXT, "AS": "000Y", "CS": DUMMY_TEXT, "DA": "19000101", "DS": "0",
    "DT": "19000101000000", "IS": "0", "LO": DUMMY_TEXT, "LT": DUMMY_TEXT, "PN": DUMMY_TEXT,
    "SH": DUMMY_TEXT, "ST": DUMMY_TEXT, "TM": "000000", "UC": DUMMY_TEXT, "UR": DUMMY_TEXT,
    "UT": DUMMY_TEXT, "US": 0, "SS": 0, "UL": 0, "SL": 0, "UV": 0, "SV": 0, "FL": 0.0, "FD": 0.0,
    "AT": 0,
}  # fmt: skip

# CID 7050 code meanings (PS3.16), by code value
CID7050: dict[str, str] = {
    "113100": "Basic Application Confidentiality Profile",
    "113101": "Clean Pixel Data Option",
    "113102": "Clean Recognizable Visual Features Option",
    "113103": "Clean Graphics Option",
    "113104": "Clean Structured Content Option",
    "113105": "Clean Descriptors Option",
    "113106": "Retain Longitudinal Temporal Information Full Dates Option",
    "113107": "Retain Longitudinal Temporal Information Modified Dates Option",
    "113108": "Retain Patient Characteristics Option",
    "113109": "Retain Device Identity Option",
    "113110": "Retain UIDs Option",
    "113111": "Retain Safe Private Option",
    "113112": "Retain Institution Identity Option",
}


@functools.cache
def _class_uid_tags() -> frozenset[int]:
    """UI attributes naming a class, syntax or coding scheme, not an instance: never replaced."""
    names = ("ClassUID", "TransferSyntaxUID", "SyntaxUID")
    extra = {"CodingSchemeUID", "MappingResourceUID", "TemplateUID", "ApplicationContextName"}
    return frozenset(
        tag for tag, entry in DicomDictionary.items() if entry[4].endswith(names) or entry[4] in extra
    )


@functools.cache
def _safe_private() -> frozenset[tuple[str, int, int]]:
    return frozenset(
        (e["creator"].strip().upper(), int(e["group"], 16), int(e["offset"], 16))
        for e in load_data("safe_private.json")["entries"]
    )


def is_registered_uid(value: str) -> bool:
    """A UID defined by the DICOM standard (classes, syntaxes, well-known instances)."""
    return value.startswith("1.2.840.10008.") or value in UID_dictionary


@dataclass(frozen=True)
class PatientEntry:
    pseudonym_id: str
    pseudonym_name: str
    date_offset_days: int | None


@dataclass
class ReidentificationMap:
    """What links the output back to the input: PHI. Only built when the config asks for it."""

    uids: dict[str, str] = field(default_factory=dict)  # original UID -> new UID
    patients: dict[str, PatientEntry] = field(default_factory=dict)  # original PatientID -> entry

    def merge(self, other: ReidentificationMap) -> None:
        self.uids.update(other.uids)
        self.patients.update(other.patients)


@dataclass(frozen=True)
class EncodedResult:
    """The fast path's outcome: the de-identified Part 10 file's bytes."""

    data: bytes
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    notes: tuple[str, ...] = ()
    mapping: ReidentificationMap | None = None


@dataclass(frozen=True)
class Result:
    """The outcome for one data set: ``dataset`` (de-identified) or ``excluded`` (the reason)."""

    dataset: Dataset | None
    excluded: str | None = None
    notes: tuple[str, ...] = ()
    mapping: ReidentificationMap | None = None

    @property
    def sop_instance_uid(self) -> str | None:
        if self.dataset is None:
            return None
        return str(self.dataset.get("SOPInstanceUID", "")) or None


def _text_value(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _shift_date(value: str, offset: dt.timedelta) -> str:
    """A DA value (or range) moved by ``offset``, keeping its precision; '' if unreadable."""
    if "-" in value:
        return "-".join(_shift_date(v, offset) if v else "" for v in value.split("-"))
    v = value.strip()
    if not v.isdigit() or len(v) not in (4, 6, 8):
        return ""
    try:
        d = dt.date(int(v[:4]), int(v[4:6] or 1), int(v[6:8] or 1)) + offset
    except ValueError:
        return ""
    return d.strftime("%Y%m%d")[: len(v)]


def _shift_datetime(value: str, offset: dt.timedelta) -> str:
    v = value.strip()
    head = v[:8]
    date_len = len(head) if head.isdigit() else 0
    if date_len not in (4, 6, 8):
        return ""
    shifted = _shift_date(head[:date_len], offset)
    return shifted + v[date_len:] if shifted else ""


def _values(elem: Elem) -> list[Any]:
    v = elem.value
    if v is None:
        return []
    if isinstance(v, MultiValue | list | tuple):
        return list(v)
    return [v]


def _clip(vr: str, text: str) -> str:
    limit = _MAX_LEN.get(vr)
    return text[:limit] if limit is not None else text


class ElementModel(Protocol):
    """How the engine builds output: pydicom objects (``_PydicomModel``) or the fast path's raw
    elements (``_raw.RawModel``). The engine builds elements through nothing else."""

    def new(self, tag: int, vr: str, value: Any) -> Any: ...
    def like(self, elem: Any, value: Any) -> Any: ...  # same tag and VR, a new value
    def copy(self, elem: Any) -> Any: ...
    def sequence(self, tag: int, items: list[Any]) -> Any: ...
    def dataset(self) -> Any: ...


class _PydicomModel:
    """Builds output elements as pydicom objects (the general path)."""

    __slots__ = ()

    def new(self, tag: int, vr: str, value: Any) -> DataElement:
        return DataElement(tag, vr, value, validation_mode=_IGNORE)

    def like(self, elem: DataElement, value: Any) -> DataElement:
        return DataElement(
            elem.tag, elem.VR, value, is_undefined_length=elem.is_undefined_length, validation_mode=_IGNORE
        )

    def copy(self, elem: DataElement) -> DataElement:
        value = elem.value
        if isinstance(value, MultiValue):
            value = list(value)
        return self.like(elem, value)

    def sequence(self, tag: int, items: list[Dataset]) -> DataElement:
        return DataElement(tag, "SQ", Sequence(items), validation_mode=_IGNORE)

    def dataset(self) -> Dataset:
        return Dataset()


_PYDICOM = _PydicomModel()


class _Run:
    """The state of de-identifying one instance. Elements and data sets are pydicom's or the
    fast path's (``_raw``): the same duck-typed surface (tag, VR, value, iteration, add)."""

    def __init__(
        self,
        engine: Deidentifier,
        sop_class: str,
        patient_id: str,
        terms: Iterable[str],
        overlay_rule: PixelMaskRule | None,
        model: ElementModel = _PYDICOM,
    ) -> None:
        self.engine = engine
        self.model = model
        self.config = engine.config
        self.actions = engine.actions
        self.keys = engine.keys
        self.sop_class = sop_class
        self.patient_id = patient_id
        self.offset = self.keys.date_offset(patient_id) if self.config.dates is DatePolicy.MODIFIED else None
        self.reid: dict[str, str] | None = {} if self.config.record_mapping else None
        self.scrubber = Scrubber(terms, None if self.config.retain_uids else self.map_uid)
        self.keep_overlays = self.config.clean_graphics and overlay_rule is not None

    # --- replacements -------------------------------------------------------------------
    def map_uid(self, value: str) -> str:
        value = value.strip().rstrip("\0")
        if not value or is_registered_uid(value):
            return value
        new = self.keys.uid(value)
        if self.reid is not None:
            self.reid[value] = new
        return new

    def _element(self, elem: Any, value: Any) -> Any:
        return self.model.like(elem, value)

    def _copy(self, elem: Any) -> Any:
        return self.model.copy(elem)

    def _text(self, elem: Elem, *, full: bool) -> Elem:
        values = _values(elem)
        clean = self.scrubber.clean
        cleaned = [_clip(elem.VR, clean(str(v), full=full)) if v is not None else v for v in values]
        return self._element(elem, cleaned if len(cleaned) != 1 else cleaned[0])

    def _sequence(self, elem: Elem, *, clean: bool) -> Elem:
        items = [self.walk(item, nested=True, clean=clean) for item in elem.value or []]
        return self.model.sequence(elem.tag, items)

    def _uids(self, elem: Elem) -> Elem:
        if self.config.retain_uids:
            return self._copy(elem)
        mapped = [self.map_uid(str(v)) for v in _values(elem)]
        return self._element(elem, mapped if len(mapped) != 1 else mapped[0])

    def _dates(self, elem: Elem) -> Elem | None:
        """DA/DT/TM under the date policy (C action and dates outside the table)."""
        if self.config.dates is DatePolicy.FULL:
            return self._copy(elem)
        if self.offset is None:
            return self._dummy(elem)
        if elem.VR == "TM":  # whole days are shifted: the time of day stays
            return self._copy(elem)
        shift = _shift_date if elem.VR == "DA" else _shift_datetime
        shifted = [shift(str(v), self.offset) for v in _values(elem)]
        return self._element(elem, shifted if len(shifted) != 1 else shifted[0])

    def _zero(self, elem: Elem) -> Elem:
        if elem.tag == PATIENT_NAME:
            return self._element(elem, self.keys.pseudonym_name(self.patient_id))
        if elem.tag == PATIENT_ID:
            return self._element(elem, self.keys.pseudonym_id(str(elem.value or "")))
        if elem.VR == "SQ":
            return self.model.sequence(elem.tag, [])
        return self.model.new(elem.tag, elem.VR, empty_value_for_VR(elem.VR))

    def _dummy(self, elem: Elem) -> Elem:
        vr = elem.VR
        if elem.tag in (PATIENT_NAME, PATIENT_ID):
            return self._zero(elem)
        if vr == "SQ":  # a non-empty value that says nothing: one empty item
            return self.model.sequence(elem.tag, [self.model.dataset()])
        if vr == "UI":
            mapped = self._uids(elem)
            if mapped.value:
                return mapped
            return self._element(elem, self.keys.uid(f"dummy:{elem.tag:08X}"))
        if vr in _BYTES:
            return self.model.new(elem.tag, vr, b"\0\0")
        return self.model.new(elem.tag, vr, _DUMMIES.get(vr, DUMMY_TEXT))

    def _clean(self, elem: Elem, *, clean_bytes: bool = False) -> Elem | None:
        """The C action: values of similar meaning known not to identify anyone."""
        vr = elem.VR
        if vr == "SQ":
            return self._sequence(elem, clean=True)
        if vr in _DATES or vr == "TM":
            return self._dates(elem)
        if vr in _TEXT:
            return self._text(elem, full=True)
        if vr == "UI":
            return self._uids(elem)
        if vr == "AE":
            aes = [self.keys.ae_title(str(v)) for v in _values(elem)]
            return self._element(elem, aes if len(aes) != 1 else aes[0]) if aes else self._copy(elem)
        if vr == "PN":
            return self._dummy(elem)
        if vr in _BYTES and not clean_bytes:
            return self._dummy(elem)
        return self._copy(elem)  # CS (defined terms), AS, numbers

    def _keep(self, elem: Elem, *, clean: bool) -> Elem:
        vr = elem.VR
        if vr == "SQ":
            return self._sequence(elem, clean=clean)
        if vr in _TEXT:
            return self._text(elem, full=clean or vr in _FREE_TEXT or elem.tag in _FULL_SCRUB_TAGS)
        return self._copy(elem)

    # --- dispatch -----------------------------------------------------------------------
    def apply(self, code: str, elem: Elem, *, nested: bool, clean: bool) -> Elem | None:
        if "/" in code:
            code = resolve_combined(code, elem.tag, self.sop_class, nested=nested)
        if code == "X":
            return None
        if code == "K":
            return self._keep(elem, clean=False)
        if code == "U*":
            return self._keep(elem, clean=clean)
        if code == "Z":
            return self._zero(elem)
        if code == "D":
            return self._dummy(elem)
        if code == "U":
            return self._uids(elem) if elem.VR != "SQ" else self._keep(elem, clean=clean)
        if code == "C":
            return self._clean(elem)
        raise ValueError(f"unknown action code {code!r}")  # pragma: no cover - table data error

    def beyond(self, elem: Elem, *, clean: bool) -> Elem | None:
        """Standard attributes that Table E.1-1 does not list."""
        vr = elem.VR
        if vr == "SQ":
            return self._sequence(elem, clean=clean)
        if vr == "UI":
            return self._copy(elem) if elem.tag in _class_uid_tags() else self._uids(elem)
        if vr == "PN":
            return self._dummy(elem) if elem.value else self._copy(elem)
        if vr in _DATES or vr == "TM":
            if self.config.dates is DatePolicy.REMOVE:
                return None
            return self._dates(elem)
        if vr in _TEXT:
            return self._text(elem, full=clean or vr in _FREE_TEXT or elem.tag in _FULL_SCRUB_TAGS)
        return self._copy(elem)

    def graphic(self, code: str, elem: Elem, *, clean: bool) -> Elem | None:
        """Curves (50XX) and overlays (60XX): the table's mask rows, and the rest of the group."""
        group, element = elem.tag >> 16, elem.tag & 0xFFFF
        if group & 0xFF00 == 0x6000:
            if element == 0x3000:
                return self._copy(elem) if code == "C" and self.keep_overlays else None
            if not self.keep_overlays:
                return None  # an overlay's attributes go with its data
            if element == 0x4000:
                return self._text(elem, full=True) if code == "C" else None
        elif code == "X":
            return None
        if elem.VR in _TEXT:
            return self._text(elem, full=True)
        return self._clean(elem, clean_bytes=True) if elem.VR != "SQ" else self._sequence(elem, clean=True)

    def walk(self, src: Any, *, nested: bool, clean: bool) -> Any:
        out = self.model.dataset()
        exact = self.actions.exact
        retain_private = self.actions.private == "C"
        creators: dict[int, Elem] = {}
        used_blocks: set[int] = set()
        safe = _safe_private()
        for elem in src:
            tag = elem.tag
            group = tag >> 16
            element = tag & 0xFFFF
            if group == 0x0002 or element == 0:
                continue  # file meta is rebuilt; group lengths are not written
            if group & 1:
                if not retain_private or group < 0x0009:
                    continue
                if 0x10 <= element <= 0xFF:
                    creators[(group << 8) | element] = elem
                    continue
                block = (group << 8) | (element >> 8)
                creator = creators.get(block)
                if element < 0x1000 or creator is None:
                    continue
                if (str(creator.value).strip().upper(), group, element & 0xFF) in safe:
                    out.add(self._keep(elem, clean=clean))
                    used_blocks.add(block)
                continue
            code = exact.get(tag)
            new: Elem | None
            if code is not None:
                new = self.apply(code, elem, nested=nested, clean=clean)
            elif group & 0xFF00 == 0x5000:
                new = self.graphic(self.actions.curve, elem, clean=clean)
            elif group & 0xFF00 == 0x6000:
                overlay_code = (
                    self.actions.overlay_comments if element == 0x4000 else self.actions.overlay_data
                )
                new = self.graphic(overlay_code, elem, clean=clean)
            else:
                new = self.beyond(elem, clean=clean)
            if new is not None:
                out.add(new)
        for block in used_blocks:
            out.add(self._copy(creators[block]))
        return out


def _collect_terms(ds: Any, actions: CompiledActions, terms: set[str]) -> None:
    """The values the profile removes or replaces, to hunt for wherever text is kept."""
    exact = actions.exact
    for elem in ds:
        tag = elem.tag
        if tag >> 16 & 1:
            continue
        vr = elem.VR
        if vr == "SQ":
            for item in elem.value or []:
                _collect_terms(item, actions, terms)
            continue
        code = exact.get(tag)
        if code is None:
            if vr != "PN":
                continue
        elif code in ("K", "C", "U") or vr not in _VOCABULARY_VRS:
            continue
        for v in _values(elem):
            if v is not None:
                terms.update(vocabulary_terms(vr, str(v)))


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return UID(meta.TransferSyntaxUID)
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    if little is False:
        return ExplicitVRBigEndian
    return ExplicitVRLittleEndian


def _content_digest(ds: Dataset) -> str:
    h = hashlib.sha256()
    for elem in ds.iterall():
        h.update(f"{elem.tag:08X}{elem.VR}".encode())
        v = elem.value
        h.update(v if isinstance(v, bytes) else repr(v).encode("utf-8", "replace"))
    return h.hexdigest()


class Deidentifier:
    """The engine for one export project: a config and the project key (keyed derivations).

    Reuse one per worker: it caches compiled actions and UID replacements.
    """

    def __init__(self, *, config: DeidConfig, project_key: bytes) -> None:
        if not isinstance(config, DeidConfig):
            raise TypeError("config must be a DeidConfig")
        self.config = config
        self.keys = Keys(project_key)
        self.actions = compile_actions(config)
        self._method = self._method_values()

    def __repr__(self) -> str:
        return f"Deidentifier(config={self.config!r}, project_key=<redacted>)"

    def _method_values(self) -> tuple[list[str], list[str]]:
        table = load_table()
        codes = [table.basic_code]
        codes += [table.option_codes[col][0] for col in active_columns(self.config)]
        text = [f"MEDVAULT PS3.15 {table.edition.upper()} BASIC PROFILE"]
        names = [n for n in self.config.option_names() if n != "clean-pixel-data"]
        text += [f"OPTION {name.upper()}" for name in names]
        return codes, text

    def deidentify(self, ds: Dataset) -> Result:
        config = self.config
        notes: list[str] = []
        reason = _pixels.burned_in_reason(ds)
        rule: PixelMaskRule | None = None
        if config.pixel_masks and (config.clean_pixel_data or config.clean_graphics):
            rule = _pixels.find_rule(ds, config.pixel_masks)
        pixel_rule = rule if config.clean_pixel_data and "PixelData" in ds else None
        if reason is not None and pixel_rule is None:
            how = (
                "no pixel mask rule matches its manufacturer, model and image size"
                if config.clean_pixel_data
                else "turn on clean-pixel-data with a mask rule to include it"
            )
            return Result(dataset=None, excluded=f"burned-in text suspected ({reason}); {how}")

        out, run, patient_id = self._walk(ds, _PYDICOM, rule if config.clean_graphics else None)

        if SOP_INSTANCE_UID not in out:
            out.SOPInstanceUID = self.keys.uid("medvault-content:" + _content_digest(ds))
            notes.append("no SOPInstanceUID: one was derived from the content")

        meta = FileMetaDataset()
        if "SOPClassUID" in out:
            meta.MediaStorageSOPClassUID = out.SOPClassUID
        else:
            notes.append("no SOPClassUID")
        meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
        meta.TransferSyntaxUID = _transfer_syntax(ds)
        meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        out.file_meta = meta

        codes, method = self._method
        codes = list(codes)
        if pixel_rule is not None:
            _pixels.mask_pixels(out, pixel_rule)
            out.BurnedInAnnotation = "NO"
            codes.insert(1, "113101")
            method = [*method, "OPTION CLEAN-PIXEL-DATA"]
            notes.append(f"pixel mask applied: {pixel_rule.name or 'unnamed rule'}")
        if run.keep_overlays and rule is not None:
            _pixels.mask_overlays(out, rule)
        self._mark(ds, out, codes, method, _PYDICOM)
        return Result(dataset=out, notes=tuple(notes), mapping=self._mapping(run, patient_id))

    def deidentify_bytes(self, data: bytes) -> EncodedResult | None:
        """The fast path: a Part 10 file in, the de-identified file's bytes out, without pydicom.

        None when the input is outside the fast path (see ``_raw``), may carry burned-in text,
        lacks its SOP UIDs or was de-identified before: then read it with pydicom and call
        :meth:`deidentify`, which handles (or refuses) every case. Same result either way.
        """
        config = self.config
        if config.pixel_masks and (config.clean_pixel_data or config.clean_graphics):
            return None
        try:
            raw = _raw.read(data, private_un=self.actions.private != "C")
            ds = raw.dataset
            if (
                SOP_INSTANCE_UID not in ds
                or SOP_CLASS_UID not in ds
                or DEID_METHOD in ds
                or DEID_METHOD_CODES in ds
                or _pixels.burned_in_reason(ds) is not None
            ):
                return None
            model = _raw.RawModel(raw.codec)
            out, run, patient_id = self._walk(ds, model, None)
            sop_class, sop_instance = out.get("SOPClassUID"), out.get("SOPInstanceUID")
            if not isinstance(sop_class, str) or not isinstance(sop_instance, str) or not sop_instance:
                return None
            codes, method = self._method
            self._mark(ds, out, codes, method, model)
            encoded = _raw.write(
                out,
                sop_class=sop_class,
                sop_instance=sop_instance,
                syntax=raw.syntax,
                implementation=(IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME),
            )
        except (_raw.Fallback, struct.error):  # struct.error: a structure the reader missed; decline
            return None
        return EncodedResult(
            data=encoded,
            sop_instance_uid=sop_instance,
            study_instance_uid=_text_value(out.get("StudyInstanceUID")),
            series_instance_uid=_text_value(out.get("SeriesInstanceUID")),
            mapping=self._mapping(run, patient_id),
        )

    def _walk(
        self, ds: Any, model: ElementModel, overlay_rule: PixelMaskRule | None
    ) -> tuple[Any, _Run, str]:
        """The element-by-element pass shared by both paths: (output data set, run, PatientID)."""
        patient_id = str(ds.get("PatientID", "") or "")
        sop_class = str(ds.get("SOPClassUID", "") or "")
        terms: set[str] = set()
        _collect_terms(ds, self.actions, terms)
        run = _Run(self, sop_class, patient_id, terms, overlay_rule, model)
        return run.walk(ds, nested=False, clean=False), run, patient_id

    def _mapping(self, run: _Run, patient_id: str) -> ReidentificationMap | None:
        if run.reid is None:
            return None
        offset = run.offset.days if run.offset is not None else None
        keys = self.keys
        entry = PatientEntry(keys.pseudonym_id(patient_id), keys.pseudonym_name(patient_id), offset)
        return ReidentificationMap(uids=dict(run.reid), patients={patient_id: entry})

    def _mark(self, src: Any, out: Any, codes: list[str], method: list[str], model: ElementModel) -> None:
        """PatientIdentityRemoved, De-identification Method (+ Code Sequence), and the
        Longitudinal Temporal Information Modified flag (PS3.3 C.7.1.1). Earlier passes'
        methods (when the input was de-identified before) are kept, then ours, without repeats.
        """
        out.add(model.new(IDENTITY_REMOVED, "CS", "YES"))
        previous = src.get(DEID_METHOD)
        prior = [str(v) for v in (_values(previous) if previous is not None else [])]
        out.add(model.new(DEID_METHOD, "LO", list(dict.fromkeys([*prior, *method]))))
        items: list[Any] = []
        seen: set[tuple[str, str]] = set()
        prior_items = src.get("DeidentificationMethodCodeSequence") or []  # the fast path has none
        for item in [*prior_items, *(self._code_item(c, model) for c in codes)]:
            key = (str(item.get("CodeValue", "")), str(item.get("CodingSchemeDesignator", "")))
            if key in seen or not key[0]:
                continue
            seen.add(key)
            ours = key[1] == "DCM" and key[0] in CID7050
            items.append(self._code_item(key[0], model) if ours else copy.deepcopy(item))
        out.add(model.sequence(DEID_METHOD_CODES, items))
        flag = {DatePolicy.REMOVE: "REMOVED", DatePolicy.FULL: "UNMODIFIED", DatePolicy.MODIFIED: "MODIFIED"}
        out.add(model.new(TEMPORAL_MODIFIED, "CS", flag[self.config.dates]))

    @staticmethod
    def _code_item(code: str, model: ElementModel) -> Any:
        item = model.dataset()
        item.add(model.new(0x00080100, "SH", code))  # Code Value
        item.add(model.new(0x00080102, "SH", "DCM"))  # Coding Scheme Designator
        item.add(model.new(0x00080104, "LO", CID7050[code]))  # Code Meaning
        return item


def deidentify_dataset(ds: Dataset, *, config: DeidConfig, project_key: bytes) -> Result:
    """De-identify one data set in memory (the input is not modified). See :class:`Deidentifier`."""
    return Deidentifier(config=config, project_key=project_key).deidentify(ds)
