"""Alerts of the continuous monitor, its saved state, the imported directory and security holds.

The online worker (:mod:`medvault.alerts.worker`) writes alerts together with their ledger events
(through the ledger outbox, in one transaction) and saves the monitor's state with the ledger
position it has scored up to; officers list, acknowledge and resolve alerts (``/api/alerts``,
``medvault alerts``). A *hold* is an automatic response in force (step-up sign-in, a locked
account, exports held, a suspended API key or node) until an officer lifts it; the user, API-key and
node stores consult :func:`held` on every authentication.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from sqlalchemy import Engine, and_, func, insert, select, update

from medvault.errors import Conflict, InvalidInput, NotFound
from medvault.index import alerts_schema as a
from medvault.index.holds import held
from medvault.index.outbox import Outbox, write_outbox
from medvault.index.schema import metadata
from medvault.index.users import FieldCipherLike

__all__ = [
    "HOLD_KINDS",
    "SEVERITIES",
    "STATUSES",
    "AlertRecord",
    "AlertStore",
    "Hold",
    "NewAlert",
    "check_handling",
    "held",
]

SEVERITIES: Final = ("medium", "high", "critical")
STATUSES: Final = ("open", "acknowledged", "resolved")
DISPOSITIONS: Final = ("true_positive", "false_positive", "benign_explained")
#: Responses that stay in force until lifted (end_sessions is done at once and needs no hold).
HOLD_KINDS: Final = ("step_up", "lock_account", "hold_exports", "suspend_key", "suspend_node")
HoldKind = Literal["step_up", "lock_account", "hold_exports", "suspend_key", "suspend_node"]
_TABLES = [a.alerts, a.monitor_state, a.monitor_directory, a.security_holds]
_MAX_PAGE = 1000


def _inserted_id(result: Any) -> int:
    return int(result.inserted_primary_key[0])


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class NewAlert:
    """What the worker knows of an alert when it raises it."""

    source_index: int
    event_time: datetime
    subject: str
    severity: str
    score: float
    incident_id: str | None
    patient: str | None
    study_uid: str | None
    reasons: tuple[str, ...]
    points: dict[str, float]
    features: dict[str, float]
    incident: dict[str, Any] | None


@dataclass(frozen=True)
class AlertRecord:
    id: int
    source_index: int
    event_time: datetime
    raised_at: datetime
    subject: str
    severity: str
    score: float
    incident_id: str | None
    patient: str | None
    study_uid: str | None
    reasons: tuple[str, ...]
    points: dict[str, float]
    features: dict[str, float]
    incident: dict[str, Any] | None
    status: str
    disposition: str | None
    handled_by: str | None
    handled_at: datetime | None
    note: str | None
    responded: bool
    notified: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ledger_index": self.source_index,
            "event_time": self.event_time.isoformat(),
            "raised_at": self.raised_at.isoformat(),
            "subject": self.subject,
            "severity": self.severity,
            "score": self.score,
            "incident_id": self.incident_id,
            "patient": self.patient,
            "study_uid": self.study_uid,
            "reasons": list(self.reasons),
            "points": self.points,
            "features": self.features,
            "incident": self.incident,
            "status": self.status,
            "disposition": self.disposition,
            "handled_by": self.handled_by,
            "handled_at": self.handled_at.isoformat() if self.handled_at else None,
            "note": self.note,
        }


@dataclass(frozen=True)
class Hold:
    id: int
    kind: str
    subject: str
    alert_id: int | None
    created_at: datetime
    lifted_at: datetime | None
    lifted_by: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "subject": self.subject,
            "alert_id": self.alert_id,
            "created_at": self.created_at.isoformat(),
            "lifted_at": self.lifted_at.isoformat() if self.lifted_at else None,
            "lifted_by": self.lifted_by,
        }


def check_handling(status: str, disposition: str | None, note: str | None) -> None:
    """Refuse a handling of an alert that cannot be right, before anything is built from it."""
    if status not in ("acknowledged", "resolved"):
        raise InvalidInput("an alert is acknowledged or resolved")
    if status == "resolved" and disposition not in DISPOSITIONS:
        raise InvalidInput(f"a resolution needs a disposition: one of {', '.join(DISPOSITIONS)}")
    if status == "acknowledged" and disposition is not None:
        raise InvalidInput("acknowledging takes no disposition; resolve the alert to give one")
    if note is not None and len(note) > 4000:
        raise InvalidInput("the note is longer than 4,000 characters")


class AlertStore:
    def __init__(self, engine: Engine, *, cipher: FieldCipherLike) -> None:
        self.engine = engine
        self._writer = engine.execution_options(write=True)
        self._cipher = cipher
        metadata.create_all(self._writer, tables=_TABLES)

    # -- sealing ---------------------------------------------------------------------------------

    def _seal(self, value: Any, context: str) -> bytes:
        raw = zlib.compress(json.dumps(value, separators=(",", ":")).encode(), 6)
        return self._cipher.encrypt(raw, context=context.encode())

    def _open(self, blob: bytes, context: str) -> Any:
        return json.loads(zlib.decompress(self._cipher.decrypt(bytes(blob), context=context.encode())))

    def _record(self, row: Any) -> AlertRecord:
        doc = self._open(row.doc, f"alert/{row.source_index}")
        note = self._open(row.note, f"alert-note/{row.id}") if row.note is not None else None
        return AlertRecord(
            id=row.id,
            source_index=int(row.source_index),
            event_time=_aware(row.event_time) or datetime.now(UTC),
            raised_at=_aware(row.raised_at) or datetime.now(UTC),
            subject=row.subject,
            severity=row.severity,
            score=row.score_milli / 1000,
            incident_id=row.incident_id,
            patient=row.patient,
            study_uid=row.study_uid,
            reasons=tuple(doc["reasons"]),
            points=dict(doc["points"]),
            features=dict(doc["features"]),
            incident=doc.get("incident"),
            status=row.status,
            disposition=row.disposition,
            handled_by=row.handled_by,
            handled_at=_aware(row.handled_at),
            note=note,
            responded=bool(row.responded),
            notified=bool(row.notified),
        )

    # -- the worker ------------------------------------------------------------------------------

    def load_state(self) -> tuple[int, dict[str, Any] | None]:
        """(ledger entries scored so far, the monitor's snapshot), or (0, None) the first time."""
        with self.engine.connect() as conn:
            row = conn.execute(select(a.monitor_state).where(a.monitor_state.c.id == 1)).first()
        if row is None:
            return 0, None
        snapshot: dict[str, Any] = self._open(row.snapshot, "monitor/state")
        return int(row.processed), snapshot

    def save_state(self, processed: int, snapshot: dict[str, Any], *, now: datetime) -> None:
        sealed = self._seal(snapshot, "monitor/state")
        values = {
            "processed": processed,
            "snapshot": sealed,
            "saved_at": now,
            "live": processed,
            "heartbeat": now,
        }
        with self._writer.begin() as conn:
            done = conn.execute(
                update(a.monitor_state).where(a.monitor_state.c.id == 1).values(**values)
            ).rowcount
            if not done:
                conn.execute(insert(a.monitor_state).values(id=1, **values))

    def beat(self, live: int, *, now: datetime) -> None:
        """The running worker has scored ``live`` ledger entries (cheap: no snapshot)."""
        with self._writer.begin() as conn:
            conn.execute(
                update(a.monitor_state).where(a.monitor_state.c.id == 1).values(live=live, heartbeat=now)
            )

    def progress(self) -> tuple[int, datetime | None]:
        """(entries scored by the running worker, its last heartbeat): for the lag metric."""
        with self.engine.connect() as conn:
            row = conn.execute(select(a.monitor_state.c.live, a.monitor_state.c.heartbeat)).first()
        return (0, None) if row is None else (int(row.live), _aware(row.heartbeat))

    def add_alerts(
        self, items: Sequence[tuple[NewAlert, bytes]], *, now: datetime, owner: str, after_size: int
    ) -> tuple[list[int], Outbox]:
        """Insert the alerts not stored yet (one per source event: a worker that re-scores after a
        restart raises nothing twice) with their ledger events in the outbox, in one transaction.
        Returns the new alerts' ids and the outbox to publish."""
        outbox = Outbox(owner=owner, after_size=after_size, leaves=[])
        new: list[int] = []
        with self._writer.begin() as conn:
            wanted = [item.source_index for item, _ in items]
            known = {
                int(r[0])
                for r in conn.execute(
                    select(a.alerts.c.source_index).where(a.alerts.c.source_index.in_(wanted))
                )
            }
            for item, leaf in items:
                if item.source_index in known:
                    continue
                known.add(item.source_index)
                doc = {
                    "reasons": list(item.reasons),
                    "points": item.points,
                    "features": item.features,
                    "incident": item.incident,
                }
                result = conn.execute(
                    insert(a.alerts).values(
                        source_index=item.source_index,
                        event_time=item.event_time,
                        raised_at=now,
                        subject=item.subject[:255],
                        severity=item.severity,
                        score_milli=round(item.score * 1000),
                        incident_id=item.incident_id,
                        patient=item.patient,
                        study_uid=item.study_uid,
                        doc=self._seal(doc, f"alert/{item.source_index}"),
                        status="open",
                        responded=False,
                        notified=False,
                    )
                )
                new.append(_inserted_id(result))
                outbox.leaves.append(leaf)
            write_outbox(conn, outbox)
        return new, outbox

    def unfinished(self, column: Literal["responded", "notified"]) -> list[AlertRecord]:
        """Alerts whose responses (or notifications) have not been carried out yet."""
        col = a.alerts.c[column]
        with self.engine.connect() as conn:
            rows = conn.execute(select(a.alerts).where(col.is_(False)).order_by(a.alerts.c.id)).all()
        return [self._record(r) for r in rows]

    def mark(self, alert_ids: int | Sequence[int], column: Literal["responded", "notified"]) -> None:
        """Set ``column`` on one alert or many (one transaction)."""
        ids = [alert_ids] if isinstance(alert_ids, int) else list(alert_ids)
        if not ids:
            return
        with self._writer.begin() as conn:
            conn.execute(update(a.alerts).where(a.alerts.c.id.in_(ids)).values({column: True}))

    # -- officers --------------------------------------------------------------------------------

    def find(
        self,
        *,
        status: str | None = None,
        severity: str | None = None,
        subject: str | None = None,
        incident_id: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[AlertRecord]:
        """Newest first; filters as given. ``limit`` is at most 1,000."""
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"status must be one of: {', '.join(STATUSES)}")
        if severity is not None and severity not in SEVERITIES:
            raise InvalidInput(f"severity must be one of: {', '.join(SEVERITIES)}")
        conditions = []
        if status is not None:
            conditions.append(a.alerts.c.status == status)
        if severity is not None:
            conditions.append(a.alerts.c.severity == severity)
        if subject is not None:
            conditions.append(a.alerts.c.subject == subject)
        if incident_id is not None:
            conditions.append(a.alerts.c.incident_id == incident_id)
        if since is not None:
            conditions.append(a.alerts.c.raised_at >= since)
        query = select(a.alerts).order_by(a.alerts.c.id.desc()).limit(max(1, min(limit, _MAX_PAGE)))
        if conditions:
            query = query.where(and_(*conditions))
        with self.engine.connect() as conn:
            rows = conn.execute(query.offset(max(0, offset))).all()
        return [self._record(r) for r in rows]

    def hold(self, hold_id: int) -> Hold:
        with self.engine.connect() as conn:
            row = conn.execute(select(a.security_holds).where(a.security_holds.c.id == hold_id)).first()
        if row is None:
            raise NotFound(f"no hold {hold_id}")
        return self._hold(row)

    def get(self, alert_id: int) -> AlertRecord:
        with self.engine.connect() as conn:
            row = conn.execute(select(a.alerts).where(a.alerts.c.id == alert_id)).first()
        if row is None:
            raise NotFound(f"no alert {alert_id}")
        return self._record(row)

    def handle(
        self,
        alert_id: int,
        *,
        status: Literal["acknowledged", "resolved"],
        by: str,
        now: datetime,
        disposition: str | None = None,
        note: str | None = None,
        outbox: Outbox | None = None,
    ) -> AlertRecord:
        """Acknowledge (taken in hand) or resolve (with a disposition) an alert. A resolved alert
        stays resolved: a second resolution is a Conflict (the first one fed the monitor already)."""
        check_handling(status, disposition, note)
        with self._writer.begin() as conn:
            row = conn.execute(select(a.alerts).where(a.alerts.c.id == alert_id)).first()
            if row is None:
                raise NotFound(f"no alert {alert_id}")
            if row.status == "resolved":
                raise Conflict(f"alert {alert_id} is resolved already ({row.disposition})")
            values: dict[str, Any] = {"status": status, "handled_by": by[:255], "handled_at": now}
            if disposition is not None:
                values["disposition"] = disposition
            if note:
                values["note"] = self._seal(note, f"alert-note/{alert_id}")
            conn.execute(update(a.alerts).where(a.alerts.c.id == alert_id).values(**values))
            if outbox is not None:  # its ledger event, in this same transaction
                write_outbox(conn, outbox)
        return self.get(alert_id)

    def open_counts(self) -> dict[str, int]:
        """Open (not resolved) alerts per severity."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(a.alerts.c.severity, func.count())
                .where(a.alerts.c.status != "resolved")
                .group_by(a.alerts.c.severity)
            ).all()
        counts = dict.fromkeys(SEVERITIES, 0)
        counts.update({str(r[0]): int(r[1]) for r in rows})
        return counts

    def total_counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(a.alerts.c.severity, func.count()).group_by(a.alerts.c.severity)).all()
        counts = dict.fromkeys(SEVERITIES, 0)
        counts.update({str(r[0]): int(r[1]) for r in rows})
        return counts

    # -- the directory -----------------------------------------------------------------------------

    def save_directory(self, doc: dict[str, Any], *, now: datetime) -> None:
        sealed = self._seal(doc, "monitor/directory")
        users, patients = len(doc.get("users", [])), len(doc.get("patients", []))
        with self._writer.begin() as conn:
            done = conn.execute(
                update(a.monitor_directory)
                .where(a.monitor_directory.c.id == 1)
                .values(doc=sealed, imported_at=now, users=users, patients=patients)
            ).rowcount
            if not done:
                conn.execute(
                    insert(a.monitor_directory).values(
                        id=1, doc=sealed, imported_at=now, users=users, patients=patients
                    )
                )

    def load_directory(self) -> tuple[dict[str, Any] | None, datetime | None]:
        """The imported directory (patients by pseudonym) and when it was imported."""
        with self.engine.connect() as conn:
            row = conn.execute(select(a.monitor_directory).where(a.monitor_directory.c.id == 1)).first()
        if row is None:
            return None, None
        doc: dict[str, Any] = self._open(row.doc, "monitor/directory")
        return doc, _aware(row.imported_at)

    # -- holds -------------------------------------------------------------------------------------

    @staticmethod
    def _hold(row: Any) -> Hold:
        return Hold(
            id=row.id,
            kind=row.kind,
            subject=row.subject,
            alert_id=row.alert_id,
            created_at=_aware(row.created_at) or datetime.now(UTC),
            lifted_at=_aware(row.lifted_at),
            lifted_by=row.lifted_by,
        )

    def add_hold(self, kind: HoldKind, subject: str, *, alert_id: int | None, now: datetime) -> Hold | None:
        """Put a hold in force; None when one of that kind is in force on the subject already."""
        if kind not in HOLD_KINDS:
            raise InvalidInput(f"unknown hold {kind!r}")
        with self._writer.begin() as conn:
            if held(conn, kind, subject):
                return None
            result = conn.execute(
                insert(a.security_holds).values(kind=kind, subject=subject, alert_id=alert_id, created_at=now)
            )
            row = conn.execute(
                select(a.security_holds).where(a.security_holds.c.id == _inserted_id(result))
            ).one()
        return self._hold(row)

    def lift_hold(
        self,
        hold_id: int,
        *,
        by: str,
        now: datetime,
        outbox: Outbox | None = None,
    ) -> Hold:
        with self._writer.begin() as conn:
            row = conn.execute(select(a.security_holds).where(a.security_holds.c.id == hold_id)).first()
            if row is None:
                raise NotFound(f"no hold {hold_id}")
            if row.lifted_at is not None:
                raise Conflict(f"hold {hold_id} was lifted already")
            conn.execute(
                update(a.security_holds)
                .where(a.security_holds.c.id == hold_id)
                .values(lifted_at=now, lifted_by=by[:255])
            )
            row = conn.execute(select(a.security_holds).where(a.security_holds.c.id == hold_id)).one()
            if outbox is not None:
                write_outbox(conn, outbox)
        return self._hold(row)

    def lift_all(self, kind: HoldKind, subject: str, *, by: str, now: datetime) -> list[Hold]:
        """Lift every hold of ``kind`` on ``subject`` (a step-up is met by a full sign-in)."""
        with self._writer.begin() as conn:
            ids = [
                r.id
                for r in conn.execute(
                    select(a.security_holds.c.id).where(
                        a.security_holds.c.kind == kind,
                        a.security_holds.c.subject == subject,
                        a.security_holds.c.lifted_at.is_(None),
                    )
                )
            ]
            if ids:
                conn.execute(
                    update(a.security_holds)
                    .where(a.security_holds.c.id.in_(ids))
                    .values(lifted_at=now, lifted_by=by[:255])
                )
            rows = (
                conn.execute(select(a.security_holds).where(a.security_holds.c.id.in_(ids))).all()
                if ids
                else []
            )
        return [self._hold(r) for r in rows]

    def holds(self, *, active: bool = True, subject: str | None = None) -> list[Hold]:
        query = select(a.security_holds).order_by(a.security_holds.c.id)
        if active:
            query = query.where(a.security_holds.c.lifted_at.is_(None))
        if subject is not None:
            query = query.where(a.security_holds.c.subject == subject)
        with self.engine.connect() as conn:
            return [self._hold(r) for r in conn.execute(query)]

    def is_held(self, kind: str, subject: str) -> bool:
        with self.engine.connect() as conn:
            return held(conn, kind, subject)
