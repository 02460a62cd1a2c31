"""Authentication for the HTTP API, and the dependencies that ask the policy decision point.

Credentials, in order: ``Authorization: Bearer`` with a user access token (``mva_…``), an API key
(``mvk_…``) or, when configured, an OIDC JWT from the site's identity provider; else the web
console's session cookie, which additionally needs the ``X-CSRF-Token`` header on every request
that changes state (double submit, bound to the session token).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request

from medvault.access.oidc import OidcVerifier
from medvault.access.policy import Action, Grant, Principal
from medvault.access.tokens import ACCESS_PREFIX
from medvault.errors import Forbidden, MedvaultError, Unauthenticated
from medvault.guard import Guard
from medvault.index.apikeys import KEY_PREFIX, ApiKeyStore
from medvault.index.users import UserStore

SESSION_COOKIE = "medvault_session"
CSRF_COOKIE = "medvault_csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class BearerChallenge(Unauthenticated):
    """401 that tells the client how to authenticate."""


def csrf_token_for(session_token: str) -> str:
    """The CSRF token of a session: derived from the HttpOnly session token, so a page on another
    origin can neither read nor compute it."""
    return hashlib.sha256(b"medvault-csrf\x00" + session_token.encode()).hexdigest()


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def _challenge(message: str) -> BearerChallenge:
    return BearerChallenge(
        message,
        hint="Send `Authorization: Bearer <token or API key>` (see POST /auth/token, `medvault apikeys`).",
    )


def authenticate(request: Request) -> Principal:
    now = datetime.now(UTC)
    header = request.headers.get("authorization", "")
    scheme, _, credential = header.partition(" ")
    credential = credential.strip()
    from_cookie = False
    if not header:
        credential = request.cookies.get(SESSION_COOKIE, "")
        from_cookie = bool(credential)
        if not credential:
            raise _challenge("authentication required")
    elif scheme.lower() != "bearer" or not credential:
        raise _challenge("authentication required")

    if from_cookie and request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), csrf_token_for(credential).encode()):
            raise Forbidden(
                "missing or wrong CSRF token", hint="Send the X-CSRF-Token header with the session's token."
            )

    users: UserStore = request.app.state.users
    principal: Principal | None
    if credential.startswith(ACCESS_PREFIX):
        principal = users.authenticate_token(credential, now=now)
    elif credential.startswith(KEY_PREFIX) and not from_cookie:
        keys: ApiKeyStore = request.app.state.api_keys
        info = keys.authenticate(credential, now=now)
        # API keys are service accounts: their role decides what they may do, on every study.
        principal = (
            Principal(name=info.name, role=info.role, method="api-key", grants=(Grant.site(),))
            if info
            else None
        )
    elif not from_cookie and request.app.state.oidc is not None:
        verifier: OidcVerifier = request.app.state.oidc
        try:
            identity = verifier.verify(credential, now=now)
        except MedvaultError:
            raise _challenge("the bearer token was not accepted") from None
        principal = users.principal_for_oidc(identity, now=now)
    else:
        principal = None
    if principal is None:
        raise _challenge("the token or API key is unknown, revoked or expired")
    request.state.principal = principal
    return principal


def require(action: Action) -> Callable[[Request], Principal]:
    """A dependency that authenticates, then asks the policy decision point whether this subject
    may do ``action`` at all (per-study checks follow in the route, through the guard)."""

    def dependency(request: Request) -> Principal:
        principal = authenticate(request)
        guard: Guard = request.app.state.guard
        guard.require(principal, action, client=client_address(request))
        return principal

    return dependency


def current_principal(request: Request) -> Principal:
    principal: Principal = request.state.principal
    return principal


CanRead = Annotated[Principal, Depends(require(Action.STUDY_READ))]
CanStore = Annotated[Principal, Depends(require(Action.STUDY_STORE))]
CanDelete = Annotated[Principal, Depends(require(Action.STUDY_DELETE))]
ManagesUsers = Annotated[Principal, Depends(require(Action.USERS_MANAGE))]
ReviewsBreakGlass = Annotated[Principal, Depends(require(Action.BREAKGLASS_REVIEW))]
UsesBreakGlass = Annotated[Principal, Depends(require(Action.BREAKGLASS_USE))]
Authenticated = Annotated[Principal, Depends(authenticate)]
