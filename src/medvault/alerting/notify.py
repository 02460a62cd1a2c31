"""Alert notifications: to a SIEM over syslog (RFC 5424 over TLS, the message an IHE ATNA
AuditMessage, as `medvault ledger export --format atna` sends) and to a webhook as JSON signed
with HMAC-SHA256.

Webhook request: ``POST`` the alert's JSON (docs/monitoring.md) with
``X-Medvault-Timestamp: <unix seconds>`` and
``X-Medvault-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>``; a receiver
recomputes it and refuses stale timestamps (replays). A failed delivery is retried by the worker
on the channels that failed only, with back-off per alert and per channel: a collector that is
down or hangs costs one attempt per back-off, not one per alert, so scoring never waits on it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from medvault.alerting.responses import ledger_subject
from medvault.config import MonitorSettings
from medvault.crypto.tls import client_ssl_context
from medvault.errors import ConfigError, MedvaultError
from medvault.index.alerts import AlertRecord
from medvault.ledger.atna import audit_message
from medvault.ledger.events import Actor, ActorKind, AuditEvent, EventKind, ObjectRef, Outcome
from medvault.ledger.syslog import (
    SEVERITY_WARNING,
    SdElement,
    SyslogSender,
    format_message,
    parse_destination,
)

log = logging.getLogger("medvault.server")
SIGNATURE_HEADER = "X-Medvault-Signature"
TIMESTAMP_HEADER = "X-Medvault-Timestamp"
_SD_ID = "medvault-alert@32473"


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The webhook signature header's value for ``body`` sent at ``timestamp``."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def alert_json(alert: AlertRecord) -> dict[str, object]:
    """What leaves the archive about an alert: no officer's note."""
    doc = alert.to_json()
    doc.pop("note", None)
    return doc


def _as_event(alert: AlertRecord) -> AuditEvent:
    return AuditEvent(
        kind=EventKind.ALERT,
        time=alert.raised_at,
        actor=Actor(kind=ActorKind.SYSTEM, id="medvault-monitor"),
        action="monitor.alert",
        outcome=Outcome.SUCCESS,
        object=ObjectRef(type="incident", id=alert.incident_id) if alert.incident_id else None,
        patient=alert.patient,
        reason="; ".join(alert.reasons)[:2000] or None,
        details={
            "alert_id": alert.id,
            "subject": ledger_subject(alert.subject)[:500],
            "severity": alert.severity,
            "score_milli": round(alert.score * 1000),
            "ledger_index": alert.source_index,
        },
    )


@dataclass
class Notifier:
    settings: MonitorSettings
    origin: str
    root: Path
    timeout: float = 10.0  # seconds per delivery (connect, TLS, answer)

    @property
    def configured(self) -> bool:
        return bool(self.settings.syslog or self.settings.webhook_url)

    def check(self) -> None:
        """Refuse a configuration that cannot work, before serving."""
        if self.settings.syslog:
            try:
                parse_destination(self.settings.syslog)
            except MedvaultError as exc:
                raise ConfigError(f"[monitor] syslog: {exc.message}", hint=exc.hint or None) from None
        for name in ("syslog_ca", "webhook_ca"):
            ca = self._path(getattr(self.settings, name))
            if ca is not None and not ca.is_file():  # else every delivery fails, retried for ever
                raise ConfigError(f"[monitor] {name}: {ca} does not exist")
        if self.settings.webhook_url:
            url = self.settings.webhook_url
            try:
                host = httpx.URL(url).host
            except httpx.InvalidURL:
                host = ""
            if not url.startswith("https://") or not host:
                raise ConfigError("[monitor] webhook_url must be an https:// URL with a host")
            if not self.settings.webhook_secret_env or not os.environ.get(self.settings.webhook_secret_env):
                raise ConfigError(
                    "[monitor] webhook_url needs a secret: set webhook_secret_env to the name of an "
                    "environment variable that holds it (and set that variable)"
                )

    def _path(self, value: str) -> Path | None:
        return (self.root / value) if value else None

    @property
    def channels(self) -> frozenset[str]:
        """The channels configured: ``syslog``, ``webhook``."""
        return frozenset(
            name
            for name, on in (("syslog", self.settings.syslog), ("webhook", self.settings.webhook_url))
            if on
        )

    def deliver(self, alert: AlertRecord, *, channels: frozenset[str] | None = None) -> frozenset[str]:
        """Send the alert to ``channels`` (every one configured by default); the channels that
        did not take it, to retry those only (a channel that took it never gets it twice)."""
        failed: set[str] = set()
        for name in sorted(self.channels if channels is None else channels & self.channels):
            if not (self._syslog(alert) if name == "syslog" else self._webhook(alert)):
                failed.add(name)
        return frozenset(failed)

    def _syslog(self, alert: AlertRecord) -> bool:
        event = _as_event(alert)
        message = format_message(
            audit_message(event, source_id=self.origin),
            severity=SEVERITY_WARNING,
            timestamp=alert.raised_at,
            hostname=socket.gethostname(),
            procid=str(os.getpid()),
            msgid="ALERT",
            structured_data=[
                SdElement(
                    _SD_ID,
                    [
                        ("id", str(alert.id)),
                        ("severity", alert.severity),
                        ("subject", alert.subject),  # whom it is about: the SIEM's first question
                        ("origin", self.origin),
                    ],
                )
            ],
        )
        try:
            with SyslogSender(
                parse_destination(self.settings.syslog),
                ca_file=self._path(self.settings.syslog_ca),
                timeout=self.timeout,
            ) as sender:
                sender.send(message)
        except MedvaultError as exc:
            log.warning("alert %d: syslog delivery failed: %s", alert.id, exc.message)
            return False
        return True

    def _webhook(self, alert: AlertRecord) -> bool:
        secret = os.environ.get(self.settings.webhook_secret_env, "").encode()
        if not secret:
            log.warning("alert %d: webhook secret %s is not set", alert.id, self.settings.webhook_secret_env)
            return False
        body = json.dumps(alert_json(alert), separators=(",", ":"), sort_keys=True).encode()
        stamp = str(int(time.time()))
        ca = self._path(self.settings.webhook_ca)
        try:
            # medvault's TLS policy (1.2+, host name checked) trusting the site's CA, if given
            verify: ssl.SSLContext | bool = client_ssl_context(ca) if ca else True
            # streamed and never read: only the status matters, whatever the receiver sends back
            with httpx.stream(
                "POST",
                self.settings.webhook_url,
                content=body,
                headers={
                    "Content-Type": "application/json",
                    TIMESTAMP_HEADER: stamp,
                    SIGNATURE_HEADER: sign(secret, stamp, body),
                },
                verify=verify,
                timeout=self.timeout,
                follow_redirects=False,
            ) as answer:
                status = answer.status_code
        except (httpx.HTTPError, MedvaultError) as exc:
            log.warning("alert %d: webhook delivery failed: %s", alert.id, type(exc).__name__)
            return False
        if status >= 300:
            log.warning("alert %d: webhook answered %d", alert.id, status)
            return False
        return True


def next_attempt(failures: int, now: float) -> float:
    """Back-off between delivery attempts: 5 s, 10 s, 20 s … at most 10 minutes."""
    return now + min(5.0 * 2.0 ** max(0, failures - 1), 600.0)


__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "Notifier", "alert_json", "next_attempt", "sign"]
