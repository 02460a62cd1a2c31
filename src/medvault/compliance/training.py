"""Training records, ledgered: every change to courses and completions, every reminder and every
change of a person's access because of training lands in the ledger, with who caused it.

One place for the CLI (``medvault training …``) and the API (``/api/training``). The store
(:mod:`medvault.index.training`) commits each change first and says what changed; the events
follow at once (as ``medvault users …`` does). No PHI: people by account name, courses by name,
and an evidence reference only as its SHA-256 (the text stays in the index).

Events (kind, action):

* ``config_change`` ``training.course.add`` / ``training.course.version`` (a new version);
* ``user_change`` ``training.record`` (a completion, object: the user);
* ``alert`` ``training.reminder`` (a required course expiring or expired; once per expiry);
* ``alert`` ``training.gate`` (access to patient data ``granted`` / ``refused`` because of
  training; ``previous`` is ``unknown`` the first time a person is evaluated).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime

from medvault.index.training import CompletionRecord, CourseRecord, GateChange, Reminder, TrainingStore
from medvault.ledger.events import Actor, AuditEvent, EventKind, ObjectRef, Outcome, Scalar

__all__ = ["DEFAULT_REMINDER_DAYS", "Emit", "TrainingRecords"]

Emit = Callable[[AuditEvent], object]
DEFAULT_REMINDER_DAYS = 30


def _access(allowed: bool | None) -> str:
    return "unknown" if allowed is None else ("granted" if allowed else "refused")


@dataclass
class TrainingRecords:
    """The store plus the ledger: ``emit`` appends one event durably (``Ledger.append``,
    ``LedgerAudit.emit``)."""

    store: TrainingStore
    emit: Emit

    def _event(
        self,
        kind: EventKind,
        action: str,
        actor: Actor,
        now: datetime,
        obj: ObjectRef,
        details: dict[str, Scalar],
    ) -> None:
        self.emit(
            AuditEvent(
                kind=kind,
                time=now,
                actor=actor,
                action=action,
                outcome=Outcome.SUCCESS,
                object=obj,
                details={k: v for k, v in details.items() if v is not None},
            )
        )

    def _gate(self, changes: Iterable[GateChange], actor: Actor, now: datetime) -> list[GateChange]:
        changes = list(changes)
        for change in changes:
            self._event(
                EventKind.ALERT,
                "training.gate",
                actor,
                now,
                ObjectRef(type="user", id=change.username),
                {
                    "access": _access(change.allowed),
                    "previous": _access(change.previous),
                    "expires": change.expires.isoformat() if change.expires else None,
                    "course": change.course,
                },
            )
        return changes

    def add_course(
        self,
        name: str,
        *,
        version: str,
        valid_days: int,
        required_for: Iterable[str] = (),
        requires_renewal: bool = False,
        actor: Actor,
        now: datetime,
    ) -> tuple[CourseRecord, list[GateChange]]:
        """Add a course or a new version; ledger it, then whose access it changed."""
        earlier = any(r.course.name == name for r in self.store.courses())
        record = self.store.add_course(
            name,
            version=version,
            valid_days=valid_days,
            required_for=required_for,
            requires_renewal=requires_renewal,
            now=now,
            by=actor.id,
        )
        course = record.course
        self._event(
            EventKind.CONFIG_CHANGE,
            "training.course.version" if earlier else "training.course.add",
            actor,
            now,
            ObjectRef(type="training_course", id=name),
            {
                "version": course.version,
                "valid_days": course.valid_days,
                "required_for": " ".join(sorted(course.required_for)) or None,
                "requires_renewal": course.requires_renewal,
            },
        )
        return record, self._gate(self.store.sync_gate(now=now), actor, now)

    def record(
        self,
        username: str,
        course: str,
        *,
        completed_on: date,
        evidence: str | None = None,
        version: str | None = None,
        actor: Actor,
        now: datetime,
    ) -> tuple[CompletionRecord, list[GateChange]]:
        """Record a completion; ledger it, then the person's access if it changed (at once)."""
        done = self.store.record(
            username,
            course,
            completed_on=completed_on,
            evidence=evidence,
            version=version,
            now=now,
            by=actor.id,
        )
        self._event(
            EventKind.USER_CHANGE,
            "training.record",
            actor,
            now,
            ObjectRef(type="user", id=username),
            {
                "course": done.course,
                "version": done.version,
                "completed_on": done.completed_on.isoformat(),
                "evidence_sha256": hashlib.sha256(done.evidence.encode()).hexdigest()
                if done.evidence
                else None,
            },
        )
        return done, self._gate(self.store.sync_gate(now=now, username=username), actor, now)

    def reminders(
        self, *, within_days: int = DEFAULT_REMINDER_DAYS, actor: Actor, now: datetime
    ) -> tuple[list[Reminder], list[GateChange]]:
        """Who must renew soon (or has lapsed); a ``training.reminder`` event for each reminder not
        sent before for that expiry, and a ``training.gate`` event for each access that changed
        since the last run (run it daily: a lapse happens with time, not with a change)."""
        changes = self._gate(self.store.sync_gate(now=now), actor, now)
        due = self.store.reminders(now=now, within_days=within_days)
        for reminder in due:
            if reminder.new:
                self._event(
                    EventKind.ALERT,
                    "training.reminder",
                    actor,
                    now,
                    ObjectRef(type="user", id=reminder.username),
                    {
                        "course": reminder.course,
                        "version": reminder.version,
                        "expires": reminder.expires.isoformat(),
                        "state": reminder.state,
                        "days_left": (reminder.expires - now.date()).days,
                    },
                )
        return due, changes
