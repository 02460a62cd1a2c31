"""The right to erasure (GDPR Art. 17), where the law allows it: requested, approved by a second
person, executed by crypto-shredding, and proven by a certificate.

Refused while a legal hold covers any of the patient's studies or a retention rule still keeps one
(Art. 17(3)(b), (e): a legal obligation to keep, legal claims) — checked at approval and again at
execution. Execution goes through the archive's one delete path (data keys destroyed with the
index rows, objects deleted, a tombstone per study, one ``delete`` event per instance, action
``patient.erasure``). Every step is ledgered (kind ``erasure``) with the request's id; the
certificate lists those entries with RFC 9162 inclusion proofs against a signed checkpoint, so
it can be checked offline with the ledger's public key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from medvault.archive import Archive
from medvault.compliance.access import request_reference
from medvault.compliance.rules import evaluate
from medvault.config import RetentionRule
from medvault.errors import Conflict, Forbidden, InvalidInput, NotFound
from medvault.index.erasure import ErasureRequest, ErasureStore, State
from medvault.index.legal_holds import LegalHoldActive
from medvault.index.retention_view import StudyProfile, study_profiles
from medvault.index.store import TAG_PATIENT_ID
from medvault.ledger.events import Actor, AuditEvent, EventKind, ObjectRef, Outcome
from medvault.ledger.merkle import leaf_hash, verify_inclusion
from medvault.ledger.note import parse_and_verify
from medvault.reports import ledger_events

__all__ = [
    "ErasureRefused",
    "approve_erasure",
    "blockers",
    "cancel_erasure",
    "certificate",
    "execute_erasure",
    "request_erasure",
]

TAG_DEPARTMENT = "00081040"
MAX_GROUNDS = 500


class ErasureRefused(Forbidden):
    """A legal hold or a retention minimum forbids erasing now; the reasons name each study."""

    def __init__(self, reasons: Sequence[str]) -> None:
        shown = "; ".join(reasons[:5]) + (f"; and {len(reasons) - 5} more" if len(reasons) > 5 else "")
        super().__init__(
            f"erasure is not allowed now: {shown}",
            hint="Lift the legal hold or wait for the retention minimum; the request stays open.",
        )
        self.reasons = tuple(reasons)


def _studies(archive: Archive, patient: str) -> list[StudyProfile]:
    return [p for p in study_profiles(archive.index) if p.facts.patient == patient]


def blockers(archive: Archive, rules: Sequence[RetentionRule], patient: str, *, today: date) -> list[str]:
    """Why this patient's studies may not be erased today (empty: they may). No PHI: study UIDs,
    hold numbers, rule names and keep-until days only."""
    departments = {
        r.department: archive.index.pseudonym(TAG_DEPARTMENT, r.department) for r in rules if r.department
    }
    held = archive.legal_holds.held_studies()
    reasons: list[str] = []
    for study in _studies(archive, patient):
        uid = study.facts.study_uid
        if held.get(uid):
            reasons.append(f"study {uid} is under legal hold " + ", ".join(f"#{h}" for h in held[uid]))
        verdict = evaluate(rules, study, today=today, departments=departments)
        if verdict.kind == "undetermined":
            reasons.append(f"study {uid}: {verdict.reason}")
        elif verdict.kind == "keep" and verdict.rule is not None:
            reasons.append(f"study {uid} is {verdict.reason} (a retention minimum)")
    return reasons


def _event(
    request: ErasureRequest,
    action: str,
    actor: Actor,
    now: datetime,
    outcome: Outcome,
    reason: str | None = None,
) -> AuditEvent:
    return AuditEvent(
        kind=EventKind.ERASURE,
        time=now,
        actor=actor,
        action=action,
        outcome=outcome,
        object=ObjectRef(type="erasure_request", id=str(request.id)),
        patient=request.patient,
        reason=reason,
        details={"erasure_request": request.id, "reference": request.reference},
    )


def _ledger(archive: Archive, event: AuditEvent) -> None:
    if archive.audit is not None:
        archive.audit.emit(event)


def request_erasure(
    archive: Archive,
    patient_id: str,
    *,
    reference: str,
    grounds: str,
    actor: Actor,
    now: datetime | None = None,
) -> ErasureRequest:
    """Record a patient's request (the grounds are sealed). ``NotFound`` when the archive holds
    nothing of the patient; ``Conflict`` when a request of theirs is already open."""
    reference = request_reference(reference)
    grounds = grounds.strip()
    if not grounds or len(grounds) > MAX_GROUNDS:
        raise InvalidInput(
            f"the grounds must be 1-{MAX_GROUNDS} characters (e.g. 'Art. 17(1)(a): no longer needed')"
        )
    now = now or datetime.now(UTC)
    patient = archive.index.pseudonym(TAG_PATIENT_ID, patient_id)
    if not _studies(archive, patient):
        raise NotFound("the archive holds no study of this patient")
    store = ErasureStore(archive.index)
    open_states: tuple[State, ...] = ("requested", "approved")
    if any(r.patient == patient for state in open_states for r in store.requests(state=state)):
        raise Conflict("an erasure request for this patient is already open")
    made = store.add(patient=patient, reference=reference, grounds=grounds, by=actor.id, now=now)
    _ledger(archive, _event(made, "erasure.request", actor, now, Outcome.SUCCESS))
    return made


def _refuse(
    archive: Archive, request: ErasureRequest, action: str, actor: Actor, now: datetime, reasons: list[str]
) -> None:
    refused = ErasureRefused(reasons)
    _ledger(archive, _event(request, action, actor, now, Outcome.DENIED, refused.message[:500]))
    raise refused


def approve_erasure(
    archive: Archive,
    rules: Sequence[RetentionRule],
    request_id: int,
    *,
    actor: Actor,
    now: datetime | None = None,
) -> ErasureRequest:
    """The second person's approval: never the requester's own; refused while blocked."""
    now = now or datetime.now(UTC)
    store = ErasureStore(archive.index)
    request = store.get(request_id)
    if request.state != "requested":
        raise Conflict(f"erasure request {request_id} is {request.state}, not requested")
    if request.requested_by == actor.id:
        _ledger(
            archive,
            _event(request, "erasure.approve", actor, now, Outcome.DENIED, "requester cannot approve"),
        )
        raise Forbidden(
            "a second person must approve an erasure: this request was made by you",
            hint="Ask another privacy officer (or archivist) to approve it.",
        )
    reasons = blockers(archive, rules, request.patient, today=now.date())
    if reasons:
        _refuse(archive, request, "erasure.approve", actor, now, reasons)
    approved = store.move(request_id, frm="requested", to="approved", by=actor.id, now=now)
    _ledger(archive, _event(approved, "erasure.approve", actor, now, Outcome.SUCCESS))
    return approved


def execute_erasure(
    archive: Archive,
    rules: Sequence[RetentionRule],
    request_id: int,
    *,
    actor: Actor,
    now: datetime | None = None,
) -> ErasureRequest:
    """Crypto-shred every study of the approved request's patient, then mark it executed. A hold
    placed meanwhile stops it (what was erased stays erased; the request stays approved)."""
    now = now or datetime.now(UTC)
    store = ErasureStore(archive.index)
    request = store.get(request_id)
    if request.state != "approved":
        raise Conflict(f"erasure request {request_id} is {request.state}, not approved")
    reasons = blockers(archive, rules, request.patient, today=now.date())
    if reasons:
        _refuse(archive, request, "erasure.execute", actor, now, reasons)
    studies = instances = 0
    for study in _studies(archive, request.patient):
        try:
            instances += archive.delete(
                study.facts.study_uid, actor=actor, cause="erasure", request=request.id
            )
        except NotFound:  # erased meanwhile by a concurrent execution
            continue
        except LegalHoldActive as held:
            _refuse(archive, request, "erasure.execute", actor, now, [held.message])
        studies += 1
    done = store.move(
        request_id, frm="approved", to="executed", by=actor.id, now=now, studies=studies, instances=instances
    )
    _ledger(archive, _event(done, "erasure.execute", actor, now, Outcome.SUCCESS))
    return done


def cancel_erasure(
    archive: Archive, request_id: int, *, actor: Actor, now: datetime | None = None
) -> ErasureRequest:
    now = now or datetime.now(UTC)
    cancelled = ErasureStore(archive.index).move(
        request_id, frm=("requested", "approved"), to="cancelled", by=actor.id, now=now
    )
    _ledger(archive, _event(cancelled, "erasure.cancel", actor, now, Outcome.SUCCESS))
    return cancelled


@dataclass(frozen=True)
class _Entry:
    index: int
    data: bytes
    event: dict[str, Any]


def certificate(archive: Archive, request_id: int) -> dict[str, Any]:
    """The certificate of erasure of an executed request: what was erased, by whom, when, and the
    ledger entries that prove it, each with its inclusion proof against a signed checkpoint."""
    request = ErasureStore(archive.index).get(request_id)
    if request.state != "executed":
        raise Conflict(f"erasure request {request_id} is {request.state}: a certificate needs it executed")
    if archive.audit is None:
        raise InvalidInput("this archive keeps no ledger")
    ledger = archive.audit.ledger
    entries = [
        _Entry(i, ledger.entry(i), e)
        for i, e in ledger_events(archive)
        if (e.get("details") or {}).get("erasure_request") == request.id
    ]
    latest = ledger.latest_checkpoint()
    checkpoint = None if latest is None else parse_and_verify(latest, ledger.verifier_key_text())
    if latest is None or checkpoint is None or checkpoint.size <= max(e.index for e in entries):
        latest = ledger.checkpoint()  # one that covers every entry below
        checkpoint = parse_and_verify(latest, ledger.verifier_key_text())
    note = latest
    proven = []
    for entry in entries:
        proof = ledger.inclusion_proof(entry.index, checkpoint.size)
        verify_inclusion(
            leaf_hash(entry.data), entry.index, checkpoint.size, proof.hashes, checkpoint.root_hash
        )
        proven.append(
            {
                "index": entry.index,
                "action": entry.event.get("action"),
                "time": entry.event.get("time"),
                "object": entry.event.get("object"),
                "leaf_sha256": hashlib.sha256(entry.data).hexdigest(),
                "entry": entry.data.decode(),
                "inclusion_proof": proof.to_json(),
            }
        )
    erased = sorted(
        {
            str((e.event.get("details") or {}).get("study_uid"))
            for e in entries
            if e.event.get("kind") == "delete"
        }
    )
    body = {
        "certificate": "medvault certificate of erasure",
        "request": {k: v for k, v in request.to_json().items() if k != "grounds"},
        "erased_studies": erased,
        "method": "crypto-shredding: each instance's data key destroyed with its index row, the encrypted "
        "object deleted, a tombstone left per study",
        "ledger": {
            "origin": ledger.origin,
            "checkpoint": note.decode(),
            "verifier_key": ledger.verifier_key_text(),
            "entries": proven,
        },
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return {"body": body, "sha256": hashlib.sha256(canonical).hexdigest()}
