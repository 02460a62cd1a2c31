"""C-FIND / C-GET / C-MOVE identifiers <-> the archive's query model. Translation only.

SPEC: https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_C.4.1 (C-FIND)
SPEC: https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_C.2.2.2 (matching)

An identifier's keys become exactly the :class:`~medvault.dicom.matching.Criterion` objects QIDO-RS
builds from its query parameters (``parse_criterion`` over ``resolve_attribute``), so C-FIND and
QIDO-RS match alike. Levels: PATIENT (Patient Root only; answered from the study level, grouped by
PatientID + IssuerOfPatientID), STUDY, SERIES, IMAGE. Every key of the identifier is a return key;
keys absent from a match come back empty (zero length), as PS3.4 C.4.1.1.3.2 asks.

Refused identifiers raise :class:`IdentifierError` with the DIMSE status to answer:
0xA900 (identifier does not match the SOP class: no or wrong level, missing unique key) or
0xC000 (cannot understand: malformed value, sequence matching, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from medvault.dicom.matching import Criterion, MatchKind, parse_criterion, resolve_attribute
from medvault.errors import InvalidInput
from medvault.index.store import Hit, Level

__all__ = [
    "PATIENT_ROOT",
    "STUDY_ROOT",
    "FindQuery",
    "IdentifierError",
    "RetrieveKeys",
    "parse_find_identifier",
    "parse_retrieve_identifier",
    "result_identifier",
]

QrLevel = Literal["PATIENT", "STUDY", "SERIES", "IMAGE"]
PATIENT_ROOT: Final = "patient"
STUDY_ROOT: Final = "study"
_ARCHIVE_LEVEL: dict[QrLevel, Level] = {
    "PATIENT": "study",
    "STUDY": "study",
    "SERIES": "series",
    "IMAGE": "instance",
}
TAG_PATIENT_ID: Final = "00100020"
TAG_ISSUER: Final = "00100021"
TAG_STUDY_UID: Final = "0020000D"
TAG_SERIES_UID: Final = "0020000E"
TAG_SOP_UID: Final = "00080018"
# Unique keys that every answer at a level carries (PS3.4 C.6.1.1 / C.6.2.1).
_UNIQUE_KEYS: dict[QrLevel, tuple[str, ...]] = {
    "PATIENT": (TAG_PATIENT_ID,),
    "STUDY": (TAG_STUDY_UID,),
    "SERIES": (TAG_STUDY_UID, TAG_SERIES_UID),
    "IMAGE": (TAG_STUDY_UID, TAG_SERIES_UID, TAG_SOP_UID),
}
_SKIPPED_TAGS: Final = frozenset({0x00080005, 0x00080052, 0x00080054, 0x00080056})
_UTF8: Final = "ISO_IR 192"


class IdentifierError(Exception):
    """The identifier cannot be served; ``status`` is the DIMSE failure status to answer."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class FindQuery:
    qr_level: QrLevel
    level: Level  # the archive level searched
    criteria: list[Criterion]
    return_tags: list[str]  # 8-hex tags, identifier order, unique keys added
    study_uid: str | None = None
    series_uid: str | None = None


@dataclass(frozen=True)
class RetrieveKeys:
    qr_level: QrLevel
    level: Level
    criteria: list[Criterion]


def _qr_level(identifier: Dataset, model: str) -> QrLevel:
    raw = identifier.get("QueryRetrieveLevel")
    level = str(raw).strip().upper() if raw is not None else ""
    if level not in ("PATIENT", "STUDY", "SERIES", "IMAGE"):
        raise IdentifierError("the identifier has no valid QueryRetrieveLevel (0008,0052)", 0xA900)
    if level == "PATIENT" and model != PATIENT_ROOT:
        raise IdentifierError("the PATIENT level exists only in the Patient Root model", 0xA900)
    return level  # type: ignore[return-value]


def _element_text(elem: DataElement) -> str:
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join("" if v is None else str(v) for v in value)
    if isinstance(value, bytes):
        raise IdentifierError(f"binary matching key ({elem.tag.group:04X},{elem.tag.element:04X})", 0xC000)
    return str(value)


def _sequence_is_empty(elem: DataElement) -> bool:
    return all(all(_element_text(sub) == "" for sub in item) for item in elem.value)


def _keys(identifier: Dataset) -> list[tuple[str, str, str]]:
    """(tag, VR, query text) of every key, in identifier order; private tags are ignored."""
    keys: list[tuple[str, str, str]] = []
    for elem in identifier:
        tag = int(elem.tag)
        if tag in _SKIPPED_TAGS or elem.tag.group in (0x0000, 0x0002) or elem.tag.is_private:
            continue
        try:
            hex_tag, vr = resolve_attribute(f"{tag:08X}")
        except InvalidInput as exc:
            raise IdentifierError(exc.message, 0xC000) from None
        if vr == "SQ" or elem.VR == "SQ":
            if not _sequence_is_empty(elem):
                raise IdentifierError(f"sequence matching on {hex_tag} is not supported", 0xC000)
            keys.append((hex_tag, "SQ", ""))
            continue
        keys.append((hex_tag, vr, _element_text(elem)))
    return keys


def _criteria(keys: Sequence[tuple[str, str, str]]) -> list[Criterion]:
    criteria: list[Criterion] = []
    for tag, vr, text in keys:
        if vr == "SQ":
            continue
        try:
            criteria.append(parse_criterion(tag, vr, text))
        except InvalidInput as exc:
            raise IdentifierError(exc.message, exc.failure_reason) from None
    return criteria


def _single(criteria: Sequence[Criterion], tag: str) -> str | None:
    for c in criteria:
        if c.tag == tag and c.kind is MatchKind.SINGLE:
            return c.value
    return None


def parse_find_identifier(identifier: Dataset, model: str) -> FindQuery:
    """A C-FIND identifier (Patient Root or Study Root) as an archive query."""
    qr_level = _qr_level(identifier, model)
    keys = _keys(identifier)
    criteria = _criteria(keys)
    return_tags = list(dict.fromkeys([*(t for t, _, _ in keys), *_UNIQUE_KEYS[qr_level]]))
    level = _ARCHIVE_LEVEL[qr_level]
    return FindQuery(
        qr_level=qr_level,
        level=level,
        criteria=criteria,
        return_tags=return_tags,
        study_uid=_single(criteria, TAG_STUDY_UID) if level != "study" else None,
        series_uid=_single(criteria, TAG_SERIES_UID) if level == "instance" else None,
    )


def parse_retrieve_identifier(identifier: Dataset, model: str) -> RetrieveKeys:
    """A C-GET / C-MOVE identifier: only unique keys select (PS3.4 C.4.2.2.1 / C.4.3.2.1)."""
    qr_level = _qr_level(identifier, model)
    wanted = {
        "PATIENT": (TAG_PATIENT_ID,),
        "STUDY": (TAG_PATIENT_ID, TAG_STUDY_UID),
        "SERIES": (TAG_PATIENT_ID, TAG_STUDY_UID, TAG_SERIES_UID),
        "IMAGE": (TAG_PATIENT_ID, TAG_STUDY_UID, TAG_SERIES_UID, TAG_SOP_UID),
    }[qr_level]
    keys = [k for k in _keys(identifier) if k[0] in wanted and k[2] != ""]
    own_key = _UNIQUE_KEYS[qr_level][-1]
    if not any(tag == own_key for tag, _, _ in keys):
        raise IdentifierError(f"a {qr_level} level retrieve needs its unique key {own_key}", 0xA900)
    criteria = _criteria(keys)
    if any(c.kind is MatchKind.WILDCARD for c in criteria):
        raise IdentifierError("wildcards are not allowed in a retrieve identifier", 0xA900)
    return RetrieveKeys(qr_level=qr_level, level=_ARCHIVE_LEVEL[qr_level], criteria=criteria)


def _empty_element(tag: str) -> dict[str, Any]:
    try:
        vr = resolve_attribute(tag)[1]
    except InvalidInput:
        vr = "UN"
    return {"vr": vr}


def result_identifier(
    query: FindQuery,
    attributes: dict[str, Any],
    *,
    computed: dict[str, dict[str, Any]],
    retrieve_ae_title: str,
) -> Dataset:
    """One C-FIND answer: the requested return keys from a match's DICOM JSON attributes."""
    out: dict[str, Any] = {}
    for tag in query.return_tags:
        element = computed.get(tag, attributes.get(tag))
        if element is None or "BulkDataURI" in element or "InlineBinary" in element:
            element = _empty_element(tag)
        out[tag] = element
    ds = Dataset.from_json(out)
    ds.SpecificCharacterSet = _UTF8  # JSON values are Unicode: answer in UTF-8
    ds.QueryRetrieveLevel = query.qr_level
    ds.RetrieveAETitle = retrieve_ae_title
    if query.qr_level != "PATIENT":
        ds.InstanceAvailability = "ONLINE"
    return ds


def patient_groups(hits: Sequence[Hit]) -> list[list[Hit]]:
    """Study-level hits grouped into patients (PatientID + IssuerOfPatientID), first-seen order."""
    groups: dict[tuple[str, str], list[Hit]] = {}
    for hit in hits:
        key = (_first(hit.attributes.get(TAG_PATIENT_ID)), _first(hit.attributes.get(TAG_ISSUER)))
        groups.setdefault(key, []).append(hit)
    return list(groups.values())


def _first(element: dict[str, Any] | None) -> str:
    if not element or not element.get("Value"):
        return ""
    return str(element["Value"][0])
