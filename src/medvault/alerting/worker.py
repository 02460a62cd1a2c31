"""The online monitor: a worker of ``serve`` that scores every event the ledger accepts.

Each step reads the ledger entries it has not scored yet (from every door: DICOMweb, DIMSE, the
CLI, sign-ins), turns them into monitor events (:func:`medvault.monitor.from_ledger`), scores them
with the one :class:`~medvault.monitor.OnlineMonitor` (the same code as ``monitor replay``), and
for each alerting event stores an alert together with its ``alert`` ledger event (one
transaction, through the ledger outbox), carries out the automatic responses and sends the
notifications. An officer's resolution is itself a ledger event (``alert.resolve``): the worker
applies it to the monitor when it reaches it, so feedback is as causal as everything else.

Restarts: the monitor's state is saved with the ledger position it covers (every
``[monitor] snapshot_seconds`` and at stop). A worker that died resumes from the last save and
scores the entries after it again; scores are causal, so they come out the same, and an alert is
stored once per source entry, so nothing is lost or raised twice. Responses and notifications
are flags on the alert, retried until done (a notification channel that took an alert is not
sent it again by this worker; after a restart, an alert not yet marked notified is sent again).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medvault.alerting.directory import effective_directory
from medvault.alerting.notify import Notifier, next_attempt
from medvault.alerting.responses import (
    Responder,
    alert_subject,
    ledger_subject,
    monitor_user,
    parse_responses,
    response_event,
    subject_from_ledger,
)
from medvault.audit import publish
from medvault.config import MonitorSettings
from medvault.errors import MedvaultError
from medvault.index.alerts import AlertRecord, AlertStore, NewAlert
from medvault.index.outbox import process_tag
from medvault.index.store import Index
from medvault.index.users import UserStore
from medvault.ledger.events import AuditEvent, EventKind, canonical_bytes, parse_event
from medvault.ledger.store import Ledger
from medvault.monitor import (
    Disposition,
    EventBatch,
    MonitorEvent,
    OnlineMonitor,
    ScoredEvent,
    alert_event,
    from_ledger,
    rules_from,
)

log = logging.getLogger("medvault.server")
RESOLVE_ACTION = "alert.resolve"
_READ_BATCH = 5000
_DIRECTORY_CHECK_SECONDS = 30.0
_BEAT_SECONDS = 1.0  # progress (the lag metric) at most this stale while busy
_IDLE_BEAT_SECONDS = 5.0  # the heartbeat when there is nothing to score
_SWEEP_SECONDS = 5.0


def encode_points(points: dict[str, float]) -> str:
    """Rule points as ledger details can hold them (no floats): ``rule:milli,…``."""
    return ",".join(f"{rule}:{round(value * 1000)}" for rule, value in sorted(points.items()))


def decode_points(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in text.split(","):
        rule, sep, milli = item.partition(":")
        if sep and milli.lstrip("-").isdigit():
            out[rule] = int(milli) / 1000
    return out


def resolve_event(alert: AlertRecord, *, disposition: str, actor: Any, now: datetime) -> AuditEvent:
    """The ledger event of an officer's resolution; the worker feeds it back to the monitor."""
    from medvault.ledger.events import ObjectRef, Outcome

    return AuditEvent(
        kind=EventKind.ALERT,
        time=now,
        actor=actor,
        action=RESOLVE_ACTION,
        outcome=Outcome.SUCCESS,
        object=ObjectRef(type="alert", id=str(alert.id)),
        patient=alert.patient,
        details={
            "disposition": disposition,
            "subject": ledger_subject(alert.subject)[:500],
            "points": encode_points(alert.points)[:2000],
            "ledger_index": alert.source_index,
        },
    )


def _new_alert(scored: ScoredEvent, index: int, time_of: datetime, subject: str) -> NewAlert:
    incident = scored.incident
    return NewAlert(
        source_index=index,
        event_time=time_of,
        subject=subject,
        severity=scored.severity,
        score=scored.score,
        incident_id=scored.incident_id,
        patient=scored.patient_id,
        study_uid=None,
        reasons=tuple(scored.reasons),
        points=dict(scored.points),
        features={k: float(v) for k, v in scored.features.items()},
        incident=None
        if incident is None
        else {"id": incident.incident_id, "alerts": incident.alerts, "score": round(incident.score, 3)},
    )


@dataclass
class StepResult:
    scored: int  # monitor events scored
    alerts: int  # alerts stored (not those a restarted worker found stored already)


class MonitorWorker:
    def __init__(
        self,
        *,
        ledger: Ledger,
        index: Index,
        alerts: AlertStore,
        users: UserStore,
        settings: MonitorSettings,
        root: Path,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` stamps alerts and events; ``monotonic`` paces saves, heartbeats, directory
        checks and delivery retries (both arguments so that tests move time instead of sleeping)."""
        self.ledger = ledger
        self.index = index
        self.alerts = alerts
        self.users = users
        self.settings = settings
        self.clock = clock
        self.monotonic = monotonic
        self._rules = rules_from(settings.rules)
        self.responder = Responder(table=parse_responses(settings.responses), alerts=alerts, users=users)
        self.notifier = Notifier(settings, ledger.origin, root)
        self.notifier.check()
        self._stale = False  # a step failed part-way: the monitor may have learned events twice
        first = self._load()
        self._saved_at = self.monotonic()
        self._beat_at = 0.0
        self._swept_at = -_SWEEP_SECONDS  # the first step finishes what a previous worker left
        if first:
            self.save()  # the state row exists from the start: heartbeats and the lag metric need it
        self._directory_checked = self.monotonic()
        # alert id -> (failures, next attempt, the channels still to take it)
        self._delivery: dict[int, tuple[int, float, frozenset[str] | None]] = {}
        self._channel_retry: dict[str, tuple[int, float]] = {}  # channel -> (failures, next attempt)

    def _load(self) -> bool:
        """The monitor and its ledger position as last saved (a new one the first time: True)."""
        directory, self._directory_stamp = effective_directory(self.alerts, self.users)
        self.processed, snapshot = self.alerts.load_state()
        if snapshot is None:
            self.monitor = OnlineMonitor(directory=directory, rules=self._rules, late="clamp")
        else:
            self.monitor = OnlineMonitor.restore(snapshot, directory=directory)
            self.monitor.rules = self._rules
        return snapshot is None

    # -- one step ----------------------------------------------------------------------------------

    def step(self) -> StepResult:
        """Score what the ledger accepted since the last step; respond and notify. A step that
        fails part-way (the index busy, the ledger unreadable) may leave the monitor having
        learned events it will read again: the next step starts over from the last saved state,
        as a restarted worker does, so nothing is counted twice."""
        if self._stale:
            self._load()
            self._stale = False
        try:
            return self._step()
        except BaseException:
            self._stale = True
            raise

    def _step(self) -> StepResult:
        self._refresh_directory()
        self.ledger.flush()  # read events queued by this process's own ledger
        size = self.ledger.size
        scored = raised = 0
        while self.processed < size:
            stop = min(size, self.processed + _READ_BATCH)
            leaves = self.ledger.entries(self.processed, stop)
            n, a = self._score(leaves, self.processed)
            scored, raised = scored + n, raised + a
            self.processed = stop
        now = self.clock()
        clock = self.monotonic()
        if clock - self._saved_at >= self.settings.snapshot_seconds:
            self.save()
        elif clock - self._beat_at >= (_BEAT_SECONDS if scored else _IDLE_BEAT_SECONDS):
            self.alerts.beat(self.processed, now=now)  # a durable write: seldom
            self._beat_at = clock
        # Responses and notifications at once for new alerts; otherwise (retries, and what a
        # previous worker left unfinished) every few seconds: an idle step costs two queries.
        if raised or clock - self._swept_at >= _SWEEP_SECONDS:
            self._respond(now)
            self._notify()
            self._swept_at = clock
        return StepResult(scored, raised)

    def _score(self, leaves: Sequence[bytes], first: int) -> tuple[int, int]:
        pending: list[tuple[MonitorEvent, int, datetime, str]] = []
        items: list[tuple[NewAlert, bytes]] = []
        scored = 0

        def flush() -> None:
            nonlocal scored
            if not pending:
                return
            batch = self.monitor.observe_batch(EventBatch.of([e for e, _, _, _ in pending]))
            scored += len(pending)
            now = self.clock()
            for i, result in enumerate(batch.alert):
                if result:
                    event = batch.event(i)
                    _, index, when, subject = pending[i]
                    ledgered = dataclasses.replace(event, user=ledger_subject(subject))
                    items.append(
                        (
                            _new_alert(event, index, when, subject),
                            canonical_bytes(alert_event(ledgered, time=now)),
                        )
                    )
            pending.clear()

        for offset, leaf in enumerate(leaves):
            # One entry the monitor cannot read (a RecursionError from deeply nested JSON, a field
            # the mapping refuses) is skipped: otherwise every step would stop at it for good.
            try:
                event = parse_event(leaf)
                resolution = event.kind is EventKind.ALERT and event.action == RESOLVE_ACTION
                mapped = None if resolution else from_ledger(event, index=first + offset)
            except (MedvaultError, RecursionError, ValueError, TypeError, KeyError):
                log.error("ledger entry %d cannot be read by the monitor; skipped", first + offset)
                continue
            if resolution:
                flush()  # everything before the resolution is scored without it
                self._apply_resolution(event)
                continue
            if mapped is not None:
                pending.append((mapped, first + offset, event.time, alert_subject(event.actor, mapped.user)))
        flush()
        return scored, self._store(items) if items else 0

    def _apply_resolution(self, event: AuditEvent) -> None:
        details = dict(event.details)
        try:
            disposition = Disposition(str(details.get("disposition")))
        except ValueError:
            return
        self.monitor.resolve(
            user=monitor_user(subject_from_ledger(str(details.get("subject", "")))),
            fired=decode_points(str(details.get("points", ""))),
            disposition=disposition,
            patient_id=event.patient,
        )

    def _store(self, items: list[tuple[NewAlert, bytes]]) -> int:
        new, outbox = self.alerts.add_alerts(
            items, now=self.clock(), owner=process_tag(), after_size=self.ledger.size
        )
        publish(self.ledger, self.index, outbox)
        return len(new)

    def _respond(self, now: datetime) -> None:
        # Carried out alert by alert; their ledger events and flags written once for the lot (a
        # password spray raises hundreds: a transaction each held up the next events' scoring).
        # A crash in between carries them out again: holds in force say so, sessions end twice.
        events: list[AuditEvent] = []
        done: list[int] = []
        for alert in self.alerts.unfinished("responded"):
            try:
                applied = self.responder.respond(alert, now=now)
                built = [response_event(alert, a, now=now) for a in applied]
            except MedvaultError as exc:  # this alert only: the others' responses must not wait
                log.error("alert %d: responses failed (retried): %s", alert.id, type(exc).__name__)
                continue
            events.extend(built)
            done.append(alert.id)
        if events:
            self.ledger.append_many(events)
        self.alerts.mark(done, "responded")

    def _notify(self) -> None:
        if not self.notifier.configured:
            return
        clock = self.monotonic()
        for alert in self.alerts.unfinished("notified"):
            failures, when, left = self._delivery.get(alert.id, (0, 0.0, None))
            if clock < when:
                continue
            pending = self.notifier.channels if left is None else left
            # A channel that just failed waits out its own back-off: a hanging collector must not
            # cost a timeout per alert per step (the scoring of the next events waits on this loop).
            usable = frozenset(c for c in pending if clock >= self._channel_retry.get(c, (0, 0.0))[1])
            if not usable:
                continue
            try:
                failed = self.notifier.deliver(alert, channels=usable)
            except MedvaultError as exc:  # its message could not be built: this alert only
                log.error("alert %d: notification failed (retried): %s", alert.id, type(exc).__name__)
                self._delivery[alert.id] = (failures + 1, next_attempt(failures + 1, clock), pending)
                continue
            for channel in usable - failed:
                self._channel_retry.pop(channel, None)
            for channel in failed:
                n = self._channel_retry.get(channel, (0, 0.0))[0] + 1
                self._channel_retry[channel] = (n, next_attempt(n, clock))
            still = (pending - usable) | failed
            if not still:
                self.alerts.mark(alert.id, "notified")
                self._delivery.pop(alert.id, None)
            elif failed:
                self._delivery[alert.id] = (failures + 1, next_attempt(failures + 1, clock), still)
            else:
                self._delivery[alert.id] = (failures, when, still)

    def _refresh_directory(self) -> None:
        if self.monotonic() - self._directory_checked < _DIRECTORY_CHECK_SECONDS:
            return
        self._directory_checked = self.monotonic()
        directory, stamp = effective_directory(self.alerts, self.users)
        if stamp != self._directory_stamp:
            self._directory_stamp = stamp
            self.monitor.set_directory(directory)

    def save(self) -> None:
        if self._stale:
            return  # never over the last good state: the next step reloads it
        self.alerts.save_state(self.processed, self.monitor.snapshot(), now=self.clock())
        self._saved_at = self.monotonic()

    # -- running -----------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Step every ``poll_ms`` until ``stop``; an error is logged and the next step tries again
        (nothing crashes the monitor); the state is saved on the way out."""
        interval = max(0.02, self.settings.poll_ms / 1000)
        try:
            while not stop.is_set():
                try:
                    self.step()
                except Exception as exc:
                    log.error("monitor step failed: %s", type(exc).__name__)
                    stop.wait(min(5.0, interval * 10))
                stop.wait(interval)
        finally:
            try:
                self.save()
            except Exception as exc:
                log.error("monitor state not saved: %s", type(exc).__name__)
