"""QIDO-RS request parsing and response shaping (PS3.18 §10.6): translation only, no decisions."""

from __future__ import annotations

from typing import Any

from medvault.dicom.dicomjson import DEFAULT_RETURN_TAGS
from medvault.dicom.matching import MatchKind, resolve_attribute
from medvault.dicom.query import QidoQuery
from medvault.errors import InvalidInput
from medvault.index.store import Hit, Index, Level

Json = dict[str, Any]
_LEVEL_UIDS = {"study": "0020000D", "series": "0020000E", "instance": "00080018"}


def shape_results(
    level: Level, hits: list[Hit], query: QidoQuery, *, index: Index, base_url: str
) -> list[Json]:
    """Build the DICOM JSON answer: required return attributes, matched keys, includefields,
    and the computed ones (counts, modalities, RetrieveURL)."""
    wanted: set[str] = set(DEFAULT_RETURN_TAGS[level])
    wanted.update(c.tag for c in query.criteria)
    wanted.update(query.include_tags)
    wanted.update(
        _LEVEL_UIDS[lvl]
        for lvl in ("study", "series", "instance")[: ("study", "series", "instance").index(level) + 1]
    )
    study_counts = index.study_counts(sorted({h.study_id for h in hits})) if level == "study" else {}
    series_counts = (
        index.series_instance_counts(sorted({h.series_id for h in hits if h.series_id is not None}))
        if level == "series"
        else {}
    )
    out: list[Json] = []
    for hit in hits:
        attrs = hit.attributes
        result: Json = dict(attrs) if query.include_all else {t: attrs[t] for t in wanted if t in attrs}
        study_uid = _uid(attrs, "0020000D")
        url = f"{base_url}/studies/{study_uid}"
        if level == "study":
            counts = study_counts[hit.study_id]
            result["00201206"] = {"vr": "IS", "Value": [counts.series]}
            result["00201208"] = {"vr": "IS", "Value": [counts.instances]}
            result["00080061"] = (
                {"vr": "CS", "Value": counts.modalities} if counts.modalities else {"vr": "CS"}
            )
        else:
            url += f"/series/{_uid(attrs, '0020000E')}"
            if level == "series" and hit.series_id is not None:
                result["00201209"] = {"vr": "IS", "Value": [series_counts.get(hit.series_id, 0)]}
            if level == "instance":
                url += f"/instances/{_uid(attrs, '00080018')}"
        result["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
        result["00081190"] = {"vr": "UR", "Value": [url]}
        for tag in wanted:
            if tag not in result and tag in DEFAULT_RETURN_TAGS[level]:
                result[tag] = {"vr": _vr_of(tag)}
        out.append(dict(sorted(result.items())))
    return out


def _uid(attrs: Json, tag: str) -> str:
    element = attrs.get(tag) or {}
    values = element.get("Value") or [""]
    return str(values[0])


def _vr_of(tag: str) -> str:
    try:
        return resolve_attribute(tag)[1]
    except InvalidInput:
        return "UN"


def uses_only_universal(query: QidoQuery) -> bool:
    return all(c.kind is MatchKind.UNIVERSAL for c in query.criteria)
