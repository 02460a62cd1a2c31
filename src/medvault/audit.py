"""Audit trails: the tamper-evident ledger (:class:`LedgerAudit`, what a home uses) and JSON-line
log sinks. Nothing written here carries PHI: patients appear as keyed pseudonyms only."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from medvault.access.policy import DecisionEvent, Principal
from medvault.index.outbox import Outbox, process_tag
from medvault.index.store import Index
from medvault.ledger.events import (
    Actor,
    ActorKind,
    AuditEvent,
    EventKind,
    ObjectRef,
    Outcome,
    canonical_bytes,
)
from medvault.ledger.store import Ledger

audit_log = logging.getLogger("medvault.audit")
error_log = logging.getLogger("medvault.errors")


class LogDimseAudit:
    """DIMSE listener events (associations, operations, refused handshakes) as JSON lines."""

    def __call__(self, event: Any) -> None:
        audit_log.info(json.dumps({"dimse": asdict(event)}, default=str, separators=(",", ":")))


# -- the tamper-evident ledger as the audit trail ------------------------------------------------


def actor_of(principal: Principal | None, client: str | None = None) -> Actor:
    """The ledger's actor for a policy subject (a person, an API key, an OIDC identity)."""
    if principal is None:
        return Actor(kind=ActorKind.SYSTEM, id="anonymous", address=client)
    kind = ActorKind.APIKEY if principal.method == "api-key" else ActorKind.USER
    return Actor(kind=kind, id=principal.name, address=client, auth=principal.method)


SYSTEM = Actor(kind=ActorKind.SYSTEM, id="medvault")


def outbox_for(ledger: Ledger, events: Sequence[AuditEvent]) -> Outbox:
    """The ledger events of an index change, to be written in the change's own transaction
    (medvault.index.outbox); publish it with :func:`publish` once the change committed."""
    return Outbox(owner=process_tag(), after_size=ledger.size, leaves=[canonical_bytes(e) for e in events])


def publish(ledger: Ledger, index: Index, outbox: Outbox | None, *, defer_cleanup: bool = False) -> None:
    """After the change committed: its events into the ledger, then out of the outbox (with
    ``defer_cleanup``, by the process's next index write: see Index.outbox_published)."""
    if outbox is None or not outbox.leaves:
        return
    ledger.append_leaves(outbox.leaves)
    if defer_cleanup:
        index.outbox_published(outbox.ids)
    else:
        index.outbox_done(outbox.ids)


class OutboxPublisher:
    """Publishes the outboxes of one process's committed changes (the archive's writes).

    A change is committed with its events in the outbox, so an append the ledger refuses (a full
    disk, a locked file) loses nothing; but it must not fail a change that is already stored, nor
    leave its events unpublished until a restart. Refused outboxes are kept and tried again, first,
    with the next publish; only the leaves the ledger does not hold yet are appended then."""

    def __init__(self, ledger: Ledger, index: Index) -> None:
        self.ledger, self.index = ledger, index
        self._lock = threading.Lock()
        self._waiting: list[Outbox] = []

    @property
    def waiting(self) -> int:
        """Events committed and not yet in the ledger because an append failed."""
        with self._lock:
            return sum(len(box.leaves) for box in self._waiting)

    def publish(self, outbox: Outbox | None) -> None:
        with self._lock:
            retry, self._waiting = self._waiting, []
        fresh = [outbox] if outbox is not None and outbox.leaves else []
        pending = [*retry, *fresh]
        for n, box in enumerate(pending):
            try:
                leaves = box.leaves if n >= len(retry) else self._missing(box)
                if leaves:
                    self.ledger.append_leaves(leaves)
                self.index.outbox_published(box.ids)
            except Exception as exc:  # whatever it was, the events wait in the outbox, durable
                with self._lock:
                    self._waiting[:0] = pending[n:]
                error_log.error(
                    "ledger append failed (%s): %d committed events wait in the outbox; tried again "
                    "with the next change, at restart, or by medvault fsck",
                    type(exc).__name__,
                    sum(len(b.leaves) for b in pending[n:]),
                )
                return

    def _missing(self, box: Outbox) -> list[bytes]:
        present = self.ledger.present_leaves(box.leaves, start=box.after_size)
        return [leaf for leaf in box.leaves if leaf not in present]


class LedgerAudit:
    """Writes medvault's audit trail into the ledger. Events that accompany reads (decisions,
    queries, retrievals, associations) are group-committed; changes are durable before return."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def emit(self, event: AuditEvent) -> None:
        if event.kind.is_read:
            self.ledger.record(event)
        else:
            self.ledger.append(event)

    def emit_many(self, events: list[AuditEvent]) -> None:
        changes = [e for e in events if not e.kind.is_read]
        for e in events:
            if e.kind.is_read:
                self.ledger.record(e)
        if changes:
            self.ledger.append_many(changes)

    # AuditSink for the policy decision point
    def record(self, event: DecisionEvent) -> None:
        break_glass = "audit:break-glass" in event.obligations
        actor = (
            Actor(kind=ActorKind.SYSTEM, id="anonymous", address=event.client)
            if event.subject is None
            else Actor(
                kind=ActorKind.APIKEY if event.method == "api-key" else ActorKind.USER,
                id=event.subject,
                address=event.client,
                auth=event.method,
            )
        )
        self.emit(
            AuditEvent(
                kind=EventKind.BREAK_GLASS if break_glass and event.allowed else EventKind.AUTHZ_DECISION,
                time=event.at,
                actor=actor,
                action=event.action,
                outcome=Outcome.SUCCESS if event.allowed else Outcome.DENIED,
                object=ObjectRef(type="study", id=event.study_uid) if event.study_uid else None,
                patient=event.patient,
                reason=event.reason,
                details={"obligations": ",".join(event.obligations)} if event.obligations else {},
            )
        )

    # the DIMSE listener's audit callback
    def dimse(self, event: Any) -> None:
        details = {str(k): v for k, v in dict(event.details).items() if isinstance(v, (str, int))}
        for name in ("calling_ae", "called_ae"):
            if getattr(event, name, None):
                details[name] = getattr(event, name)
        self.emit(
            AuditEvent(
                kind=EventKind.ASSOCIATION,
                time=datetime.now(UTC),
                actor=Actor(kind=ActorKind.NODE, id=event.node or "unknown", address=event.peer, auth="mtls"),
                action=event.action,
                outcome={"success": Outcome.SUCCESS, "denied": Outcome.DENIED, "refused": Outcome.DENIED}.get(
                    event.outcome,
                    Outcome.SUCCESS if event.outcome in ("info", "warning") else Outcome.FAILURE,
                ),
                reason=event.reason,
                details=details,
            )
        )
