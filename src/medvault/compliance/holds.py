"""Placing and lifting legal holds, each ledgered with who and why (the same for the CLI and the
API). The hold itself is kept by medvault.index.legal_holds and enforced by the archive's one
delete path.

A patient is named by PatientID and recorded by its keyed pseudonym only; a study by its UID; a
query by QIDO-RS matching keys (``Modality=CT&StudyDate=20190101-20191231``), kept sealed and
evaluated at every deletion, so it also covers studies stored after the hold. Reasons are free
text that may name a patient: they stay sealed in the hold's record, and the ledger carries
their SHA-256 (anyone holding the record can show it is the reason that was ledgered).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from medvault.archive import Archive
from medvault.errors import InvalidInput
from medvault.index.legal_holds import MAX_REASON, HoldKind, LegalHold, hold_criteria
from medvault.ledger.events import Actor, AuditEvent, EventKind, ObjectRef, Outcome

__all__ = ["MIN_REASON", "lift_legal_hold", "place_legal_hold"]

MIN_REASON = 10
TAG_PATIENT_ID = "00100020"


def _reason(text: str | None, what: str) -> str:
    reason = (text or "").strip()
    if len(reason) < MIN_REASON:
        raise InvalidInput(f"{what} needs a reason of at least {MIN_REASON} characters (who asked, and why)")
    if len(reason) > MAX_REASON:
        raise InvalidInput(f"{what}'s reason must be at most {MAX_REASON} characters")
    if not reason.isprintable():
        raise InvalidInput(f"{what}'s reason must be printable text on one line")
    return reason


def _ledger(archive: Archive, action: str, hold: LegalHold, actor: Actor, reason: str, covered: int) -> None:
    if archive.audit is None:
        return
    archive.audit.emit(
        AuditEvent(
            kind=EventKind.CONFIG_CHANGE,
            time=datetime.now(UTC),
            actor=actor,
            action=action,
            outcome=Outcome.SUCCESS,
            object=ObjectRef(type="legal_hold", id=str(hold.id)),
            patient=hold.target if hold.kind == "patient" else None,
            details={
                "hold_kind": hold.kind,
                "study_uid": hold.target if hold.kind == "study" else None,
                "reason_sha256": hashlib.sha256(reason.encode()).hexdigest(),
                "studies_covered": covered,
            },
        )
    )


def place_legal_hold(
    archive: Archive,
    *,
    actor: Actor,
    reason: str | None,
    patient_id: str | None = None,
    study_uid: str | None = None,
    query: str | None = None,
) -> tuple[LegalHold, int]:
    """Place a hold on exactly one of a patient, a study or a query; returns it and how many
    stored studies it covers now (a hold on something not stored yet is allowed: it waits)."""
    given = [k for k, v in (("patient", patient_id), ("study", study_uid), ("query", query)) if v]
    if len(given) != 1:
        raise InvalidInput("a legal hold is on exactly one of: a patient (PatientID), a study (UID), a query")
    why = _reason(reason, "a legal hold")
    kind: HoldKind
    index = archive.index
    if patient_id:
        kind, target, text = "patient", index.pseudonym(TAG_PATIENT_ID, patient_id.strip()), None
    elif study_uid:
        uid = study_uid.strip()
        if not uid or len(uid) > 64 or not all(c.isdigit() or c == "." for c in uid):
            raise InvalidInput("a study UID is at most 64 digits and dots")
        kind, target, text = "study", uid, None
    else:
        assert query is not None
        hold_criteria(query)  # refused now if malformed, never at a later deletion
        kind, target, text = "query", "", query.strip()
    hold = archive.legal_holds.place(
        kind=kind, target=target, query=text, reason=why, by=actor.id, now=datetime.now(UTC)
    )
    covered = sum(1 for ids in archive.legal_holds.held_studies().values() if hold.id in ids)
    _ledger(archive, "legalhold.place", hold, actor, why, covered)
    return hold, covered


def lift_legal_hold(archive: Archive, hold_id: int, *, actor: Actor, reason: str | None) -> LegalHold:
    """Lift a hold in force (the studies it covered may be deleted again, by their rules)."""
    why = _reason(reason, "lifting a legal hold")
    hold = archive.legal_holds.lift(hold_id, reason=why, by=actor.id, now=datetime.now(UTC))
    _ledger(archive, "legalhold.lift", hold, actor, why, 0)
    return hold
