"""Identities and the policy decision point. Deny by default.

Pure modules: :mod:`~medvault.access.policy` (``decide``), :mod:`~medvault.access.passwords`,
:mod:`~medvault.access.totp`, :mod:`~medvault.access.lockout`, :mod:`~medvault.access.tokens`;
:mod:`~medvault.access.oidc` verifies bearer JWTs (fetches a JWKS). Accounts, sessions and
counters are kept by :class:`medvault.index.users.UserStore`.
"""

from medvault.access.policy import (
    ROLE_PERMISSIONS,
    ROLES,
    Action,
    AuditSink,
    Context,
    Decision,
    DecisionEvent,
    DecisionPoint,
    Grant,
    MemoryAuditSink,
    Principal,
    Resource,
    decide,
    enforce,
    load_roles,
)

__all__ = [
    "ROLES",
    "ROLE_PERMISSIONS",
    "Action",
    "AuditSink",
    "Context",
    "Decision",
    "DecisionEvent",
    "DecisionPoint",
    "Grant",
    "MemoryAuditSink",
    "Principal",
    "Resource",
    "decide",
    "enforce",
    "load_roles",
]
