"""multipart/related (RFC 2387 / RFC 2046 §5.1) for STOW-RS requests and WADO-RS responses.

Bodies are parsed in memory as they arrive (:class:`MultipartReader`), never spooled to temp files,
so no plaintext DICOM touches the disk on its way in and a request holds at most its largest part.
The parser is strict: a body without its closing delimiter is refused.
"""

from __future__ import annotations

import io
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
    """One body part. ``oversized`` parts were longer than the reader's ``max_part_bytes``: their
    bytes were counted (``size``) and dropped while reading, never held in memory."""

    headers: dict[str, str]  # names lower case
    body: bytes
    oversized: bool = False
    size: int = -1  # bytes in the part's content; -1: len(body)

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    @property
    def length(self) -> int:
        return len(self.body) if self.size < 0 else self.size


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


MAX_PART_HEADER_BYTES = 16 * 1024
_MAX_PADDING = 1024  # transport padding allowed after a delimiter (RFC 2046 §5.1.1)


class MultipartReader:
    """An incremental multipart parser: ``feed`` it the body in chunks of any size and it returns
    each part as soon as its closing delimiter has arrived; ``close`` at the end of the body.

    Memory is bounded by the largest part it keeps (plus a delimiter's length): content is copied
    once, into the part's own buffer, and handed over without a further copy. A part longer than
    ``max_part_bytes`` is not kept at all (see :attr:`Part.oversized`). The grammar and the errors
    are those of :func:`parse_multipart`, which is this reader fed the whole body at once.
    """

    def __init__(self, boundary: str, *, max_part_bytes: int | None = None) -> None:
        self._delimiter = b"--" + boundary.encode("ascii")
        self._crlf_delimiter = b"\r\n" + self._delimiter
        self._max_part = max_part_bytes
        self._buf = bytearray()
        self._state = "start"  # start, preamble, delimiter, headers, content, done
        self._count = 0
        self._headers: dict[str, str] = {}
        self._content = io.BytesIO()
        self._size = 0
        self._oversized = False

    @property
    def parts_read(self) -> int:
        return self._count

    @property
    def done(self) -> bool:
        """The closing delimiter has been read (whatever follows is epilogue, ignored)."""
        return self._state == "done"

    def feed(self, chunk: bytes) -> list[Part]:
        """Add the next bytes of the body; returns the parts completed by them (often none)."""
        if self._state == "done":
            return []
        self._buf += chunk
        parts: list[Part] = []
        while self._state != "done":
            result = self._step()
            if result is None:
                break
            if isinstance(result, Part):
                parts.append(result)
        return parts

    def close(self) -> None:
        """The body has ended: raise ``InvalidInput`` unless it ended after a closing delimiter."""
        if self._state == "start":
            if self._buf.startswith(self._delimiter):
                self._state = "delimiter"
                del self._buf[: len(self._delimiter)]
            else:
                self._state = "preamble"
            self.feed(b"")
        if self._state == "done":
            return
        if self._state == "preamble":
            raise InvalidInput("multipart body does not contain its boundary")
        if self._state == "delimiter":
            raise InvalidInput("malformed multipart delimiter line")
        if self._state == "headers":
            raise InvalidInput(f"multipart part {self._count + 1} has no end of headers")
        raise InvalidInput(f"multipart part {self._count + 1} is not terminated (body truncated?)")

    def _step(self) -> Part | object | None:
        """One step over the buffer: a finished Part, _CONTINUE (the state moved on), or None
        (the buffer holds too little to go on: wait for more bytes)."""
        buf = self._buf
        if self._state == "start":
            if len(buf) < len(self._delimiter):
                return None
            if buf.startswith(self._delimiter):
                del buf[: len(self._delimiter)]
                self._state = "delimiter"
            else:
                self._state = "preamble"
            return _CONTINUE
        if self._state == "preamble":
            at = buf.find(self._crlf_delimiter)
            if at < 0:
                keep = len(self._crlf_delimiter) - 1
                if len(buf) > keep:
                    del buf[: len(buf) - keep]
                return None
            del buf[: at + len(self._crlf_delimiter)]
            self._state = "delimiter"
            return _CONTINUE
        if self._state == "delimiter":
            if len(buf) < 2:
                return None
            if buf.startswith(b"--"):
                if self._count == 0:
                    raise InvalidInput("multipart body has no parts")
                self._state = "done"
                buf.clear()
                return _CONTINUE
            eol = buf.find(b"\r\n")
            if eol < 0:
                if len(buf) > _MAX_PADDING or buf.strip(b" \t"):
                    raise InvalidInput("malformed multipart delimiter line")
                return None
            if buf[:eol].strip(b" \t"):
                raise InvalidInput("malformed multipart delimiter line")
            del buf[:eol]  # keep the CRLF: an empty header block is CRLF CRLF from here
            self._state = "headers"
            return _CONTINUE
        if self._state == "headers":
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_PART_HEADER_BYTES:
                    raise InvalidInput(f"multipart part {self._count + 1} has headers over 16 KB")
                return None
            if end > MAX_PART_HEADER_BYTES:
                raise InvalidInput(f"multipart part {self._count + 1} has headers over 16 KB")
            self._headers = _parse_headers(bytes(buf[2:end]), self._count + 1)
            del buf[: end + 4]
            self._state = "content"
            self._content = io.BytesIO()
            self._size = 0
            self._oversized = False
            return _CONTINUE
        if self._state == "content":
            at = buf.find(self._crlf_delimiter)
            if at < 0:
                take = len(buf) - (len(self._crlf_delimiter) - 1)
                if take > 0:
                    self._keep(take)
                return None
            self._keep(at)
            del buf[: len(self._crlf_delimiter)]
            self._count += 1
            self._state = "delimiter"
            if self._oversized:
                return Part(self._headers, b"", oversized=True, size=self._size)
            body = self._content.getvalue()  # the buffer itself, not a copy
            self._content = io.BytesIO()
            return Part(self._headers, body)
        return None

    def _keep(self, n: int) -> None:
        """Move the first ``n`` buffered bytes into the current part's content."""
        self._size += n
        if not self._oversized and self._max_part is not None and self._size > self._max_part:
            self._oversized = True
            self._content = io.BytesIO()
        if not self._oversized:
            with memoryview(self._buf) as view:
                self._content.write(view[:n])
        del self._buf[:n]


_CONTINUE = object()


def parse_multipart(body: bytes, boundary: str) -> list[Part]:
    """Split a whole multipart body into parts. Raises ``InvalidInput`` naming what is malformed."""
    reader = MultipartReader(boundary)
    parts = reader.feed(body)
    reader.close()
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
