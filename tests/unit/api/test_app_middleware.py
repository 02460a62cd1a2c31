"""The header / access-log middleware on its own: headers added, failures answered or cut off
without a traceback or any value reaching a log."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from medvault.api.app import HeadersAndAccessLog

SECRET = "DOE^JOHN 1961-04-02"


def run(app: Any) -> tuple[list[Message], Any]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/dicomweb/studies", "query_string": b"PatientName=DOE"}
    middleware = HeadersAndAccessLog(app, hsts=True)
    return sent, asyncio.run(middleware(scope, receive, send))


def test_security_headers_are_added_to_every_response() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"cache-control", b"max-age=5")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})

    sent, _ = run(app)
    headers = dict(sent[0]["headers"])
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert b"strict-transport-security" in headers
    assert headers[b"cache-control"] == b"max-age=5"  # a route's own value is kept


def test_failure_before_the_response_is_a_bare_500(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise ValueError(SECRET)

    with caplog.at_level(logging.INFO):
        sent, _ = run(app)
    assert sent[0]["status"] == 500
    assert b"internal error" in sent[1]["body"] and SECRET.encode() not in sent[1]["body"]
    assert "ValueError" in caplog.text and SECRET not in caplog.text and "PatientName" not in caplog.text


def test_failure_mid_stream_cuts_the_response_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise ValueError(SECRET)

    with caplog.at_level(logging.INFO):
        sent, _ = run(app)  # does not raise: the server then closes the unfinished response
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[-1]["more_body"] is True
    assert "ValueError" in caplog.text and SECRET not in caplog.text
    assert all(record.exc_info is None for record in caplog.records)
