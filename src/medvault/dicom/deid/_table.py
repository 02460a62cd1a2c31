"""PS3.15 Table E.1-1 as data: the action for every attribute under a given set of options.

The table ships in ``data/ps3.15_table_e1-1.json`` (edition and provenance inside the file);
nothing here is a hand-kept list of attributes. ``compile_actions(config)`` resolves, once per
configuration, the Basic Profile code and the codes of the option columns that apply:

* an applied option column's code replaces the Basic Profile code (PS3.15 E.3);
* where two applied options disagree on a row (only ever K against C, e.g. Retain Device
  Identity and Modified Dates on a calibration date), the more conservative code wins: C.

Combined codes (X/Z, X/D, X/Z/D, Z/D, X/Z/U*) stay combined here; the engine resolves them per
instance with :func:`resolve_combined`, which needs the SOP class and the nesting depth.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from medvault.dicom.deid._config import DatePolicy, DeidConfig

TABLE_FILE = "ps3.15_table_e1-1.json"

# the option column of Table E.1-1 that each config flag turns on
_COLUMN_FLAGS: dict[str, str] = {
    "rtnSafePrivOpt": "retain_safe_private",
    "rtnUIDsOpt": "retain_uids",
    "rtnDevIdOpt": "retain_device_identity",
    "rtnInstIdOpt": "retain_institution_identity",
    "rtnPatCharsOpt": "retain_patient_characteristics",
    "cleanDescOpt": "clean_descriptors",
    "cleanStructContOpt": "clean_structured_content",
    "cleanGraphOpt": "clean_graphics",
}
# lower is more conservative; used only to settle disagreeing option columns
_CONSERVATIVE_RANK = {"X": 0, "Z": 1, "D": 2, "U": 3, "C": 4, "K": 5}


@dataclass(frozen=True)
class Row:
    tag: str
    name: str
    keyword: str | None
    vr: str | None
    match: str
    basic: str
    options: dict[str, str]
    value: int | None  # the tag as an int for ``exact`` rows
    mask: str | None


@dataclass(frozen=True)
class Table:
    edition: str
    rows: tuple[Row, ...]
    option_codes: dict[str, tuple[str, str]]  # column id -> (CID 7050 code, title)
    basic_code: str


def _data_text(name: str) -> str:
    return resources.files("medvault.dicom.deid").joinpath("data", name).read_text("utf-8")


def load_data(name: str) -> Any:
    """A JSON file shipped in ``medvault/dicom/deid/data``."""
    return json.loads(_data_text(name))


@functools.cache
def load_table() -> Table:
    raw = load_data(TABLE_FILE)
    rows = tuple(
        Row(
            tag=r["tag"],
            name=r["name"],
            keyword=r.get("keyword"),
            vr=r.get("vr"),
            match=r["match"],
            basic=r["basic"],
            options=dict(r.get("options", {})),
            value=int(r["group"] + r["element"], 16) if r["match"] == "exact" else None,
            mask=r.get("mask"),
        )
        for r in raw["rows"]
    )
    option_codes = {col: (v["cid7050_code"], v["title"]) for col, v in raw["option_columns"].items()}
    return Table(raw["edition"], rows, option_codes, raw["basic_profile_code"])


def active_columns(config: DeidConfig) -> tuple[str, ...]:
    cols = [col for col, flag in _COLUMN_FLAGS.items() if getattr(config, flag)]
    if config.dates is DatePolicy.FULL:
        cols.append("rtnLongFullDatesOpt")
    elif config.dates is DatePolicy.MODIFIED:
        cols.append("rtnLongModifDatesOpt")
    return tuple(cols)


def effective_code(row: Row, columns: tuple[str, ...]) -> str:
    """The code of ``row`` once the option columns in ``columns`` are applied."""
    applied = [row.options[c] for c in columns if c in row.options]
    if not applied:
        return row.basic
    return min(applied, key=lambda code: _CONSERVATIVE_RANK.get(code, 0))


@dataclass(frozen=True)
class CompiledActions:
    exact: dict[int, str]  # tag -> code
    curve: str  # (50XX,XXXX)
    overlay_data: str  # (60XX,3000)
    overlay_comments: str  # (60XX,4000)
    private: str  # (GGGG,EEEE) odd groups


@functools.lru_cache(maxsize=64)
def _compile(columns: tuple[str, ...]) -> CompiledActions:
    table = load_table()
    exact: dict[int, str] = {}
    masks: dict[str, str] = {}
    private = "X"
    for row in table.rows:
        code = effective_code(row, columns)
        if row.match == "exact":
            assert row.value is not None
            exact[row.value] = code
        elif row.match == "mask":
            assert row.mask is not None
            masks[row.mask] = code
        else:
            private = code
    return CompiledActions(
        exact=exact,
        curve=masks["50XXXXXX"],
        overlay_data=masks["60XX3000"],
        overlay_comments=masks["60XX4000"],
        private=private,
    )


def compile_actions(config: DeidConfig) -> CompiledActions:
    return _compile(active_columns(config))


@dataclass(frozen=True)
class _ConformanceRule:
    type: str
    sop_classes: tuple[str, ...]

    def applies(self, sop_class: str) -> bool:
        return any(sop_class.startswith(p) if p.endswith(".") else sop_class == p for p in self.sop_classes)


@functools.cache
def _conformance() -> dict[int, tuple[_ConformanceRule, ...]]:
    rules: dict[int, list[_ConformanceRule]] = {}
    for r in load_data("conformance.json")["rules"]:
        rules.setdefault(int(r["tag"], 16), []).append(_ConformanceRule(r["type"], tuple(r["sop_classes"])))
    return {tag: tuple(v) for tag, v in rules.items()}


def required_type(tag: int, sop_class: str) -> str | None:
    """'1' or '2' when the attribute is known to be Type 1 / 2 for ``sop_class``, else None."""
    for rule in _conformance().get(tag, ()):
        if rule.applies(sop_class):
            return rule.type
    return None


def resolve_combined(code: str, tag: int, sop_class: str, *, nested: bool) -> str:
    """The single action for a combined code: the first (most conservative) alternative unless
    IOD conformance needs a later one. ``X/Z/U*`` inside another sequence becomes ``U*``: the
    sequence is kept and the UIDs it contains are replaced (references in Type 1 structures).
    """
    if "/" not in code:
        return code
    alternatives = code.rstrip("*").split("/")
    needed = required_type(tag, sop_class)
    if code == "X/Z/U*":
        if needed is not None:
            return "Z" if needed == "2" else "U*"
        return "U*" if nested else "X"
    if needed == "1" and "D" in alternatives:
        return "D"
    if needed in ("1", "2") and "Z" in alternatives:
        return "Z"
    return alternatives[0]
