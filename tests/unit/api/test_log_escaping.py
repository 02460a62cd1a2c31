"""The access log cannot be forged (issue #12, item 6): `/healthz%0d%0a<fake line>` once wrote a
line of the client's choosing into logs/access.log, and NUL bytes went in raw."""

from __future__ import annotations

import asyncio
import logging

from hypothesis import given
from hypothesis import strategies as st
from starlette.types import Message, Receive, Scope, Send

from medvault.api.app import HeadersAndAccessLog, loggable


@given(st.text(max_size=600))
def test_a_logged_text_is_one_printable_line(text: str) -> None:
    logged = loggable(text)
    assert "\n" not in logged and "\r" not in logged and "\x00" not in logged
    assert not any(0x80 <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in logged)
    assert len(logged) <= 4 * 512 + 1


def test_escapes_are_unambiguous() -> None:
    assert loggable("/a\r\nb\x00\\") == "/a\\x0d\\x0ab\\x00\\x5c"
    assert loggable("/x\u2028") == "/x\\u2028"
    assert loggable("/plain/path") == "/plain/path"


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_the_access_log_gets_one_line_per_request() -> None:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("medvault.access")
    handler = Keep()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        middleware = HeadersAndAccessLog(_app, hsts=True)
        scope: Scope = {"type": "http", "method": "GET", "path": "/healthz\r\n2026-01-01 forged line\x00"}

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            pass

        asyncio.run(middleware(scope, receive, send))
    finally:
        logger.removeHandler(handler)
    assert len(records) == 1
    assert "\n" not in records[0] and "\x00" not in records[0]
    assert records[0].startswith("GET /healthz\\x0d\\x0a2026-01-01 forged line\\x00 404")
