"""Audit reports over the ledger: the object integrity sweep of `ledger verify` and the
accounting of disclosures (HIPAA 45 CFR 164.528) for one patient."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from medvault.archive import Archive
from medvault.errors import ConfigError, MedvaultError
from medvault.index.store import TAG_PATIENT_ID

_CHUNK = 2048
DISCLOSURE_KINDS = frozenset({"query", "retrieve", "break_glass", "export", "deidentify", "delete", "store"})


def ledger_events(archive: Archive, *, containing: bytes = b"") -> Iterator[tuple[int, dict[str, Any]]]:
    """Every ledger event, decoded; with ``containing``, only those whose bytes contain it (a
    cheap test before the JSON is parsed: a patient's events name their pseudonym)."""
    if archive.audit is None:
        raise ConfigError("this archive keeps no ledger")
    ledger = archive.audit.ledger
    ledger.flush()
    size = ledger.size
    for start in range(0, size, _CHUNK):
        for offset, data in enumerate(ledger.entries(start, min(start + _CHUNK, size))):
            if containing in data:
                yield start + offset, json.loads(data)


def verify_objects(archive: Archive, progress: Callable[[int], None] | None = None) -> list[str]:
    """Check every stored object against the SHA-256 recorded in the ledger when it was stored:
    a tampered or replaced image, or one stored without a ledger event, is named (by UID)."""
    expected: dict[str, str] = {}
    for _, event in ledger_events(archive):
        obj = event.get("object") or {}
        if obj.get("type") != "instance" or event.get("outcome") != "success":
            continue
        if event["kind"] == "store":
            expected[obj["id"]] = event.get("details", {}).get("sha256", "")
        elif event["kind"] == "delete":
            expected.pop(obj["id"], None)
    problems = []
    for record in archive.index.iter_instances():
        recorded = expected.get(record.sop_uid)
        if recorded is None:
            problems.append(f"instance {record.sop_uid} is stored but has no store event in the ledger")
        elif recorded != record.sha256.hex():
            problems.append(f"instance {record.sop_uid}: the index hash differs from its store event")
        else:
            try:
                data = archive.read(record)
            except MedvaultError:
                problems.append(f"instance {record.sop_uid}: the stored object fails its integrity check")
            else:
                if hashlib.sha256(data).hexdigest() != recorded:
                    problems.append(
                        f"instance {record.sop_uid}: the stored object differs from its store event"
                    )
        if progress is not None:
            progress(1)
    return problems


@dataclass(frozen=True)
class Disclosure:
    index: int
    time: str
    kind: str
    actor: str
    actor_kind: str
    address: str | None
    auth: str | None
    action: str
    outcome: str
    study_uid: str | None
    reason: str | None

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def disclosures(archive: Archive, patient_id: str, *, since: datetime | None = None) -> list[Disclosure]:
    """Who accessed which of this patient's studies, when, how and why — from the ledger, where the
    patient appears only under the keyed pseudonym that the index also uses."""
    pseudonym = archive.index.pseudonym(TAG_PATIENT_ID, patient_id)
    out: list[Disclosure] = []
    for index, event in ledger_events(archive, containing=pseudonym.encode()):
        if event.get("patient") != pseudonym or event.get("kind") not in DISCLOSURE_KINDS:
            continue
        if since is not None and event["time"] < since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"):
            continue
        obj = event.get("object") or {}
        study = obj.get("id") if obj.get("type") == "study" else event.get("details", {}).get("study_uid")
        actor = event["actor"]
        out.append(
            Disclosure(
                index=index,
                time=event["time"],
                kind=event["kind"],
                actor=actor["id"],
                actor_kind=actor["kind"],
                address=actor.get("address"),
                auth=actor.get("auth"),
                action=event["action"],
                outcome=event["outcome"],
                study_uid=study,
                reason=event.get("reason"),
            )
        )
    return out
