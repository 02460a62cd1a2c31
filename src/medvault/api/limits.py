"""Request body limits, applied while the body is read and before any route runs (so before
authentication): a client without credentials can make a worker hold at most a route's limit.

    POST /dicomweb/studies[/{study}]   [server] max_request_bytes (streamed; memory is bounded
                                       by the largest instance, see medvault.archive.StoreSession)
    /auth/*                            16 KiB (sign-in forms)
    everything else                    1 MiB (admin and export requests; GETs carry no body)

A declared Content-Length over the limit is answered 413 at once, without reading; a chunked body
is cut off with 413 when it passes the limit.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medvault.errors import InvalidInput, MedvaultError, TooLarge

AUTH_BODY_BYTES = 16 * 1024
DEFAULT_BODY_BYTES = 1024 * 1024
_STOW_PATH = re.compile(r"/dicomweb/studies(/[^/]+)?/?")
_MAX_DIGITS = 19  # a u63: anything longer is not a length any body here can have

#: Answers an error outside the routes, in the same JSON shape as they do.
ErrorResponder = Callable[[MedvaultError, Scope, Receive, Send], Awaitable[None]]


class BodyLimits:
    def __init__(self, app: ASGIApp, *, stow_bytes: int, respond: ErrorResponder) -> None:
        self.app = app
        self.stow_bytes = stow_bytes
        self.respond = respond

    def limit_for(self, method: str, path: str) -> int:
        if method == "POST" and _STOW_PATH.fullmatch(path):
            return self.stow_bytes
        if path.startswith("/auth/"):
            return AUTH_BODY_BYTES
        return DEFAULT_BODY_BYTES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        declared = [value for name, value in scope["headers"] if name == b"content-length"]
        if declared:
            refusal = _check_declared(declared, limit)
            if refusal is not None:
                await self.respond(refusal, scope, receive, send)
                return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise TooLarge(f"the request body exceeds the limit of {limit} bytes for this route")
            return message

        await self.app(scope, limited, send)


def _check_declared(values: list[bytes], limit: int) -> MedvaultError | None:
    if len(values) != 1 or not values[0].isdigit() or len(values[0]) > _MAX_DIGITS:
        return InvalidInput("malformed Content-Length header")
    size = int(values[0])
    if size > limit:
        return TooLarge(f"a request body of {size} bytes exceeds the limit of {limit} for this route")
    return None
