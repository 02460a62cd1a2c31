"""The one policy decision point: ``decide(subject, action, resource, context) -> Decision``.

Pure and deny by default. Every route, DIMSE service and CLI command asks this one function; the
:class:`DecisionPoint` wrapper also hands every decision (permit and deny) to an :class:`AuditSink`.

The order of the rules (the first that denies wins):

1. no subject -> deny ("not authenticated");
2. a subject that must change its one-time password may do nothing else;
3. the union of the subject's roles must grant the action (built-in :data:`ROLE_PERMISSIONS`,
   or a table from :func:`load_roles`; unknown roles grant nothing);
4. training gate: a *human* subject needs unexpired privacy training for the actions in
   :data:`PHI_ACTIONS`; the reason says so, so the person knows why (``training_expires`` is the
   earliest expiry among the courses required for the subject's roles, see
   :mod:`medvault.access.training`). Break-glass is the one way past it: opening a session, and
   reading the study of an open session, stay possible in an emergency and are recorded as such
   (with a session open, the capability check passes and each other study is refused);
5. de-identified data only: ``deid.read`` needs a resource marked ``deidentified``; ``deid.export``
   permits with the obligation ``deidentify`` (the export must go through the PS3.15 engine),
   unless the subject's exports are held after a security alert (``exports_held``);
6. scope, for the actions in :data:`SCOPED_ACTIONS` when a resource is given: a grant (patient
   pseudonym, study UID, department / care team, or the whole site), the subject named as the
   study's referring physician, or an open break-glass session for that study. Outside scope the
   decision is *concealed*: callers answer exactly as for a resource that does not exist (HTTP 404);
7. ``breakglass.use`` (opening a session) needs a reason of at least
   :data:`MIN_BREAK_GLASS_REASON` characters and carries the obligation ``audit:break-glass``;
   reads through a session carry the same obligation.

Writes are scoped like reads: ``study.store`` with a resource asks about the stored study an
instance goes into, or the study it would create (its patient, department, referring physician).

Without a resource the decision is a *capability* check (rules 1-5): may this subject read
studies at all? Per-study answers (QIDO result filtering, WADO, delete) must pass the resource.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Final, Literal, Protocol

from medvault.errors import ConfigError, Forbidden, NotFound

__all__ = [
    "MIN_BREAK_GLASS_REASON",
    "OBLIGATION_BREAK_GLASS",
    "OBLIGATION_DEIDENTIFY",
    "PHI_ACTIONS",
    "ROLES",
    "ROLE_PERMISSIONS",
    "SCOPED_ACTIONS",
    "Action",
    "AuditSink",
    "BreakGlassGrant",
    "Context",
    "Decision",
    "DecisionEvent",
    "DecisionPoint",
    "Grant",
    "GrantKind",
    "MemoryAuditSink",
    "Principal",
    "Resource",
    "Subject",
    "decide",
    "enforce",
    "load_roles",
]


class Action(StrEnum):
    STUDY_READ = "study.read"
    STUDY_STORE = "study.store"
    STUDY_DELETE = "study.delete"
    DEID_READ = "deid.read"  # read data sets that were de-identified (no PHI)
    DEID_EXPORT = "deid.export"  # export through the de-identification engine
    LEDGER_READ = "ledger.read"
    ALERTS_READ = "alerts.read"
    ALERTS_MANAGE = "alerts.manage"  # acknowledge and resolve alerts, lift security holds
    METRICS_READ = "metrics.read"  # scrape /metrics (no PHI there, but names of routes and counts)
    BREAKGLASS_REVIEW = "breakglass.review"  # list break-glass sessions and their reasons
    BREAKGLASS_USE = "breakglass.use"  # open a study outside scope, with a reason
    USERS_MANAGE = "users.manage"
    KEYS_MANAGE = "keys.manage"
    NODES_MANAGE = "nodes.manage"
    CONFIG_MANAGE = "config.manage"
    RETENTION_MANAGE = "retention.manage"  # change retention rules, run retention (crypto-shredding)
    LEGALHOLD_MANAGE = "legalhold.manage"  # place and lift legal holds (they block every deletion)
    PATIENT_RIGHTS = "patient.rights"  # a patient's access bundle; erasure requests (four eyes)
    TRAINING_READ = "training.read"  # everyone's training records and status (one's own needs none)
    TRAINING_MANAGE = "training.manage"  # add courses, record completions


A = Action
ROLE_PERMISSIONS: dict[str, frozenset[Action]] = {
    # Runs the system; sees no images by default (give a clinical role too, or override).
    "admin": frozenset(
        {
            A.USERS_MANAGE,
            A.NODES_MANAGE,
            A.KEYS_MANAGE,
            A.CONFIG_MANAGE,
            A.RETENTION_MANAGE,
            A.TRAINING_READ,
            A.TRAINING_MANAGE,
        }
    ),
    "radiologist": frozenset({A.STUDY_READ, A.STUDY_STORE, A.BREAKGLASS_USE}),
    "technologist": frozenset({A.STUDY_READ, A.STUDY_STORE}),
    "referring_physician": frozenset({A.STUDY_READ, A.BREAKGLASS_USE}),
    "researcher": frozenset({A.DEID_READ, A.DEID_EXPORT}),  # never PHI
    # The security / privacy officer: the ledger, alerts and their handling, break-glass review.
    "auditor": frozenset(
        {
            A.LEDGER_READ,
            A.ALERTS_READ,
            A.ALERTS_MANAGE,
            A.BREAKGLASS_REVIEW,
            A.LEGALHOLD_MANAGE,
            A.PATIENT_RIGHTS,
            A.TRAINING_READ,
        }
    ),  # no images
    "service": frozenset({A.STUDY_STORE}),  # modalities, other PACS
    # Records management / QC: the only built-in role that deletes (crypto-shredding).
    "archivist": frozenset(
        {
            A.STUDY_READ,
            A.STUDY_STORE,
            A.STUDY_DELETE,
            A.RETENTION_MANAGE,
            A.LEGALHOLD_MANAGE,
            A.PATIENT_RIGHTS,
        }
    ),
    "viewer": frozenset({A.STUDY_READ}),  # API keys for viewers and scripts (read only)
    "monitoring": frozenset({A.METRICS_READ}),  # a Prometheus scraper's API key
    # DICOM nodes: each registered permission is a role (medvault.dimse.server.node_principal).
    "node.store": frozenset({A.STUDY_STORE}),
    "node.find": frozenset({A.STUDY_READ}),
    "node.get": frozenset({A.STUDY_READ}),
    "node.move": frozenset({A.STUDY_READ}),
}
del A
ROLES = tuple(ROLE_PERMISSIONS)

#: Actions that touch identifiable data: a human subject needs current privacy training.
PHI_ACTIONS: Final = frozenset(
    {Action.STUDY_READ, Action.STUDY_STORE, Action.STUDY_DELETE, Action.BREAKGLASS_USE}
)
#: Actions checked against the subject's scope when a resource is given.
SCOPED_ACTIONS: Final = frozenset(
    {Action.STUDY_READ, Action.STUDY_STORE, Action.STUDY_DELETE, Action.DEID_EXPORT, Action.DEID_READ}
)
MIN_BREAK_GLASS_REASON: Final = 10
OBLIGATION_BREAK_GLASS: Final = "audit:break-glass"
OBLIGATION_DEIDENTIFY: Final = "deidentify"
OUT_OF_SCOPE: Final = "outside the subject's scope"

GrantKind = Literal["patient", "study", "department", "site"]
GRANT_KINDS: Final[tuple[str, ...]] = ("patient", "study", "department", "site")


@dataclass(frozen=True, kw_only=True)
class Grant:
    """Access to studies by patient (keyed pseudonym), study UID, department / care team, or all
    (``site``, value ``"*"``: for API keys and service accounts that see everything)."""

    kind: GrantKind
    value: str
    expires_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.kind not in GRANT_KINDS:
            raise ValueError(f"unknown grant kind {self.kind!r}")
        if not self.value:
            raise ValueError("a grant needs a value")

    def active(self, now: datetime) -> bool:
        return self.expires_at is None or now < self.expires_at

    def covers(self, resource: Resource) -> bool:
        match self.kind:
            case "site":
                return True
            case "study":
                return resource.study_uid == self.value
            case "patient":
                return resource.patient == self.value
            case _:
                return self.value in resource.departments

    @classmethod
    def site(cls) -> Grant:
        return cls(kind="site", value="*")


@dataclass(frozen=True, kw_only=True)
class BreakGlassGrant:
    """An open break-glass session: one study, until ``expires_at``."""

    study_uid: str
    expires_at: datetime


@dataclass(frozen=True)
class Principal:
    """Who is asking. ``Principal(name=..., role=..., method=...)`` (an API key) still works;
    users carry several roles, grants, training date and break-glass sessions."""

    name: str
    role: str = ""  # the first of ``roles`` (kept for API keys and old callers)
    method: str = "api-key"  # "api-key", "token", "oidc", "password"
    roles: frozenset[str] = frozenset()
    grants: tuple[Grant, ...] = ()
    break_glass: tuple[BreakGlassGrant, ...] = ()
    human: bool = False  # people pass the training gate; machines are exempt
    training_expires: date | None = None
    training_course: str | None = None  # the required course that decides training_expires, if any
    referring_id: str | None = None  # how studies name this person as referring physician
    must_change_password: bool = False
    exports_held: bool = False  # a monitor response holds this subject's exports for review

    def __post_init__(self) -> None:
        roles = self.roles | {self.role} if self.role else self.roles
        object.__setattr__(self, "roles", frozenset(roles))
        if not self.role and roles:
            object.__setattr__(self, "role", sorted(roles)[0])


Subject = Principal


@dataclass(frozen=True, kw_only=True)
class Resource:
    """What is asked about. For studies: the facts the scope rules need, none of them PHI."""

    kind: str = "study"
    study_uid: str | None = None
    patient: str | None = None  # keyed pseudonym of the patient
    departments: frozenset[str] = frozenset()  # department / care-team codes
    referring: frozenset[str] = frozenset()  # referring-physician identities (as Principal.referring_id)
    deidentified: bool = False


@dataclass(frozen=True, kw_only=True)
class Context:
    now: datetime
    client: str | None = None
    reason: str | None = None  # the stated reason, when opening break-glass


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    obligations: tuple[str, ...] = ()
    #: Denied for scope: answer exactly as for a resource that does not exist (HTTP 404).
    conceal: bool = False


def _deny(reason: str, *, conceal: bool = False) -> Decision:
    return Decision(False, reason, (), conceal)


def load_roles(config: Mapping[str, Iterable[str]], *, replace: bool = False) -> dict[str, frozenset[Action]]:
    """A role table from config data (e.g. ``[access.roles]`` in medvault.toml): each role lists
    permission names. Merged over the built-in roles (a role given replaces that role), or alone
    with ``replace=True``. An unknown permission is a :class:`ConfigError`, never ignored."""
    table: dict[str, frozenset[Action]] = {} if replace else dict(ROLE_PERMISSIONS)
    for role, names in config.items():
        if not role or not isinstance(role, str):
            raise ConfigError("a role name must be a non-empty string")
        if isinstance(names, str):
            raise ConfigError(f"role {role!r}: permissions must be a list of names")
        actions = set()
        for name in names:
            try:
                actions.add(Action(name))
            except ValueError:
                known = ", ".join(a.value for a in Action)
                raise ConfigError(
                    f"role {role!r}: unknown permission {name!r}", hint=f"Known: {known}."
                ) from None
        table[role] = frozenset(actions)
    return table


def decide(
    subject: Principal | None,
    action: Action,
    resource: Resource | None = None,
    context: Context | None = None,
    *,
    roles: Mapping[str, frozenset[Action]] | None = None,
) -> Decision:
    """The decision for ``subject`` doing ``action`` on ``resource``. Pure given a context;
    without one it reads the clock once (old two-argument callers)."""
    if subject is None:
        return _deny("not authenticated")
    if subject.must_change_password:
        return _deny("the one-time password must be changed first")
    table = ROLE_PERMISSIONS if roles is None else roles
    known = [r for r in sorted(subject.roles) if r in table]
    granting = [r for r in known if action in table[r]]
    if not granting:
        if not known:
            names = ", ".join(sorted(subject.roles)) or "none"
            return _deny(f"no known role (roles: {names})")
        return _deny(f"roles {', '.join(known)} do not grant {action}")
    now = (context.now if context is not None else datetime.now(UTC)).astimezone(UTC)
    lapsed = _training_lapsed(subject, now) if subject.human and action in PHI_ACTIONS else None
    if lapsed is not None:
        # Break-glass aside: an emergency is not refused for lapsed training (it is audited and
        # reviewed as break-glass, and the decision's reason says training had lapsed).
        if action is Action.STUDY_READ and resource is not None and _open_session(subject, resource, now):
            return Decision(
                True,
                f"role {granting[0]} grants {action}; in scope by break-glass (training lapsed)",
                (OBLIGATION_BREAK_GLASS,),
            )
        if (
            action is Action.STUDY_READ
            and resource is None
            and any(now < s.expires_at for s in subject.break_glass)
        ):
            # The route's capability gate; each study is then asked about, and only the studies
            # of open sessions pass.
            return Decision(
                True, f"role {granting[0]} grants {action} through break-glass only (training lapsed)"
            )
        if action is not Action.BREAKGLASS_USE:
            return _deny(lapsed)
    obligations: list[str] = []
    if action is Action.DEID_READ and resource is not None and not resource.deidentified:
        return _deny("only de-identified data may be read with deid.read", conceal=True)
    if action is Action.DEID_EXPORT:
        if subject.exports_held:
            return _deny(
                "exports are held for review after a security alert; a privacy officer must lift the hold"
            )
        obligations.append(OBLIGATION_DEIDENTIFY)
    if action is Action.BREAKGLASS_USE:
        reason = (context.reason if context is not None else None) or ""
        if resource is None and not reason:
            # The route's capability gate: may this subject use break-glass at all? Opening one
            # asks again with the study and the reason.
            return Decision(True, f"role {granting[0]} grants {action}")
        if len(reason.strip()) < MIN_BREAK_GLASS_REASON:
            return _deny(f"break-glass needs a reason of at least {MIN_BREAK_GLASS_REASON} characters")
        if resource is None or not resource.study_uid:
            return _deny("break-glass opens one study: give its study UID")
        note = " (training lapsed)" if lapsed is not None else ""
        return Decision(True, f"break-glass by {granting[0]}{note}", (OBLIGATION_BREAK_GLASS,))
    if action in SCOPED_ACTIONS and resource is not None:
        via = _scope(subject, resource, now)
        if via is None:
            return _deny(OUT_OF_SCOPE, conceal=True)
        if via == "break-glass":
            obligations.append(OBLIGATION_BREAK_GLASS)
        return Decision(True, f"role {granting[0]} grants {action}; in scope by {via}", tuple(obligations))
    return Decision(True, f"role {granting[0]} grants {action}", tuple(obligations))


def _training_lapsed(subject: Principal, now: datetime) -> str | None:
    """Why the subject's training does not cover ``now`` (None when it does)."""
    expires = subject.training_expires
    course = f" (course {subject.training_course!r})" if subject.training_course else ""
    if expires is None:
        if subject.training_course:
            return (
                f"required training{course} is not on record; access to patient data is refused "
                "until an administrator records it"
            )
        return "no privacy training is on record; an administrator must record it first"
    if now.date() > expires:
        return (
            f"privacy training expired on {expires.isoformat()}{course}; access to patient data is "
            "refused until an administrator records renewed training"
        )
    return None


def _open_session(subject: Principal, resource: Resource, now: datetime) -> bool:
    return resource.study_uid is not None and any(
        s.study_uid == resource.study_uid and now < s.expires_at for s in subject.break_glass
    )


def _scope(subject: Principal, resource: Resource, now: datetime) -> str | None:
    for grant in subject.grants:
        if grant.active(now) and grant.covers(resource):
            return f"{grant.kind} grant"
    if subject.referring_id is not None and subject.referring_id in resource.referring:
        return "referring physician"
    if resource.study_uid is not None:
        for session in subject.break_glass:
            if session.study_uid == resource.study_uid and now < session.expires_at:
                return "break-glass"
    return None


def enforce(decision: Decision, *, missing: str = "no such study") -> Decision:
    """Raise for a denial: :class:`NotFound` (``missing``, word for word as for an absent resource)
    when concealed, else :class:`Forbidden` with the reason. Returns the decision when allowed."""
    if decision.allowed:
        return decision
    if decision.conceal:
        raise NotFound(missing)
    raise Forbidden(f"not permitted: {decision.reason}")


# -- audit -----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DecisionEvent:
    """One decision as the ledger records it. No PHI: patients appear by pseudonym, and a
    break-glass reason (free text that may name a patient) stays in the encrypted session record."""

    at: datetime
    subject: str | None
    method: str | None
    action: str
    allowed: bool
    reason: str
    obligations: tuple[str, ...]
    resource_kind: str | None = None
    study_uid: str | None = None
    patient: str | None = None
    client: str | None = None


class AuditSink(Protocol):
    def record(self, event: DecisionEvent) -> None: ...


@dataclass
class MemoryAuditSink:
    """The in-memory twin of the ledger sink, for tests."""

    events: list[DecisionEvent] = field(default_factory=list)

    def record(self, event: DecisionEvent) -> None:
        self.events.append(event)


class DecisionPoint:
    """``decide`` plus the audit trail: every decision, allow and deny, goes to ``sink``."""

    def __init__(self, *, sink: AuditSink, roles: Mapping[str, frozenset[Action]] | None = None) -> None:
        self._sink = sink
        self._roles = roles

    def decide(
        self,
        subject: Principal | None,
        action: Action,
        resource: Resource | None = None,
        context: Context | None = None,
    ) -> Decision:
        now = context.now if context is not None else datetime.now(UTC)
        if context is None:
            context = Context(now=now)
        decision = decide(subject, action, resource, context, roles=self._roles)
        self._sink.record(
            DecisionEvent(
                at=now,
                subject=subject.name if subject else None,
                method=subject.method if subject else None,
                action=str(action),
                allowed=decision.allowed,
                reason=decision.reason,
                obligations=decision.obligations,
                resource_kind=resource.kind if resource else None,
                study_uid=resource.study_uid if resource else None,
                patient=resource.patient if resource else None,
                client=context.client,
            )
        )
        return decision
