"""What a privacy officer does with alerts, the same from the API and the CLI: acknowledge,
resolve with a disposition, lift a hold. Each change and its ledger event are one transaction
(the ledger outbox); a resolution reaches the monitor through the ledger (worker.RESOLVE_ACTION)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from medvault.alerting.responses import lift_event
from medvault.alerting.worker import resolve_event
from medvault.audit import outbox_for, publish
from medvault.index.alerts import AlertRecord, AlertStore, Hold, check_handling
from medvault.index.store import Index
from medvault.ledger.events import Actor, AuditEvent, EventKind, ObjectRef, Outcome
from medvault.ledger.store import Ledger


def handle_alert(
    *,
    alerts: AlertStore,
    index: Index,
    ledger: Ledger,
    alert_id: int,
    status: Literal["acknowledged", "resolved"],
    actor: Actor,
    now: datetime,
    disposition: str | None = None,
    note: str | None = None,
) -> AlertRecord:
    check_handling(status, disposition, note)  # the clear error, not one of the ledger event's
    current = alerts.get(alert_id)
    if status == "resolved":
        event = resolve_event(current, disposition=disposition or "", actor=actor, now=now)
    else:
        event = AuditEvent(
            kind=EventKind.ALERT,
            time=now,
            actor=actor,
            action="alert.acknowledge",
            outcome=Outcome.SUCCESS,
            object=ObjectRef(type="alert", id=str(alert_id)),
        )
    outbox = outbox_for(ledger, [event])
    record = alerts.handle(
        alert_id, status=status, by=actor.id, now=now, disposition=disposition, note=note, outbox=outbox
    )
    publish(ledger, index, outbox)
    return record


def lift_hold(
    *, alerts: AlertStore, index: Index, ledger: Ledger, hold_id: int, actor: Actor, now: datetime
) -> Hold:
    hold = alerts.hold(hold_id)
    outbox = outbox_for(ledger, [lift_event(hold, actor, now=now)])
    lifted = alerts.lift_hold(hold_id, by=actor.id, now=now, outbox=outbox)
    publish(ledger, index, outbox)
    return lifted
