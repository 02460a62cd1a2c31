"""The app factory: routes, error mapping, security headers and a PHI-free access log.

No module-level app or settings: ``create_app`` receives everything, so tests and the server
build the same thing from explicit parts.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medvault import __version__
from medvault.access.lockout import TooManyAttempts
from medvault.access.oidc import OidcVerifier
from medvault.api.account import router as account_router
from medvault.api.admin import router as admin_router
from medvault.api.alerts import router as alerts_router
from medvault.api.auth import Authenticated, BearerChallenge
from medvault.api.dicomweb import router as dicomweb_router
from medvault.api.health import router as health_router
from medvault.api.ledger import router as ledger_router
from medvault.api.limits import BodyLimits
from medvault.api.metrics import RequestMetrics
from medvault.api.metrics import router as metrics_router
from medvault.api.openapi import document
from medvault.api.patient_rights import router as patient_rights_router
from medvault.api.research import router as research_router
from medvault.api.retention import router as retention_router
from medvault.api.training import router as training_router
from medvault.archive import Archive
from medvault.config import ServerSettings
from medvault.errors import MedvaultError
from medvault.guard import Guard
from medvault.index.alerts import AlertStore
from medvault.index.apikeys import ApiKeyStore
from medvault.index.users import UserStore

access_log = logging.getLogger("medvault.access")
error_log = logging.getLogger("medvault.errors")

SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class HeadersAndAccessLog:
    """Security headers on every response and one access-log line per request (method, path,
    status, time: never the query string, which carries patient names and IDs). An unhandled
    error becomes a bare 500; only its type is logged (a traceback may quote data).

    Pure ASGI rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware passes each
    body chunk of a streamed response through an extra task and stream (WADO bodies are GBs).
    """

    def __init__(self, app: ASGIApp, *, hsts: bool, metrics: RequestMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in SECURITY_HEADERS.items()
            if hsts or name != "Strict-Transport-Security"
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in self.headers if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            method, path = loggable(scope["method"]), loggable(scope["path"])
            error_log.error("unhandled %s on %s %s", type(exc).__name__, method, path)
            if status:
                # The response already started (a stream failed midway): return without completing
                # it, so the server closes the connection; re-raising would have it log the traceback.
                return
            await JSONResponse({"error": "internal error"}, status_code=500)(
                scope, receive, send_with_headers
            )
        finally:
            elapsed = time.perf_counter() - started
            access_log.info(
                "%s %s %d %.1fms", loggable(scope["method"]), loggable(scope["path"]), status, elapsed * 1000
            )
            if self.metrics is not None:
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                self.metrics.observe(
                    scope["method"] if scope["method"] in _METHODS else "OTHER", route, status, elapsed
                )


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\\\u2028\u2029]")
_MAX_LOGGED = 512


def loggable(text: str) -> str:
    """``text`` safe for a one-line log record: control characters (CR, LF, NUL, C1, line and
    paragraph separators) and backslashes escaped as ``\\xNN`` / ``\\uNNNN``, so a request cannot
    forge log lines; cut at 512 characters."""

    def escape(match: re.Match[str]) -> str:
        code = ord(match.group())
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    cut = text[:_MAX_LOGGED]
    return _UNPRINTABLE.sub(escape, cut) + ("…" if len(text) > _MAX_LOGGED else "")


def _error_response(exc: MedvaultError) -> JSONResponse:
    payload = {"error": exc.message}
    if exc.hint:
        payload["hint"] = exc.hint
    headers: dict[str, str] = {}
    if isinstance(exc, BearerChallenge):
        headers["WWW-Authenticate"] = 'Bearer realm="medvault"'
    if isinstance(exc, TooManyAttempts):
        headers["Retry-After"] = str(exc.retry_after)
    return JSONResponse(payload, status_code=exc.http_status, headers=headers or None)


def route_table() -> FastAPI:
    """The app's routes without any state: what ``create_app`` serves, and what the OpenAPI
    document (medvault.api.openapi) describes."""
    app = FastAPI(
        title="medvault",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served behind authentication at /api/openapi.json instead
    )

    @app.get("/api/openapi.json")
    def openapi_document(who: Authenticated) -> JSONResponse:
        return JSONResponse(document(app))

    app.include_router(health_router)
    app.include_router(dicomweb_router)
    app.include_router(account_router)
    app.include_router(admin_router)
    app.include_router(alerts_router)
    app.include_router(ledger_router)
    app.include_router(research_router)
    app.include_router(retention_router)
    app.include_router(patient_rights_router)
    app.include_router(training_router)
    app.include_router(metrics_router)
    return app


def create_app(
    archive: Archive,
    *,
    api_keys: ApiKeyStore,
    users: UserStore,
    guard: Guard,
    server: ServerSettings,
    oidc: OidcVerifier | None = None,
    alerts: AlertStore | None = None,
    metrics_dir: Path | None = None,
) -> FastAPI:
    """``metrics_dir``: where worker processes share their request counters (see api/metrics.py)."""
    app = route_table()
    app.state.alerts = alerts
    app.state.metrics = RequestMetrics(metrics_dir)
    app.state.archive = archive
    app.state.api_keys = api_keys
    app.state.users = users
    app.state.guard = guard
    app.state.oidc = oidc
    app.state.max_request_bytes = server.max_request_bytes
    app.state.public_url = server.public_url

    @app.exception_handler(MedvaultError)
    async def medvault_error(_request: Request, exc: MedvaultError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # Name the parameter, never echo its value (a query may carry a patient name).
        names = sorted({".".join(str(p) for p in err.get("loc", ())[1:]) for err in exc.errors()})
        return JSONResponse({"error": f"invalid parameter: {', '.join(names)}"}, status_code=400)

    async def respond(error: MedvaultError, scope: Scope, receive: Receive, send: Send) -> None:
        await _error_response(error)(scope, receive, send)

    app.add_middleware(BodyLimits, stow_bytes=server.max_request_bytes, respond=respond)
    app.add_middleware(HeadersAndAccessLog, hsts=not server.plain_http, metrics=app.state.metrics)

    if server.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(server.cors_origins),
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Accept", "X-CSRF-Token"],
        )
    return app
