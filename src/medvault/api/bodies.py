"""Reading small request bodies (sign-in forms, admin and export requests): bounded while read,
decoded strictly, every failure a 400 that names what was wrong and never echoes the value."""

from __future__ import annotations

import json
import urllib.parse
from datetime import date
from typing import Any

from fastapi import Request

from medvault.errors import InvalidInput, TooLarge, UnsupportedMedia

FORM_TYPE = "application/x-www-form-urlencoded"
JSON_TYPE = "application/json"


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it passes ``limit`` bytes (nothing more is read)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the request body exceeds the limit of {limit} bytes for this route")
        chunks.append(chunk)
    return b"".join(chunks)


def media_type(request: Request) -> str:
    return (request.headers.get("content-type") or "").split(";")[0].strip().lower()


def decode_json(body: bytes) -> Any:
    """JSON, or a 400: malformed, not UTF-8, or nested too deeply to parse."""
    try:
        return json.loads(body or b"{}")
    except RecursionError:
        raise InvalidInput("the JSON body is nested too deeply") from None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise InvalidInput("the body is not valid JSON") from None


def decode_form(body: bytes) -> list[tuple[str, str]]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("the form is not UTF-8") from None
    return urllib.parse.parse_qsl(text, keep_blank_values=True)


async def read_pairs(request: Request, limit: int) -> tuple[str, Any]:
    """(``"form"``, pairs) or (``"json"``, data) from a form or JSON body of at most ``limit`` bytes."""
    kind = media_type(request)
    if kind not in (JSON_TYPE, FORM_TYPE, ""):
        raise UnsupportedMedia(f"send {FORM_TYPE} or {JSON_TYPE}")
    body = await read_limited(request, limit)
    if kind == JSON_TYPE:
        return "json", decode_json(body)
    return "form", decode_form(body)


def date_field(fields: dict[str, str], name: str) -> date | None:
    """An optional YYYY-MM-DD field; a 400 naming the field when malformed."""
    raw = fields.get(name, "")
    if not raw:
        return None
    if raw.isascii() and len(raw) == 10:
        try:
            return date.fromisoformat(raw)
        except ValueError:
            pass
    raise InvalidInput(f"{name} must be a date (YYYY-MM-DD)")


def days_field(fields: dict[str, str], name: str, *, maximum: int = 36500) -> int | None:
    """An optional whole number of days (1 to ``maximum``); a 400 naming the field otherwise."""
    raw = fields.get(name, "")
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= maximum:
        raise InvalidInput(f"{name} must be a whole number of days from 1 to {maximum}")
    return int(raw)
