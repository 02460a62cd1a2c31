"""QIDO-RS query parameters (PS3.18 §8.3.4, §10.6) as matching criteria: protocol-neutral, so the
HTTP routes, the DIMSE C-FIND translation and the exporter all read a query the same way."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from medvault.dicom.matching import Criterion, parse_criterion, resolve_attribute
from medvault.errors import InvalidInput

MAX_LIMIT = 10_000
# accept and charset (PS3.18 §8.3.3) negotiate the response, which QIDO-RS always gives as
# application/dicom+json in UTF-8: they are taken and match nothing.
_CONTROL_PARAMS = {"includefield", "limit", "offset", "fuzzymatching", "accept", "charset"}


@dataclass(frozen=True)
class QidoQuery:
    criteria: list[Criterion]
    include_all: bool
    include_tags: list[str]
    offset: int
    limit: int | None


MAX_PARAMETERS = 100  # matching keys, includefields and controls in one query
_MAX_INT_DIGITS = 9


def _int_param(name: str, raw: str) -> int:
    # str.isdigit alone accepts "²" and other digits int() refuses
    if not (raw.isascii() and raw.isdigit()) or len(raw) > _MAX_INT_DIGITS:
        raise InvalidInput(f"{name} must be a non-negative integer of at most {_MAX_INT_DIGITS} digits")
    return int(raw)


def parse_query(params: Sequence[tuple[str, str]]) -> QidoQuery:
    """Turn query parameters into criteria. Unknown attributes are a 400, not silently ignored;
    so is an attribute given twice (PS3.18 §8.3.4.1: several values go in one parameter)."""
    if len(params) > MAX_PARAMETERS:
        raise InvalidInput(f"a query takes at most {MAX_PARAMETERS} parameters")
    criteria: list[Criterion] = []
    matched: set[str] = set()
    include_all, include_tags = False, []
    offset, limit = 0, None
    fuzzy = any(k == "fuzzymatching" and v.lower() == "true" for k, v in params)
    for key, value in params:
        if key == "includefield":
            for item in value.split(","):
                item = item.strip()
                if item == "all":
                    include_all = True
                elif item:
                    include_tags.append(resolve_attribute(item)[0])
        elif key == "limit":
            limit = min(_int_param("limit", value), MAX_LIMIT)
        elif key == "offset":
            offset = _int_param("offset", value)
        elif key == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise InvalidInput("fuzzymatching must be true or false")
        elif key in _CONTROL_PARAMS:
            continue
        else:
            tag, vr = resolve_attribute(key)
            if vr == "SQ":
                raise InvalidInput(f"sequence matching on {key} is not supported")
            if tag in matched:
                raise InvalidInput(
                    f"attribute {tag} is given more than once; put several values in one parameter"
                )
            matched.add(tag)
            criteria.append(parse_criterion(tag, vr, value, fuzzy=fuzzy))
    return QidoQuery(criteria, include_all, include_tags, offset, limit)
