"""Cleaning free text: identifying values and quoted UIDs, wherever text survives.

Two strengths:

* ``light`` (text the profile keeps: K rows and attributes outside the table): removes the
  values the profile removed or replaced elsewhere in the same instance (names, IDs, dates,
  descriptions, institution ...: the instance's *vocabulary*) and replaces quoted UIDs;
* ``full`` (the C action on text, free-text VRs ST/LT/UT, SR TextValue, code meanings, overlay
  labels): also removes date-like strings, digit runs of 5 or more (IDs, phone numbers),
  e-mail addresses and titled names ("Dr. Xyz").
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable

REDACTED = "***"

_UID = r"(?<![\w.])(?P<uid>[0-2](?:\.(?:0|[1-9][0-9]*)){3,})(?![\w.])"
_DATE = (
    r"(?P<date>\b(?:19|20)\d\d[-/.]?(?:0[1-9]|1[0-2])[-/.]?(?:0[1-9]|[12]\d|3[01])\b"
    r"|\b\d{1,2}[-/.]\d{1,2}[-/.](?:\d{4}|\d{2})\b)"
)
_NUMBER = r"(?P<num>\b\d{5,}\b)"
_EMAIL = r"(?P<email>[\w.+-]+@[\w-]+(?:\.[\w-]+)+)"
_TITLED = r"(?P<titled>\b(?:Dr|Mr|Mrs|Ms|Prof)\.?\s+[A-Z][\w'-]+)"

# vocabulary entries never worth hunting (too common to identify anyone)
_STOP = frozenset({"ANONYMIZED", "UNKNOWN", "NONE", "NULL", "YES", "NO", "TRUE", "FALSE", "N/A", "ANON"})
MIN_TERM = 3


def vocabulary_terms(vr: str, value: str) -> Iterable[str]:
    """The substrings of an identifying value worth hunting for elsewhere."""
    text = value.strip()
    if not text:
        return
    if vr == "PN":
        for group in text.split("="):
            whole = " ".join(p for p in group.replace("^", " ").split() if p)
            if len(whole) >= MIN_TERM:
                yield whole
            for part in re.split(r"[\^ ,]+", group):
                if len(part) >= MIN_TERM and part.upper() not in _STOP:
                    yield part
        return
    if vr in ("DA", "DT"):
        d = text[:8]
        if len(d) == 8 and d.isdigit():
            y, m, day = d[:4], d[4:6], d[6:8]
            yield from (d, f"{y}-{m}-{day}", f"{y}/{m}/{day}", f"{y}.{m}.{day}", f"{day}.{m}.{y}",
                        f"{day}/{m}/{y}", f"{m}/{day}/{y}")  # fmt: skip
        return
    if len(text) >= 4 and text.upper() not in _STOP:
        yield text


@functools.lru_cache(maxsize=256)
def _compiled(terms: tuple[str, ...], full: bool) -> re.Pattern[str]:
    parts = [_UID]
    if terms:
        parts.append("(?P<vocab>" + "|".join(re.escape(t) for t in terms) + ")")
    if full:
        parts += [_EMAIL, _DATE, _NUMBER, _TITLED]
    return re.compile("|".join(parts), re.IGNORECASE)


class Scrubber:
    """Cleans strings of one instance; ``map_uid`` is None when UIDs are retained."""

    __slots__ = ("_full", "_light", "_map_uid", "changed")

    def __init__(self, terms: Iterable[str], map_uid: Callable[[str], str] | None) -> None:
        ordered = tuple(sorted(set(terms), key=lambda t: (-len(t), t)))
        self._light = _compiled(ordered, False)
        self._full = _compiled(ordered, True)
        self._map_uid = map_uid
        self.changed = 0

    def _replace(self, m: re.Match[str]) -> str:
        uid = m.group("uid")
        if uid is not None:
            if self._map_uid is None:
                return uid
            new = self._map_uid(uid)
            if new != uid:
                self.changed += 1
            return new
        self.changed += 1
        return REDACTED

    def clean(self, text: str, *, full: bool) -> str:
        if not text:
            return text
        pattern = self._full if full else self._light
        return pattern.sub(self._replace, text)
