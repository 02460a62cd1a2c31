"""The app factory: routes, error mapping, security headers and a PHI-free access log.

No module-level app or settings: ``create_app`` receives everything, so tests and the server
build the same thing from explicit parts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.middleware.cors import CORSMiddleware

from medvault import __version__
from medvault.access.lockout import TooManyAttempts
from medvault.access.oidc import OidcVerifier
from medvault.api.account import router as account_router
from medvault.api.admin import router as admin_router
from medvault.api.auth import BearerChallenge
from medvault.api.dicomweb import router as dicomweb_router
from medvault.api.ledger import router as ledger_router
from medvault.api.research import router as research_router
from medvault.archive import Archive
from medvault.config import ServerSettings
from medvault.errors import MedvaultError
from medvault.guard import Guard
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


def create_app(
    archive: Archive,
    *,
    api_keys: ApiKeyStore,
    users: UserStore,
    guard: Guard,
    server: ServerSettings,
    oidc: OidcVerifier | None = None,
) -> FastAPI:
    app = FastAPI(
        title="medvault",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.archive = archive
    app.state.api_keys = api_keys
    app.state.users = users
    app.state.guard = guard
    app.state.oidc = oidc
    app.state.max_request_bytes = server.max_request_bytes
    app.state.public_url = server.public_url
    hsts = not server.plain_http

    @app.exception_handler(MedvaultError)
    async def medvault_error(_request: Request, exc: MedvaultError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # Name the parameter, never echo its value (a query may carry a patient name).
        names = sorted({".".join(str(p) for p in err.get("loc", ())[1:]) for err in exc.errors()})
        return JSONResponse({"error": f"invalid parameter: {', '.join(names)}"}, status_code=400)

    @app.middleware("http")
    async def headers_and_access_log(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as exc:
            # The traceback may quote data; log only the type. The client gets no internals.
            error_log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
            response = JSONResponse({"error": "internal error"}, status_code=500)
        for name, value in SECURITY_HEADERS.items():
            if name == "Strict-Transport-Security" and not hsts:
                continue
            response.headers.setdefault(name, value)
        # The query string is never logged: QIDO queries carry patient names and IDs.
        access_log.info(
            "%s %s %d %.1fms",
            request.method,
            request.url.path,
            response.status_code,
            (time.perf_counter() - started) * 1000,
        )
        return response

    if server.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(server.cors_origins),
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Accept", "X-CSRF-Token"],
        )

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    app.include_router(dicomweb_router)
    app.include_router(account_router)
    app.include_router(admin_router)
    app.include_router(ledger_router)
    app.include_router(research_router)
    return app
