"""Audit events of the DIMSE layer. They carry no PHI: UIDs, AE titles, node names, addresses,
counts and statuses only. The listener hands each one to the ``audit`` callback it was given."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["AuditSink", "DimseAuditEvent", "Outcome"]

Outcome = Literal["success", "failure", "denied", "refused", "warning", "info"]


@dataclass(frozen=True)
class DimseAuditEvent:
    """One auditable thing that happened on the DIMSE listener.

    ``action`` is one of: ``dimse.listener.start``, ``dimse.listener.stop``, ``dimse.plain_enabled``,
    ``dimse.tls`` (a connection refused before any DICOM was spoken), ``dimse.association``
    (accepted / rejected / released / aborted: see ``details["event"]``), ``dimse.echo``,
    ``dimse.store``, ``dimse.find``, ``dimse.get``, ``dimse.move``.
    """

    action: str
    outcome: Outcome
    peer: str | None = None  # "address:port" of the remote end
    node: str | None = None  # registered node name, once known
    calling_ae: str | None = None
    called_ae: str | None = None
    reason: str | None = None
    details: Mapping[str, str | int] = field(default_factory=dict)


AuditSink = Callable[[DimseAuditEvent], None]
