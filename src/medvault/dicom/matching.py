"""Attribute matching for QIDO-RS and C-FIND (PS3.4 C.2.2.2), over DICOM JSON elements. Pure.

SPEC: https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_C.2.2.2
SPEC: https://dicom.nema.org/medical/dicom/current/output/html/part18.html#sect_8.3.4

How a query value is read (:func:`parse_criterion`):

- empty, or only ``*``                       -> UNIVERSAL (every record matches, even without the element)
- VR UI with ``\\``                          -> UID_LIST (any of the listed UIDs)
- VR DA/TM/DT with ``-``                      -> RANGE (``a-b``, ``-b``, ``a-``; inclusive)
- ``*`` or ``?`` present (not UI/DA/TM/DT)    -> WILDCARD (``*`` any run, ``?`` one character;
                                                 every other character, ``[`` included, is literal)
- otherwise                                   -> SINGLE

Decisions:

- PN matching (single and wildcard) is case-insensitive **and accent-insensitive**: both sides go
  through :func:`normalize_for_exact` (NFKD, combining marks removed, casefold, trailing ``^`` and
  spaces removed), so ``müller`` matches ``MULLER``. The Alphabetic, Ideographic and Phonetic
  groups are each tried. With ``fuzzy=True`` a PN value also matches when the query matches the
  start of any single name component (``jo`` matches ``Doe^John``; ``jo*n`` matches too).
- Other VRs match case-sensitively (PS3.4), after removing insignificant spaces.
- TM and DT values are compared as digit strings padded to full precision: a lower bound is padded
  with its minimum (``0930`` -> ``093000.000000``) and an upper bound with the end of the unit it names
  (``0930`` -> ``093059.999999``), so ``-0930`` includes ``093012.5``. A SINGLE TM/DT value matches the
  stored values that fall within the unit it names (``0930`` matches ``093000.123``).
  DT timezone suffixes are ignored.
- Numeric VRs (IS, DS, US, ...) compare numerically; a non-numeric query is refused.
- A multi-valued element matches if any of its values matches; an element with no value matches
  only UNIVERSAL.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_dict

from medvault.errors import InvalidInput

__all__ = [
    "Criterion",
    "MatchKind",
    "normalize_for_exact",
    "parse_criterion",
    "resolve_attribute",
]

_HEX_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MAX_UID_LIST = 1000
_DA = re.compile(r"^\d{8}$")
_TM = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_DT = re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_NUMERIC_VRS = frozenset({"IS", "DS", "FL", "FD", "SL", "SS", "SV", "UL", "US", "UV"})
_DATE_VRS = frozenset({"DA", "TM", "DT"})
_WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT", "AS"})
_BOTH_STRIP_VRS = frozenset({"AE", "CS", "SH", "LO", "UC", "AS"})


def resolve_attribute(name: str) -> tuple[str, str]:
    """Return ``(tag, VR)`` for a keyword (``PatientName``) or an 8-hex tag (``00100010``).

    Sequence paths (``00081250.00081150``) and private or unknown attributes are refused with
    :class:`InvalidInput` naming the parameter.
    """
    if "." in name:
        raise InvalidInput(f"query attribute {name!r}: sequence attribute paths are not supported")
    if _HEX_TAG.match(name):
        tag = int(name, 16)
    elif name in keyword_dict:
        tag = int(keyword_dict[name])
    else:
        raise InvalidInput(f"unknown query attribute {name!r}")
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        raise InvalidInput(f"unknown query attribute {name!r}") from None
    if " or " in vr:
        vr = vr.split(" or ")[0]
    return f"{tag:08X}", vr


class MatchKind(Enum):
    UNIVERSAL = "universal"
    SINGLE = "single"
    WILDCARD = "wildcard"
    UID_LIST = "uid_list"
    RANGE = "range"


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def normalize_for_exact(vr: str, value: str) -> str:
    """The normalized form used for exact lookups (blind-index tokens) and SINGLE matching.

    PN: accent-folded, casefolded, trailing ``^`` and spaces removed (apply it to each of the
    Alphabetic/Ideographic/Phonetic groups when indexing). UI: trailing NULs and spaces removed.
    AE/CS/SH/LO/UC/AS: leading and trailing spaces removed. Others: trailing spaces removed.
    """
    if vr == "PN":
        return _fold(value).rstrip("^ ")
    if vr == "UI":
        return value.rstrip("\x00 ")
    if vr in _BOTH_STRIP_VRS:
        return value.strip(" ")
    return value.rstrip(" ")


def _tm_key(value: str, *, high: bool) -> str:
    """HHMMSS.FFFFFF padded to full precision (low: zeros; high: end of the unit named)."""
    value = value.strip()
    if "." in value:
        head, frac = value.split(".", 1)
        frac = (frac + ("9" * 6 if high else "0" * 6))[:6]
        return head.ljust(6, "0") + "." + frac
    if high:
        return value + "235959"[len(value) :] + ".999999"
    return value.ljust(6, "0") + ".000000"


def _dt_key(value: str, *, high: bool) -> str:
    value = re.sub(r"[+-]\d{4}$", "", value.strip())
    if "." in value:
        head, frac = value.split(".", 1)
        frac = (frac + ("9" * 6 if high else "0" * 6))[:6]
        return head.ljust(14, "0") + "." + frac
    template = "99991231235959" if high else "00000101000000"
    return value + template[len(value) :] + (".999999" if high else ".000000")


def _date_key(vr: str, value: str, *, high: bool) -> str:
    if vr == "DA":
        return value.strip().replace(".", "")
    if vr == "TM":
        return _tm_key(value.replace(":", ""), high=high)
    return _dt_key(value, high=high)


def _wildcard_regex(pattern: str, *, prefix: bool = False) -> re.Pattern[str]:
    parts = []
    for ch in pattern:
        if ch == "*":
            parts.append(".*")
        elif ch == "?":
            parts.append(".")
        else:
            parts.append(re.escape(ch))
    if prefix:
        parts.append(".*")
    return re.compile("".join(parts), re.DOTALL)


def _validate_date(vr: str, value: str, tag: str) -> None:
    pattern = {"DA": _DA, "TM": _TM, "DT": _DT}[vr]
    checked = value.replace(":", "") if vr == "TM" else value
    if vr == "DA":
        checked = value.replace(".", "") if len(value) == 10 else value
    if not pattern.match(checked):
        raise InvalidInput(f"malformed {vr} value for attribute {tag}: expected a {vr} or a range")


@dataclass(frozen=True)
class Criterion:
    """One matching key: which element, how to match, and the (normalized) query value."""

    tag: str
    vr: str
    kind: MatchKind
    value: str
    uids: tuple[str, ...] = ()
    low: str | None = None
    high: str | None = None
    fuzzy: bool = False

    @property
    def exact_value(self) -> str | None:
        """The normalized value to look up through a blind index when kind is SINGLE, else None.

        For TM/DT, :meth:`matches` also accepts finer stored values (``0930`` vs ``093000``), so an
        index must not rely on this token alone for those VRs. With ``fuzzy`` PN it is also a
        prefix, not an exact token.
        """
        if self.kind is not MatchKind.SINGLE:
            return None
        return normalize_for_exact(self.vr, self.value)

    @cached_property
    def _regex(self) -> re.Pattern[str]:
        pattern = normalize_for_exact(self.vr, self.value) if self.vr == "PN" else self.value
        return _wildcard_regex(pattern)

    def matches(self, element: dict[str, Any] | None) -> bool:
        """Whether a record's DICOM JSON element (``None`` if absent) satisfies this key."""
        if self.kind is MatchKind.UNIVERSAL:
            return True
        if element is None:
            return False
        values = element.get("Value")
        if not isinstance(values, list):
            return False
        return any(self._match_one(v) for v in values if v is not None and v != "")

    def _match_one(self, stored: Any) -> bool:
        if self.vr == "PN":
            return any(self._match_text(name) for name in _pn_strings(stored))
        if self.vr in _NUMERIC_VRS:
            return self._match_number(stored)
        if not isinstance(stored, str):
            stored = str(stored)
        return self._match_text(stored)

    def _match_number(self, stored: Any) -> bool:
        try:
            number = float(stored)
        except (TypeError, ValueError):
            return False
        return self.kind is MatchKind.SINGLE and number == float(self.value)

    def _match_text(self, stored: str) -> bool:
        kind = self.kind
        if kind is MatchKind.UID_LIST:
            return stored.rstrip("\x00 ") in self.uids
        if kind is MatchKind.RANGE:
            return self._in_range(stored)
        if kind is MatchKind.SINGLE and self.vr in ("TM", "DT"):
            return self._in_unit(stored)
        if self.vr == "PN":
            name = normalize_for_exact("PN", stored)
            candidates = [name]
            if self.fuzzy:
                candidates.extend(c for c in re.split(r"[\^ ]+", name) if c)
            if kind is MatchKind.SINGLE:
                query = normalize_for_exact("PN", self.value)
                if self.fuzzy:
                    return any(c.startswith(query) for c in candidates)
                return name == query
            if self.fuzzy:
                prefix = _wildcard_regex(normalize_for_exact("PN", self.value), prefix=True)
                return any(prefix.fullmatch(c) for c in candidates)
            return self._regex.fullmatch(name) is not None
        normalized = normalize_for_exact(self.vr, stored)
        if kind is MatchKind.SINGLE:
            return normalized == normalize_for_exact(self.vr, self.value)
        return self._regex.fullmatch(normalized) is not None

    def _in_range(self, stored: str) -> bool:
        try:
            key = _date_key(self.vr, stored, high=False)
        except ValueError:
            return False
        if self.low is not None and key < _date_key(self.vr, self.low, high=False):
            return False
        return not (self.high is not None and key > _date_key(self.vr, self.high, high=True))

    def _in_unit(self, stored: str) -> bool:
        key = _date_key(self.vr, stored, high=False)
        return _date_key(self.vr, self.value, high=False) <= key <= _date_key(self.vr, self.value, high=True)


def _pn_strings(stored: Any) -> list[str]:
    if isinstance(stored, dict):
        return [v for k in ("Alphabetic", "Ideographic", "Phonetic") if isinstance(v := stored.get(k), str)]
    if isinstance(stored, str):
        return stored.split("=")
    return []


def parse_criterion(tag: str, vr: str, raw: str, *, fuzzy: bool = False) -> Criterion:
    """Read a QIDO-RS / C-FIND query value for ``tag`` (of ``vr``) into a :class:`Criterion`.

    Malformed values (bad date ranges, non-numeric numbers, non-UID characters in UI) raise
    :class:`InvalidInput` naming the attribute, never quoting the value.
    """
    value = raw.strip(" ") if vr != "PN" else raw.strip()
    if value == "" or (value == "*" and vr not in _DATE_VRS and vr != "UI"):
        return Criterion(tag, vr, MatchKind.UNIVERSAL, "", fuzzy=fuzzy)
    if vr == "UI":
        uids = tuple(u.strip(" \x00") for u in value.split("\\"))
        if len(uids) > MAX_UID_LIST:
            raise InvalidInput(f"a UID list for attribute {tag} has more than {MAX_UID_LIST} UIDs")
        if any(not _UID.match(u) or len(u) > 64 for u in uids):
            raise InvalidInput(f"malformed UID in query for attribute {tag}")
        if len(uids) > 1:
            return Criterion(tag, vr, MatchKind.UID_LIST, value, uids=uids, fuzzy=fuzzy)
        return Criterion(tag, vr, MatchKind.SINGLE, uids[0], uids=uids, fuzzy=fuzzy)
    if vr in _DATE_VRS:
        if "-" in value:
            if value.count("-") != 1 and vr != "DT":
                raise InvalidInput(f"malformed {vr} range for attribute {tag}: expected a-b, -b or a-")
            low_s, high_s = _split_range(vr, value, tag)
            low = low_s or None
            high = high_s or None
            if low is None and high is None:
                raise InvalidInput(f"malformed {vr} range for attribute {tag}: both bounds are empty")
            for bound in (low, high):
                if bound is not None:
                    _validate_date(vr, bound, tag)
            if (
                low is not None
                and high is not None
                and _date_key(vr, low, high=False) > _date_key(vr, high, high=True)
            ):
                raise InvalidInput(
                    f"{vr} range for attribute {tag} has its lower bound after its upper bound"
                )
            return Criterion(tag, vr, MatchKind.RANGE, value, low=low, high=high, fuzzy=fuzzy)
        _validate_date(vr, value, tag)
        if vr == "DA" and len(value) == 10:
            value = value.replace(".", "")
        return Criterion(tag, vr, MatchKind.SINGLE, value, fuzzy=fuzzy)
    if vr in _NUMERIC_VRS:
        if not _NUMBER.match(value):
            raise InvalidInput(f"query value for attribute {tag} (VR {vr}) is not a number")
        return Criterion(tag, vr, MatchKind.SINGLE, value, fuzzy=fuzzy)
    if ("*" in value or "?" in value) and vr in _WILDCARD_VRS:
        return Criterion(tag, vr, MatchKind.WILDCARD, value, fuzzy=fuzzy)
    return Criterion(tag, vr, MatchKind.SINGLE, value, fuzzy=fuzzy)


def _split_range(vr: str, value: str, tag: str) -> tuple[str, str]:
    """Split ``a-b`` / ``-b`` / ``a-``. DT bounds may carry ``-hhmm`` offsets: split on the ``-``
    that leaves two well-formed (or empty) bounds."""
    candidates = [i for i, c in enumerate(value) if c == "-"]
    for i in candidates:
        low, high = value[:i], value[i + 1 :]
        if vr != "DT":
            return low, high
        if (low == "" or _DT.match(low)) and (high == "" or _DT.match(high)):
            return low, high
    raise InvalidInput(f"malformed {vr} range for attribute {tag}: expected a-b, -b or a-")
