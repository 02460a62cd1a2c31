"""De-identified exports from the archive: ``medvault export`` and ``POST /research/exports``.

One export = one query (QIDO-style parameters), one project, one set of PS3.15 options:

1. the studies matching the query (and the caller's ``study_filter``, e.g. the guard's scope) are
   selected with :meth:`Archive.search`;
2. every instance is read (decrypted and verified) and goes through **one**
   :class:`~medvault.dicom.deid.Deidentifier` keyed by :func:`project_key`; instances with burned-in
   text are excluded and reported. Nothing leaves that did not go through the engine
   (:func:`_require_deidentified` checks every output: the policy's ``deidentify`` obligation);
3. the outputs go to a folder (temporary name, fsync, hard link: never a half-written file, never
   an overwrite), to a DICOMweb STOW-RS target, or to a sink given by the caller (the API's ZIP);
4. one ``EXPORT`` ledger event per study (original study UID, patient pseudonym, counts, options),
   durable before this returns;
5. only with ``keep_map``: the re-identification map, encrypted in the index
   (:class:`medvault.index.reid.ReidMapStore`), readable only through :func:`read_reid_map`.

The same project always gives the same new UIDs and pseudonyms (the key derives from the
keyring's ``pseudonym_key`` and the project name); another project gives others.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import json
import os
import re
import secrets
import ssl
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import IO, Final, Literal, Protocol

import httpx
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filewriter import dcmwrite

from medvault.archive import Archive
from medvault.audit import SYSTEM
from medvault.crypto.fields import FieldCipher
from medvault.dicom import multipart as mp
from medvault.dicom.deid import DeidConfig, Deidentifier, PixelMaskRule, ReidentificationMap
from medvault.dicom.query import parse_query
from medvault.errors import ConfigError, IntegrityError, InvalidInput, MedvaultError, StorageError, TooLarge
from medvault.home import OpenHome
from medvault.index.reid import ReidMapStore, map_to_json
from medvault.index.store import InstanceRecord, StudyFacts
from medvault.ledger.events import Actor, AuditEvent, EventKind, ObjectRef, Outcome

__all__ = [
    "DEFAULT_MAX_EXPORT_BYTES",
    "DirectorySink",
    "ExportProgress",
    "ExportSink",
    "ExportSource",
    "ExportSummary",
    "InstanceOutcome",
    "StowSink",
    "StudyExport",
    "ZipSink",
    "check_project",
    "export_studies",
    "project_key",
    "read_reid_map",
    "reid_map_json",
]

DEFAULT_MAX_EXPORT_BYTES: Final = 2 * 1024**3
STOW_BATCH_BYTES: Final = 32 * 1024**2
_PROJECT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_KEY_LABEL: Final = b"deid-project:"

Status = Literal["exported", "duplicate", "collision", "excluded", "failed"]


# -- keys and sources -------------------------------------------------------------------------------


def check_project(project: str) -> str:
    """A project name: 1-64 of letters, digits, ``.``, ``_``, ``-`` (it names a key and a ledger
    detail, so it must never be a patient value)."""
    if not isinstance(project, str) or not _PROJECT_RE.match(project):
        raise InvalidInput(
            "a project name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return project


@dataclass(frozen=True)
class ExportSource:
    """What an export needs from an opened home: the archive, the key the project keys derive
    from, and where kept maps go. The API holds one in ``app.state.export_source``."""

    archive: Archive
    pseudonym_key: bytes = field(repr=False)
    reid: ReidMapStore = field(repr=False)

    @classmethod
    def of(cls, opened: OpenHome) -> ExportSource:
        keyring = opened.keyring_file.keyring
        return cls(
            archive=opened.archive,
            pseudonym_key=keyring.pseudonym_key,
            reid=ReidMapStore(opened.archive.index.engine, cipher=FieldCipher(keyring.index_key)),
        )


def _source(opened: OpenHome | ExportSource) -> ExportSource:
    return opened if isinstance(opened, ExportSource) else ExportSource.of(opened)


def project_key(opened: OpenHome | ExportSource, project: str) -> bytes:
    """``HMAC-SHA256(keyring.pseudonym_key, "deid-project:" + project)``: 32 bytes, the same for
    every export of a project (same new UIDs, pseudonyms, date offsets), different across projects."""
    check_project(project)
    key = (
        opened.pseudonym_key
        if isinstance(opened, ExportSource)
        else opened.keyring_file.keyring.pseudonym_key
    )
    return hmac.new(key, _KEY_LABEL + project.encode("utf-8"), sha256).digest()


# -- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceOutcome:
    """One instance. ``sop_uid`` is the original (for the operator; never sent to a researcher);
    ``reason`` is generic text, never a patient value."""

    sop_uid: str
    status: Status
    new_sop_uid: str | None = None
    location: str | None = None
    reason: str | None = None


@dataclass
class StudyExport:
    study_uid: str  # the original study UID (ledger object)
    patient: str | None  # the archive's keyed patient pseudonym (ledger), never PHI
    new_study_uid: str | None = None
    outcomes: list[InstanceOutcome] = field(default_factory=list)

    def count(self, *statuses: Status) -> int:
        return sum(1 for o in self.outcomes if o.status in statuses)


@dataclass
class ExportSummary:
    export_id: str
    project: str
    destination: str  # "dir", "stow" or the sink's name ("zip")
    options: tuple[str, ...]
    studies: list[StudyExport] = field(default_factory=list)
    reid_map_kept: bool = False

    def count(self, *statuses: Status) -> int:
        return sum(s.count(*statuses) for s in self.studies)

    @property
    def instances(self) -> int:
        return sum(len(s.outcomes) for s in self.studies)

    @property
    def exported(self) -> int:
        """Delivered, including outputs already present with identical bytes (re-runs)."""
        return self.count("exported", "duplicate")

    @property
    def excluded(self) -> int:
        return self.count("excluded")

    @property
    def failed(self) -> int:
        return self.count("failed", "collision")


@dataclass(frozen=True)
class ExportProgress:
    done: int
    total: int
    outcome: InstanceOutcome


# -- sinks -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    """One de-identified instance ready to deliver (Part 10 bytes)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    data: bytes


@dataclass(frozen=True)
class Placed:
    status: Status
    location: str | None = None
    reason: str | None = None


class ExportSink(Protocol):
    """Where outputs go. ``put`` may deliver at once or buffer; ``end_study`` delivers what is
    buffered and returns one :class:`Placed` per output put since the last call, in order.
    ``deferred`` sinks deliver only at ``close`` (their ledger events are written then)."""

    name: str
    deferred: bool

    def put(self, output: Output) -> None: ...

    def end_study(self) -> list[Placed]: ...

    def close(self) -> None: ...


class DirectorySink:
    """``DIR/<new study UID>/<new SOP instance UID>.dcm``, atomic and never overwriting."""

    name = "dir"
    deferred = False

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._placed: list[Placed] = []
        self._folders: set[Path] = set()

    def put(self, output: Output) -> None:
        folder = self.root / output.study_uid
        folder.mkdir(exist_ok=True, mode=0o700)
        self._folders.add(folder)
        final = folder / f"{output.sop_uid}.dcm"
        fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=".partial", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(output.data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, final)  # fails if the name exists: never an overwrite
            except FileExistsError:
                if final.read_bytes() == output.data:
                    self._placed.append(Placed("duplicate", str(final), "identical file already present"))
                else:
                    self._placed.append(
                        Placed("collision", str(final), "a different file of that name exists; kept")
                    )
                return
        finally:
            os.unlink(tmp)
        self._placed.append(Placed("exported", str(final)))

    def end_study(self) -> list[Placed]:
        """The study's names are durable (its folders and the root fsynced) before the ledger
        records the export."""
        placed, self._placed = self._placed, []
        folders, self._folders = self._folders, set()
        for folder in [*sorted(folders), self.root]:
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return placed

    def close(self) -> None:
        return None


class StowSink:
    """STOW-RS to another DICOMweb archive (``POST {url}/studies``, multipart/related), in
    batches of about :data:`STOW_BATCH_BYTES`, with a bearer token and the target's CA."""

    name = "stow"
    deferred = False

    def __init__(
        self, url: str, *, token: str | None = None, ca: Path | None = None, timeout: float = 300
    ) -> None:
        if not url.startswith("https://"):
            raise InvalidInput(
                "the STOW target must be an https:// DICOMweb URL (e.g. https://pacs/dicomweb)"
            )
        self.url = url.rstrip("/") + "/studies"
        verify: ssl.SSLContext | bool = True
        if ca is not None:
            if not ca.is_file():
                raise ConfigError(f"the CA file {ca} does not exist")
            verify = ssl.create_default_context(cafile=str(ca))
        headers = {"Accept": "application/dicom+json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(verify=verify, headers=headers, timeout=timeout)
        self._batch: list[Output] = []
        self._batch_bytes = 0
        self._placed: list[Placed] = []

    def put(self, output: Output) -> None:
        if self._batch and self._batch_bytes + len(output.data) > STOW_BATCH_BYTES:
            self._send()
        self._batch.append(output)
        self._batch_bytes += len(output.data)

    def _send(self) -> None:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        if not batch:
            return
        boundary = mp.new_boundary()
        body = mp.encode_multipart(boundary, [("application/dicom", o.data) for o in batch])
        content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
        try:
            response = self._client.post(self.url, content=body, headers={"Content-Type": content_type})
        except httpx.HTTPError as exc:
            why = f"STOW target unreachable: {exc.__class__.__name__}"
            self._placed.extend(Placed("failed", reason=why) for _ in batch)
            return
        failed: set[str] = set()
        if response.status_code == 202:
            failed = _stow_failed_uids(response)
        elif response.status_code != 200:
            why = f"STOW target answered HTTP {response.status_code}"
            self._placed.extend(Placed("failed", reason=why) for _ in batch)
            return
        for o in batch:
            if o.sop_uid in failed:
                self._placed.append(Placed("failed", reason="refused by the STOW target"))
            else:
                self._placed.append(Placed("exported", f"{self.url}/{o.study_uid}"))

    def end_study(self) -> list[Placed]:
        self._send()
        placed, self._placed = self._placed, []
        return placed

    def close(self) -> None:
        self._client.close()


def _stow_failed_uids(response: httpx.Response) -> set[str]:
    try:
        payload = response.json()
        items = payload.get("00081198", {}).get("Value", [])
        return {str(item["00081155"]["Value"][0]) for item in items if "00081155" in item}
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        return set()


class ZipSink:
    """A ZIP of ``<new study UID>/<new SOP UID>.dcm`` in a spooled temporary file (memory up to
    ``spool`` bytes, then disk), refusing more than ``max_bytes`` of DICOM with :class:`TooLarge`."""

    name = "zip"
    deferred = True

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_EXPORT_BYTES, spool: int = 32 * 1024**2) -> None:
        self.max_bytes = max_bytes
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=spool)
        self._zip = zipfile.ZipFile(self.file, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._written = 0
        self._placed: list[Placed] = []
        self.size = 0

    def put(self, output: Output) -> None:
        self._written += len(output.data)
        if self._written > self.max_bytes:
            raise TooLarge(
                f"the export exceeds the limit of {self.max_bytes} bytes",
                hint="Narrow the query (fewer studies) and export in parts.",
            )
        name = f"{output.study_uid}/{output.sop_uid}.dcm"
        if name in self._zip.NameToInfo:
            self._placed.append(Placed("duplicate", name, "identical instance already in the archive file"))
            return
        info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # no clock in the output
        info.external_attr = 0o600 << 16
        self._zip.writestr(info, output.data)
        self._placed.append(Placed("exported", name))

    def end_study(self) -> list[Placed]:
        placed, self._placed = self._placed, []
        return placed

    def close(self) -> None:
        self._zip.close()
        self.size = self.file.tell()
        self.file.seek(0)

    def discard(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self._zip.close()  # idempotent; an unfinished archive is dropped with its file
        self.file.close()


# -- the export ------------------------------------------------------------------------------------


def _require_deidentified(ds: Dataset) -> None:
    """The ``deidentify`` obligation, checked on every output: only data marked by the engine
    leaves. A failure here is a bug, never a data problem: the export stops."""
    if (
        str(ds.get("PatientIdentityRemoved", "")).upper() != "YES"
        or "DeidentificationMethodCodeSequence" not in ds
    ):
        raise IntegrityError("an output did not go through the de-identification engine; export stopped")


# PatientIdentityRemoved = YES as the fast path writes it (explicit VR little endian)
_IDENTITY_REMOVED_YES = b"\x12\x00\x62\x00CS\x04\x00YES "


def _require_deidentified_bytes(data: bytes) -> None:
    """The same obligation for the fast path's encoded output (no parse on the hot path)."""
    if _IDENTITY_REMOVED_YES not in data:
        raise IntegrityError("an output did not go through the de-identification engine; export stopped")


def _read_dataset(data: bytes) -> Dataset:
    try:
        return dcmread(io.BytesIO(data))  # stored instances were parsed strictly at ingest
    except (InvalidDicomError, ValueError, EOFError, OSError) as exc:
        raise InvalidInput(f"stored instance is not readable DICOM: {exc.__class__.__name__}") from None


def _encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _process(
    archive: Archive, engine: Deidentifier, record: InstanceRecord
) -> tuple[Output | None, InstanceOutcome, ReidentificationMap | None]:
    try:
        stored = archive.read(record)
    except MedvaultError as exc:
        return None, InstanceOutcome(record.sop_uid, "failed", reason=exc.message[:300]), None
    try:
        fast = engine.deidentify_bytes(stored)  # the common case, without pydicom
    except Exception:  # the pydicom path below decides and reports: one instance never stops an export
        fast = None
    if fast is not None:
        _require_deidentified_bytes(fast.data)
        output = Output(
            fast.study_instance_uid or "unknown", fast.series_instance_uid, fast.sop_instance_uid, fast.data
        )
        outcome = InstanceOutcome(record.sop_uid, "exported", new_sop_uid=fast.sop_instance_uid)
        return output, outcome, fast.mapping
    try:
        source = _read_dataset(stored)
        result = engine.deidentify(source)
    except MedvaultError as exc:
        return None, InstanceOutcome(record.sop_uid, "failed", reason=exc.message[:300]), None
    except Exception as exc:  # one bad instance must not stop an export
        why = f"de-identification failed: {exc.__class__.__name__}"
        return None, InstanceOutcome(record.sop_uid, "failed", reason=why), None
    if result.dataset is None:
        return None, InstanceOutcome(record.sop_uid, "excluded", reason=result.excluded), result.mapping
    out = result.dataset
    _require_deidentified(out)
    try:
        data = _encode(out)
    except Exception as exc:
        why = f"cannot encode the output: {exc.__class__.__name__}"
        return None, InstanceOutcome(record.sop_uid, "failed", reason=why), result.mapping
    new_sop = str(out.SOPInstanceUID)
    output = Output(
        str(out.get("StudyInstanceUID", "") or "unknown"),
        str(out.get("SeriesInstanceUID", "")),
        new_sop,
        data,
    )
    return output, InstanceOutcome(record.sop_uid, "exported", new_sop_uid=new_sop), result.mapping


def _study_event(
    study: StudyExport, summary: ExportSummary, actor: Actor, *, target: str | None
) -> AuditEvent:
    exported = study.count("exported", "duplicate")
    failed = study.count("failed", "collision")
    details: dict[str, str | int | bool] = {
        "project": summary.project,
        "export_id": summary.export_id,
        "destination": summary.destination,
        "instances": len(study.outcomes),
        "exported": exported,
        "excluded": study.count("excluded"),
        "failed": failed,
        "options": ",".join(summary.options) if summary.options else "basic-profile",
        "reid_map_kept": summary.reid_map_kept,
    }
    if target:
        details["target"] = target[:500]
    return AuditEvent(
        kind=EventKind.EXPORT,
        time=datetime.now(UTC),
        actor=actor,
        action="deid.export",
        outcome=Outcome.FAILURE if failed and not exported else Outcome.SUCCESS,
        object=ObjectRef(type="study", id=study.study_uid),
        patient=study.patient,
        details=details,
    )


def export_studies(
    opened: OpenHome | ExportSource,
    *,
    query_params: Sequence[tuple[str, str]],
    project: str,
    options: Sequence[str] = (),
    to_dir: Path | None = None,
    to_stow: str | None = None,
    stow_token: str | None = None,
    stow_ca: Path | None = None,
    sink: ExportSink | None = None,
    actor: Actor = SYSTEM,
    keep_map: bool = False,
    study_filter: Callable[[StudyFacts], bool] | None = None,
    progress: Callable[[ExportProgress], None] | None = None,
    pixel_masks: Sequence[PixelMaskRule] = (),
    max_bytes: int | None = None,
) -> ExportSummary:
    """Export the studies matching ``query_params`` through the de-identification engine.

    Exactly one destination: ``to_dir``, ``to_stow`` (a DICOMweb base URL; ``stow_token`` and
    ``stow_ca`` authenticate the target) or ``sink``. ``study_filter(facts)`` restricts the
    studies (the API passes the guard's per-study decision). ``max_bytes`` refuses, before any
    work, a selection whose stored size exceeds it (:class:`TooLarge`). Raises ``InvalidInput``
    for a bad query, project or option. The ledger events are durable when this returns.
    """
    src = _source(opened)
    archive = src.archive
    check_project(project)
    chosen = [d for d in (to_dir, to_stow, sink) if d is not None]
    if len(chosen) != 1:
        raise InvalidInput("give exactly one destination: a folder (--to) or a STOW-RS URL (--to-stow)")
    names = tuple(o.strip() for o in options if o.strip())
    config = DeidConfig.from_options(names, pixel_masks=pixel_masks, record_mapping=keep_map)
    query = parse_query(list(query_params))

    hits = archive.search(
        "study", query.criteria, offset=query.offset, limit=query.limit, visible=study_filter
    )
    facts = archive.index.study_facts(study_ids=[h.study_id for h in hits]) if hits else {}
    selected: list[tuple[StudyFacts, list[InstanceRecord]]] = []
    for hit in hits:
        fact = facts.get(hit.study_id)
        if fact is None:  # deleted meanwhile
            continue
        records = archive.index.find_instances(fact.study_uid, None, None)
        if records:
            selected.append((fact, records))
    total = sum(len(r) for _, r in selected)
    if max_bytes is not None:
        size = sum(rec.size for _, records in selected for rec in records)
        if size > max_bytes:
            raise TooLarge(
                f"the selected studies hold {size} bytes, over the export limit of {max_bytes} bytes",
                hint="Narrow the query (fewer studies) and export in parts.",
            )

    target = sink
    if target is None:
        target = (
            DirectorySink(to_dir)
            if to_dir is not None
            else StowSink(str(to_stow), token=stow_token, ca=stow_ca)
        )
    summary = ExportSummary(
        export_id=secrets.token_hex(8),
        project=project,
        destination=target.name,
        options=names,
        reid_map_kept=keep_map,
    )
    stow_url = to_stow if sink is None and to_dir is None else None
    engine = Deidentifier(
        config=replace(config, record_mapping=keep_map), project_key=project_key(src, project)
    )
    mapping = ReidentificationMap()
    pending: list[AuditEvent] = []
    done = 0
    try:
        for fact, records in selected:
            study = StudyExport(study_uid=fact.study_uid, patient=fact.patient)
            produced: list[tuple[bool, InstanceOutcome]] = []
            for record in records:
                output, outcome, part = _process(archive, engine, record)
                if part is not None:
                    mapping.merge(part)
                if output is not None:
                    target.put(output)
                    study.new_study_uid = study.new_study_uid or output.study_uid
                produced.append((output is not None, outcome))
            placed = iter(target.end_study())
            for delivered, outcome in produced:
                final = outcome
                if delivered:
                    where = next(placed)
                    final = replace(
                        outcome, status=where.status, location=where.location, reason=where.reason
                    )
                study.outcomes.append(final)
                done += 1
                if progress is not None:
                    progress(ExportProgress(done, total, final))
            summary.studies.append(study)
            event = _study_event(study, summary, actor, target=stow_url)
            if target.deferred:
                pending.append(event)
            elif archive.audit is not None:
                archive.audit.emit(event)  # EXPORT is a change: durable before we go on
        target.close()
    finally:
        if isinstance(target, StowSink):
            target.close()
    if keep_map and mapping.uids:
        src.reid.save(project, mapping, export_id=summary.export_id, actor=actor.id, now=datetime.now(UTC))
    elif keep_map:
        summary.reid_map_kept = False
        pending = [replace(e, details={**e.details, "reid_map_kept": False}) for e in pending]
    if archive.audit is not None:
        if keep_map and summary.reid_map_kept:
            pending.append(
                AuditEvent(
                    kind=EventKind.DEIDENTIFY,
                    time=datetime.now(UTC),
                    actor=actor,
                    action="deid.reid-map.store",
                    outcome=Outcome.SUCCESS,
                    object=ObjectRef(type="reid-map", id=summary.export_id),
                    details={"project": project, "studies": len(summary.studies), "uids": len(mapping.uids)},
                )
            )
        if pending:
            archive.audit.emit_many(pending)
    return summary


def read_reid_map(
    opened: OpenHome | ExportSource, project: str, *, actor: Actor, export_id: str | None = None
) -> ReidentificationMap:
    """The kept re-identification map of a project (all its exports merged, or one). Needs the
    opened home (the keyring passphrase): no route serves it. The read is ledgered, durably,
    before the map is returned (also when none is kept: a failed attempt is recorded too)."""
    src = _source(opened)
    check_project(project)
    try:
        mapping = src.reid.load(project, export_id=export_id)
    except MedvaultError as exc:
        _map_event(src, project, actor, Outcome.FAILURE, reason=exc.message[:300], export_id=export_id)
        raise
    _map_event(src, project, actor, Outcome.SUCCESS, export_id=export_id, uids=len(mapping.uids))
    return mapping


def _map_event(
    src: ExportSource,
    project: str,
    actor: Actor,
    outcome: Outcome,
    *,
    reason: str | None = None,
    export_id: str | None = None,
    uids: int | None = None,
) -> None:
    if src.archive.audit is None:
        raise StorageError("reading a re-identification map needs the ledger; open the home")
    details: dict[str, str | int] = {"project": project}
    if uids is not None:
        details["uids"] = uids
    src.archive.audit.emit(
        AuditEvent(
            kind=EventKind.DEIDENTIFY,
            time=datetime.now(UTC),
            actor=actor,
            action="deid.reid-map.read",
            outcome=outcome,
            object=ObjectRef(type="reid-map", id=export_id or project),
            reason=reason,
            details=details,
        )
    )


def reid_map_json(mapping: ReidentificationMap) -> str:
    """The map as JSON text (for ``medvault deid map``): PHI, for the operator's eyes only."""
    return json.dumps(map_to_json(mapping), indent=2, ensure_ascii=False)
