"""Audit sinks for policy decisions. The ledger sink (tamper-evident) is the default of a served
home; this module also keeps the file sink used before a ledger exists and by tests."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import Any

from medvault.access.policy import DecisionEvent

audit_log = logging.getLogger("medvault.audit")


class LogAuditSink:
    """Writes each decision as one JSON line to the ``medvault.audit`` logger (no PHI in events)."""

    def record(self, event: DecisionEvent) -> None:
        audit_log.info(
            json.dumps(
                {
                    "at": event.at.isoformat(),
                    "subject": event.subject,
                    "method": event.method,
                    "action": event.action,
                    "allowed": event.allowed,
                    "reason": event.reason,
                    "obligations": list(event.obligations),
                    "study_uid": event.study_uid,
                    "patient": event.patient,
                    "client": event.client,
                },
                separators=(",", ":"),
            )
        )


class LogDimseAudit:
    """DIMSE listener events (associations, operations, refused handshakes) as JSON lines."""

    def __call__(self, event: Any) -> None:
        audit_log.info(json.dumps({"dimse": asdict(event)}, default=str, separators=(",", ":")))
