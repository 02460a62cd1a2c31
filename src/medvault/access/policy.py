"""The policy decision point: ``decide(principal, action) -> Decision``. Pure; deny by default.

This is the foundation's small role table (API-key roles). The access-control work extends the
subject, resource and context; callers already ask this one function for every route.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    STUDY_STORE = "study.store"
    STUDY_READ = "study.read"
    STUDY_DELETE = "study.delete"


ROLE_PERMISSIONS: dict[str, frozenset[Action]] = {
    "admin": frozenset({Action.STUDY_STORE, Action.STUDY_READ, Action.STUDY_DELETE}),
    "viewer": frozenset({Action.STUDY_READ}),
    "service": frozenset({Action.STUDY_STORE}),
}
ROLES = tuple(ROLE_PERMISSIONS)


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    method: str  # how it authenticated, e.g. "api-key"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


def decide(principal: Principal | None, action: Action) -> Decision:
    if principal is None:
        return Decision(False, "not authenticated")
    permissions = ROLE_PERMISSIONS.get(principal.role)
    if permissions is None:
        return Decision(False, f"unknown role {principal.role!r}")
    if action in permissions:
        return Decision(True, f"role {principal.role} grants {action}")
    return Decision(False, f"role {principal.role} does not grant {action}")
