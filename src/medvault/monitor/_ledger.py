"""The mapping between medvault's ledger events and the monitor's access events, both ways.

``from_ledger`` is what the online worker runs on every event the ledger accepts; ``to_ledger``
writes an EVENTS.jsonl event as a ledger event (a hospital's historical log imported, and the
tests that pin the mapping). The table is in docs/monitoring.md; its rows are :data:`_FROM_KIND`,
:data:`_DIMSE` and :data:`_TO_KIND` here.

What the ledger does not carry: department, role (the directory supplies both), user agent (HTTP
user agents are not ledgered), bytes of a read (only a store's ``size``), a per-event id (the
leaf index stands in: ``ledger:<index>``). Those fields come back as ``None``/0. Events written
by ``to_ledger`` keep them in ``details`` so that a round trip is exact. Patients are keyed
pseudonyms in the ledger, so the monitor keys patients by pseudonym; ``to_ledger`` takes the
site's ``pseudonymize`` function for raw patient ids.

Ledger events that are not accesses map to ``None``: ``alert`` (the monitor's own output, never
fed back), permitted ``authz_decision`` (the query/retrieve event that follows is the access),
DIMSE ``dimse.store`` (the archive's ``store`` event carries the patient), echoes and listener
start/stop.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from datetime import datetime

from medvault.errors import EventInvalid, InvalidInput
from medvault.ledger.events import (
    Actor,
    ActorKind,
    AuditEvent,
    EventKind,
    ObjectRef,
    Outcome,
    Scalar,
    canonical_bytes,
)
from medvault.monitor._detector import ScoredEvent
from medvault.monitor._events import Action, MonitorEvent

__all__ = ["alert_event", "from_ledger", "to_ledger"]

K = EventKind
A = Action

#: Ledger kind -> monitor action (when the ledger action string does not decide it).
_FROM_KIND: dict[EventKind, Action] = {
    K.LOGIN: A.LOGIN,
    K.LOGOUT: A.LOGOUT,
    K.QUERY: A.QUERY,
    K.RETRIEVE: A.RETRIEVE,
    K.STORE: A.STORE,
    K.EXPORT: A.EXPORT,
    K.DEIDENTIFY: A.RETRIEVE_DEID,
    K.BREAK_GLASS: A.VIEW,
    K.DELETE: A.ADMIN_CONFIG,
    K.ERASURE: A.ADMIN_CONFIG,
    K.KEY_ROTATION: A.ADMIN_CONFIG,
    K.CONFIG_CHANGE: A.ADMIN_CONFIG,
    K.NODE_CHANGE: A.ADMIN_CONFIG,
    K.APIKEY_CHANGE: A.ADMIN_CONFIG,
    K.BACKUP: A.ADMIN_CONFIG,  # a whole-archive copy, restore or check: an administrator's act
    K.USER_CHANGE: A.USER_MGMT,
    K.ROLE_CHANGE: A.USER_MGMT,
    K.GRANT_CHANGE: A.USER_MGMT,
}

#: Ledger action strings that decide the monitor action regardless of kind.
_FROM_ACTION: dict[str, Action] = {
    "deid.export": A.RETRIEVE_DEID,  # through the de-identification engine: no PHI leaves
    "deid.read": A.RETRIEVE_DEID,
    "deid.reid-map.read": A.RETRIEVE,  # re-identification: identified data
    "ledger.export": A.AUDIT_QUERY,
    "compliance.report": A.REPORT,  # the safeguards report (it reads the whole trail)
    "ledger.read": A.AUDIT_QUERY,
    "alerts.read": A.AUDIT_QUERY,
    "breakglass.review": A.AUDIT_QUERY,
    "users.manage": A.USER_MGMT,
    "keys.manage": A.ADMIN_CONFIG,
    "nodes.manage": A.ADMIN_CONFIG,
    "config.manage": A.ADMIN_CONFIG,
    "study.read": A.RETRIEVE,
    "study.store": A.STORE,
    "study.delete": A.ADMIN_CONFIG,
    "breakglass.use": A.VIEW,
    "breakglass.open": A.VIEW,
}

#: DIMSE association events (kind ``association``): the operation -> monitor action.
_DIMSE: dict[str, Action | None] = {
    "dimse.association": A.LOGIN,  # an association is a node's sign-in
    "dimse.tls": A.LOGIN,  # a refused TLS handshake is a failed sign-in
    "dimse.find": A.QUERY,
    "dimse.get": A.RETRIEVE,
    "dimse.move": A.RETRIEVE,
    "dimse.store": None,  # the archive's own store event carries the patient
    "dimse.echo": None,
}

#: Monitor action -> (ledger kind, ledger action) for ``to_ledger``.
_TO_KIND: dict[Action, tuple[EventKind, str]] = {
    A.LOGIN: (K.LOGIN, "auth.token"),
    A.LOGOUT: (K.LOGOUT, "auth.logout"),
    A.QUERY: (K.QUERY, "study.read"),
    A.VIEW: (K.RETRIEVE, "study.read"),
    A.RETRIEVE: (K.RETRIEVE, "study.read"),
    A.DOWNLOAD: (K.RETRIEVE, "study.read"),
    A.EXPORT: (K.EXPORT, "study.export"),
    A.STORE: (K.STORE, "study.store"),
    A.REPORT: (K.STORE, "report.store"),
    A.QUERY_DEID: (K.QUERY, "deid.read"),
    A.RETRIEVE_DEID: (K.DEIDENTIFY, "deid.read"),
    A.ADMIN_CONFIG: (K.CONFIG_CHANGE, "config.manage"),
    A.USER_MGMT: (K.USER_CHANGE, "users.manage"),
    A.AUDIT_QUERY: (K.QUERY, "ledger.read"),
}

_PSEUDONYM_RE = re.compile(r"[0-9a-f]{32,128}\Z")
MONITOR_ACTOR = Actor(kind=ActorKind.SYSTEM, id="medvault-monitor")

_ACTOR_PREFIX = {ActorKind.NODE: "node:", ActorKind.APIKEY: "apikey:", ActorKind.SYSTEM: "system:"}
_ROLE_OF_KIND = {ActorKind.NODE: "node", ActorKind.SYSTEM: "system"}


def _action_of(event: AuditEvent) -> Action | None:
    if event.kind is K.ALERT:
        return None
    if event.kind is K.BREAK_GLASS:
        return A.VIEW  # the break-glass permit (or opening); the read it allows follows as its own event
    if event.kind is K.ASSOCIATION:
        return _DIMSE.get(event.action)
    if event.kind is K.AUTHZ_DECISION:
        if event.outcome is Outcome.SUCCESS:
            return None  # the access that follows a permit is its own event
        return _FROM_ACTION.get(event.action, A.RETRIEVE if event.patient else A.QUERY)
    if event.kind in (K.QUERY, K.RETRIEVE, K.STORE) and event.action in ("study.read", "study.store"):
        return _FROM_KIND[event.kind]
    return _FROM_ACTION.get(event.action) or _FROM_KIND.get(event.kind)


def _detail_text(details: dict[str, Scalar], key: str) -> str | None:
    value = details.get(key)
    return value if isinstance(value, str) and value else None


def from_ledger(event: AuditEvent, *, index: int | None = None) -> MonitorEvent | None:
    """The monitor event of one ledger event, or None when it is not an access (see module doc).
    ``index`` (the leaf index) names the event; without it, a digest of the leaf bytes does."""
    details = dict(event.details)
    mapped = details.get("monitor_action")
    action = Action(mapped) if isinstance(mapped, str) and mapped in Action.__members__.values() else None
    if action is None:
        action = _action_of(event)
    if action is None:
        return None
    source_id = _detail_text(details, "source_event_id")
    if source_id is not None:
        event_id = source_id
    elif index is not None:
        event_id = f"ledger:{index}"
    else:
        event_id = "ledger:" + hashlib.sha256(canonical_bytes(event)).hexdigest()[:32]
    actor = event.actor
    user = actor.id if actor.kind is ActorKind.USER else _ACTOR_PREFIX[actor.kind] + actor.id
    study = _detail_text(details, "study_uid")
    if study is None and event.object is not None and event.object.type == "study":
        study = event.object.id
    size = details.get("size", 0)
    return MonitorEvent(
        event_id=event_id,
        ts=event.time,
        user=user,
        role=_detail_text(details, "role") or _ROLE_OF_KIND.get(actor.kind),
        dept=_detail_text(details, "dept"),
        action=action,
        patient_id=event.patient,
        study_uid=study,
        bytes=size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else 0,
        src_ip=actor.address,
        user_agent=_detail_text(details, "user_agent"),
        outcome="success" if event.outcome is Outcome.SUCCESS else "failure",
        break_glass=event.kind is K.BREAK_GLASS or details.get("break_glass") is True,
    )


def _user_actor(user: str, address: str | None) -> Actor:
    for kind, prefix in _ACTOR_PREFIX.items():
        if user.startswith(prefix) and len(user) > len(prefix):
            return Actor(kind=kind, id=user[len(prefix) :], address=address)
    return Actor(kind=ActorKind.USER, id=user, address=address)


def to_ledger(
    event: MonitorEvent, *, pseudonymize: Callable[[str], str] | None = None, time: datetime | None = None
) -> AuditEvent:
    """The ledger event for ``event``. Patients must reach the ledger as keyed pseudonyms: pass
    the site's ``pseudonymize`` (e.g. ``Pseudonymizer``) when ``patient_id`` is a raw id; without
    it the id must already be a pseudonym (32-128 lowercase hex) or EventInvalid is raised."""
    kind, action = _TO_KIND[event.action]
    if event.break_glass:
        kind = K.BREAK_GLASS
    patient = event.patient_id
    if patient is not None and pseudonymize is not None:
        patient = pseudonymize(patient)
    details: dict[str, Scalar] = {"monitor_action": event.action.value, "source_event_id": event.event_id}
    for key in ("role", "dept", "user_agent", "study_uid"):
        value = getattr(event, key)
        if value is not None:
            details[key] = value
    if event.bytes:
        details["size"] = event.bytes
    try:
        return AuditEvent(
            kind=kind,
            time=time or event.ts,
            actor=_user_actor(event.user, event.src_ip),
            action=action,
            outcome=Outcome.SUCCESS if event.outcome == "success" else Outcome.FAILURE,
            object=ObjectRef(type="study", id=event.study_uid) if event.study_uid else None,
            patient=patient,
            details=details,
        )
    except InvalidInput as exc:  # the ledger model's checks (pseudonym, text sizes)
        raise EventInvalid(f"event cannot be ledgered: {exc.message}", hint=exc.hint or None) from None


def alert_event(scored: ScoredEvent, *, time: datetime) -> AuditEvent:
    """The ledger ``alert`` event for an alerting :class:`ScoredEvent` (what the online worker
    appends). It names the source event, user, incident, severity, score (in thousandths: ledger
    details hold no floats) and rules; the reasons, which carry numbers and hours but no patient
    data, go in ``reason``. The patient appears only if it is a keyed pseudonym."""
    patient = scored.patient_id if scored.patient_id and _PSEUDONYM_RE.match(scored.patient_id) else None
    details: dict[str, Scalar] = {
        "source_event_id": scored.event_id[:500],
        "subject": scored.user[:500],
        "severity": scored.severity,
        "score_milli": round(scored.score * 1000),
        "rules": ",".join(sorted(scored.points)),
    }
    if scored.incident is not None:
        details["incident_alerts"] = scored.incident.alerts
        details["incident_score_milli"] = round(scored.incident.score * 1000)
    return AuditEvent(
        kind=K.ALERT,
        time=time,
        actor=MONITOR_ACTOR,
        action="monitor.alert",
        outcome=Outcome.SUCCESS,
        object=ObjectRef(type="incident", id=scored.incident_id) if scored.incident_id else None,
        patient=patient,
        reason="; ".join(scored.reasons)[:2000] or None,
        details=details,
    )
