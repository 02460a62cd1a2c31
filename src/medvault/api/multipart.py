"""multipart/related (RFC 2387 / RFC 2046 §5.1) for STOW-RS requests and WADO-RS responses.

Bodies are parsed in memory, never spooled to temp files, so no plaintext DICOM touches the
disk on its way in. The parser is strict: a body without its closing delimiter is refused.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from medvault.errors import InvalidInput, UnsupportedMedia

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # noqa: S105 - an RFC 9110 token, not a secret
# Unquoted values are read leniently ("type=application/dicom" without quotes is common in the wild,
# though "/" is not a token character); quoted-strings are parsed strictly.
_PARAM_RE = re.compile(r";\s*(" + _TOKEN + r')\s*=\s*("(?:[^"\\]|\\.)*"|[^\s;,"]+)')
_BOUNDARY_RE = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{1,70}$")


@dataclass(frozen=True)
class MediaType:
    type: str  # e.g. "multipart/related", lower case
    params: dict[str, str] = field(default_factory=dict)  # names lower case, values unquoted

    def __str__(self) -> str:
        return self.type + "".join(f"; {k}={_quote(v)}" for k, v in self.params.items())


def _quote(value: str) -> str:
    """A parameter value as an RFC 9110 token, or a quoted-string with \\ and " escaped."""
    if re.fullmatch(_TOKEN, value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_media_type(value: str) -> MediaType:
    """Parse a Content-Type / one Accept entry. Raises ``InvalidInput`` on a malformed value."""
    value = value.strip()
    match = re.match(rf"^({_TOKEN}/{_TOKEN})\s*", value)
    if not match:
        raise InvalidInput("malformed media type")
    params: dict[str, str] = {}
    rest = value[match.end() :]
    pos = 0
    while pos < len(rest):
        pm = _PARAM_RE.match(rest, pos)
        if not pm:
            if rest[pos:].strip(" ;") == "":
                break
            raise InvalidInput("malformed media type parameters")
        name, raw = pm.group(1).lower(), pm.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[name] = raw
        pos = pm.end()
        while pos < len(rest) and rest[pos] == " ":
            pos += 1
    return MediaType(match.group(1).lower(), params)


def split_accept(header: str) -> list[MediaType]:
    """Accept header entries in order of preference (q-values honoured, q=0 dropped)."""
    entries: list[tuple[float, int, MediaType]] = []
    for pos, part in enumerate(_split_commas(header)):
        if not part.strip():
            continue
        media = parse_media_type(part)
        q = 1.0
        if "q" in media.params:
            try:
                q = float(media.params.pop("q"))
            except ValueError:
                raise InvalidInput("malformed q value in Accept") from None
        if q > 0:
            entries.append((-q, pos, media))
    return [m for _, _, m in sorted(entries, key=lambda e: (e[0], e[1]))]


def _split_commas(header: str) -> Iterator[str]:
    """Split on commas outside quoted strings."""
    start, quoted, escaped = 0, False, False
    for i, ch in enumerate(header):
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            yield header[start:i]
            start = i + 1
    yield header[start:]


@dataclass(frozen=True)
class Part:
    headers: dict[str, str]  # names lower case
    body: bytes

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


def boundary_of(content_type: str, *, expected_type: str = "application/dicom") -> str:
    """Check a STOW Content-Type and return its boundary."""
    media = parse_media_type(content_type)
    if media.type != "multipart/related":
        raise UnsupportedMedia(f'expected multipart/related; type="{expected_type}", got {media.type}')
    part_type = media.params.get("type")
    if part_type is not None and part_type.lower() != expected_type:
        raise UnsupportedMedia(f"multipart/related type={part_type} is not supported; use {expected_type}")
    boundary = media.params.get("boundary")
    if not boundary or not _BOUNDARY_RE.match(boundary) or boundary.endswith(" "):
        raise InvalidInput("multipart/related Content-Type lacks a valid boundary parameter")
    return boundary


def parse_multipart(body: bytes, boundary: str) -> list[Part]:
    """Split a multipart body into parts. Raises ``InvalidInput`` naming what is malformed."""
    delimiter = b"--" + boundary.encode("ascii")
    if body.startswith(delimiter):
        pos = 0
    else:
        pos = body.find(b"\r\n" + delimiter)
        if pos < 0:
            raise InvalidInput("multipart body does not contain its boundary")
        pos += 2
    parts: list[Part] = []
    while True:
        pos += len(delimiter)
        if body.startswith(b"--", pos):
            break  # closing delimiter
        eol = body.find(b"\r\n", pos)
        if eol < 0 or body[pos:eol].strip(b" \t"):
            raise InvalidInput("malformed multipart delimiter line")
        header_end = body.find(b"\r\n\r\n", eol)
        if body.startswith(b"\r\n\r\n", eol):
            headers_raw, content_start = b"", eol + 4
        elif header_end < 0:
            raise InvalidInput(f"multipart part {len(parts) + 1} has no end of headers")
        else:
            headers_raw, content_start = body[eol + 2 : header_end], header_end + 4
        next_delim = body.find(b"\r\n" + delimiter, content_start)
        if next_delim < 0:
            raise InvalidInput(f"multipart part {len(parts) + 1} is not terminated (body truncated?)")
        parts.append(Part(_parse_headers(headers_raw, len(parts) + 1), body[content_start:next_delim]))
        pos = next_delim + 2
    if not parts:
        raise InvalidInput("multipart body has no parts")
    return parts


def _parse_headers(raw: bytes, number: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    if not raw:
        return headers
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidInput(f"multipart part {number} has non-ASCII headers") from None
    for line in text.split("\r\n"):
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise InvalidInput(f"multipart part {number} has a malformed header line")
        headers[name.strip().lower()] = value.strip()
    return headers


def new_boundary() -> str:
    return "medvault-" + secrets.token_hex(16)


def encode_part_head(boundary: str, content_type: str, extra: dict[str, str] | None = None) -> bytes:
    """A part's delimiter and headers; the body and a CRLF follow."""
    head = f"--{boundary}\r\nContent-Type: {content_type}\r\n"
    for name, value in (extra or {}).items():
        head += f"{name}: {value}\r\n"
    return head.encode("ascii") + b"\r\n"


def encode_part(boundary: str, content_type: str, body: bytes, extra: dict[str, str] | None = None) -> bytes:
    return encode_part_head(boundary, content_type, extra) + body + b"\r\n"


def closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("ascii")


def encode_multipart(boundary: str, parts: Iterable[tuple[str, bytes]]) -> bytes:
    return b"".join(encode_part(boundary, ct, body) for ct, body in parts) + closing(boundary)
