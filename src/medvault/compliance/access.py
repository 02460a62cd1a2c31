"""The patient's right of access (GDPR Art. 15, HIPAA 45 CFR 164.524): one bundle with the
patient's own images, as stored, and the accounting of who saw them.

The bundle is a ZIP written next to its final name and renamed into place when complete (0600,
never overwriting): ``studies/<study>/<series>/<instance>.dcm`` (the original bytes, each
verified on read), ``disclosures.json`` and ``disclosures.csv`` (the same accounting as
``medvault report disclosures``), ``manifest.json`` (every file's size and SHA-256) and a
``README.txt`` for the patient. It holds PHI by design: it is the patient's copy, to hand over
through the hospital's secure channel. Each study handed over is ledgered (``export``, action
``patient.access``) with the request's reference, durably, before the bundle is renamed into place.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from medvault.archive import Archive
from medvault.dicom.matching import parse_criterion
from medvault.errors import InvalidInput, NotFound
from medvault.index.store import TAG_PATIENT_ID, StudyFacts
from medvault.ledger.events import Actor, AuditEvent, EventKind, ObjectRef, Outcome
from medvault.reports import disclosures

__all__ = ["AccessBundle", "request_reference", "write_access_bundle"]

_README = """Your medical images and who accessed them
=========================================

This archive holds, as stored by the hospital:

  studies/      your imaging studies in DICOM format (one file per image), the
                form radiology systems exchange; any DICOM viewer opens them
  disclosures.* every recorded access to these studies: when, by whom (person,
                system or API key), how, and the reason given (JSON and CSV)
  manifest.json the size and SHA-256 of every file in this bundle

Prepared {generated} (UTC) under request reference {reference}.
"""


@dataclass
class AccessBundle:
    path: Path
    studies: int = 0
    instances: int = 0
    bytes: int = 0
    disclosures: int = 0
    files: dict[str, str] = field(default_factory=dict)  # name -> SHA-256


_REFERENCE = re.compile(r"[A-Za-z0-9._:/#-]{1,64}")


def request_reference(text: str) -> str:
    """A request's reference as the ledger may hold it: a ticket or letter number, no spaces, so
    that a name typed by mistake is refused rather than ledgered in clear."""
    value = text.strip()
    if not _REFERENCE.fullmatch(value):
        raise InvalidInput(
            "the request reference must be a ticket or letter number: 1-64 letters, digits or . _ - / : #",
            hint="Never a patient's name: the reference is ledgered in clear.",
        )
    return value


def write_access_bundle(
    archive: Archive,
    patient_id: str,
    out: Path,
    *,
    actor: Actor,
    reference: str,
    now: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> AccessBundle:
    """Write the patient's bundle to ``out`` (which must not exist). ``NotFound`` when the
    archive holds no study of this patient (nothing is written then)."""
    reference = request_reference(reference)
    now = now or datetime.now(UTC)
    if out.exists():
        raise InvalidInput(f"{out} exists; choose a new file name")
    hits = archive.search("study", [parse_criterion(TAG_PATIENT_ID, "LO", patient_id)])
    study_ids = {hit.study_id for hit in hits}
    facts = archive.index.study_facts(study_ids=sorted(study_ids)) if study_ids else {}
    studies = sorted(f.study_uid for f in facts.values())
    if not studies:
        raise NotFound("the archive holds no study of this patient")
    bundle = AccessBundle(path=out)
    temp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_STORED) as zf:

            def add(name: str, data: bytes) -> None:
                zf.writestr(zipfile.ZipInfo(name, date_time=now.timetuple()[:6]), data)
                bundle.files[name] = hashlib.sha256(data).hexdigest()

            for study_uid in studies:
                for record in archive.instances(study_uid):
                    data = archive.read(record)
                    add(f"studies/{record.study_uid}/{record.series_uid}/{record.sop_uid}.dcm", data)
                    bundle.instances += 1
                    bundle.bytes += len(data)
                    if progress is not None:
                        progress(1)
                bundle.studies += 1
            rows = [d.as_dict() for d in disclosures(archive, patient_id)]
            bundle.disclosures = len(rows)
            add("disclosures.json", json.dumps(rows, indent=2, ensure_ascii=False).encode())
            text = io.StringIO()
            columns = [
                "time",
                "actor",
                "actor_kind",
                "address",
                "auth",
                "kind",
                "action",
                "outcome",
                "study_uid",
                "reason",
            ]
            writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
            add("disclosures.csv", text.getvalue().encode())
            generated = now.strftime("%Y-%m-%d %H:%M")
            add("README.txt", _README.format(generated=generated, reference=reference).encode())
            manifest = {"generated_at": now.isoformat(), "reference": reference, "files": dict(bundle.files)}
            add("manifest.json", json.dumps(manifest, indent=2).encode())
            raw.flush()
            os.fsync(raw.fileno())
        _ledger(archive, list(facts.values()), actor=actor, reference=reference, bundle=bundle, now=now)
        os.link(temp, out)  # never over a file that appeared meanwhile
    finally:
        temp.unlink(missing_ok=True)
    return bundle


def _ledger(
    archive: Archive,
    studies: list[StudyFacts],
    *,
    actor: Actor,
    reference: str,
    bundle: AccessBundle,
    now: datetime,
) -> None:
    if archive.audit is None:
        return
    archive.audit.emit_many(
        [
            AuditEvent(
                kind=EventKind.EXPORT,
                time=now,
                actor=actor,
                action="patient.access",
                outcome=Outcome.SUCCESS,
                object=ObjectRef(type="study", id=study.study_uid),
                patient=study.patient,
                reason=f"right of access, request {reference}",
                details={
                    "bundle_manifest_sha256": bundle.files["manifest.json"],
                    "instances": bundle.instances,
                },
            )
            for study in studies
        ]
    )
