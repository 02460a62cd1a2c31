"""Authentication for the HTTP API: bearer API keys, checked against the index's key table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from medvault.access.policy import Action, Principal, decide
from medvault.errors import Forbidden, Unauthenticated
from medvault.index.apikeys import ApiKeyStore


class BearerChallenge(Unauthenticated):
    """401 that tells the client how to authenticate."""


def authenticate(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise BearerChallenge(
            "authentication required", hint="Send `Authorization: Bearer <API key>` (see `medvault apikeys`)."
        )
    store: ApiKeyStore = request.app.state.api_keys
    info = store.authenticate(credential.strip())
    if info is None:
        raise BearerChallenge("the API key is unknown, revoked or expired")
    return Principal(name=info.name, role=info.role, method="api-key")


def require(action: Action) -> Callable[[Request], Principal]:
    """A dependency that authenticates and then asks the policy decision point."""

    def dependency(request: Request) -> Principal:
        principal = authenticate(request)
        decision = decide(principal, action)
        if not decision.allowed:
            raise Forbidden(f"not permitted: {decision.reason}")
        return principal

    return dependency


CanRead = Annotated[Principal, Depends(require(Action.STUDY_READ))]
CanStore = Annotated[Principal, Depends(require(Action.STUDY_STORE))]
CanDelete = Annotated[Principal, Depends(require(Action.STUDY_DELETE))]
