"""The one service layer: store, find, retrieve, delete, rotate keys.

Every protocol (DICOMweb, the CLI, later DIMSE) calls this class; encryption and integrity are
decided here once. The flow of a store is parse -> hash -> encrypt with a fresh data key -> put
the ciphertext -> index (with the wrapped data key). A read is index lookup -> fetch -> unwrap ->
decrypt (GCM verifies each segment) -> SHA-256 check against the hash recorded at ingest.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from medvault.audit import SYSTEM, LedgerAudit, OutboxPublisher, outbox_for
from medvault.crypto.envelope import decrypt_object_into, decrypt_range, encrypt_object_chunks
from medvault.crypto.kek import KekProvider, new_data_key
from medvault.dicom.dicomjson import level_attributes
from medvault.dicom.matching import Criterion
from medvault.dicom.parse import ParsedInstance, parse_instance
from medvault.dicom.sameness import same_instance
from medvault.errors import (
    CommandMismatch,
    Conflict,
    Forbidden,
    IntegrityError,
    MedvaultError,
    NotFound,
    StudyMismatch,
    TooLarge,
)
from medvault.index.legal_holds import LegalHoldActive, LegalHoldStore
from medvault.index.outbox import Outbox
from medvault.index.store import Hit, Index, InstanceRecord, Level, NewInstance, StudyFacts
from medvault.ledger.events import Actor, AuditEvent, EventKind, ObjectRef, Outcome
from medvault.storage.base import BlobStore

Json = dict[str, Any]
#: The writer's policy check: may this subject store into the study these facts describe?
StoreCheck = Callable[[StudyFacts], bool]
StoreStatus = Literal["stored", "already_present", "failed"]

DEFAULT_MAX_INSTANCE_BYTES = 1024**3


# Objects encrypted and written (and fsynced) at once per process: the fsyncs wait on the disk,
# not the CPU, and concurrent ones share journal commits (STOW median 393 -> 481 inst/s with 8
# instead of 2 on the 2-core bench machine).
_WRITERS = 8
_READERS = 8  # objects fetched at once by read_many_into


@dataclass(frozen=True)
class StoreOutcome:
    """What happened to one submitted instance; ``error`` is set when ``status == "failed"``."""

    status: StoreStatus
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    error: MedvaultError | None = None


@dataclass(frozen=True)
class KeyStatus:
    current_kek: str
    known_keks: list[str]
    objects_per_kek: dict[str, int] = field(default_factory=dict)


@dataclass
class _Prepared:
    parsed: ParsedInstance
    entry: NewInstance
    data_key: bytes = field(repr=False, default=b"")


def _conflict_with_stored(uid: str) -> Conflict:
    return Conflict(
        f"SOP instance {uid} is already stored with different content; it was not overwritten",
        hint="Give changed content a new SOPInstanceUID, or delete the stored instance first.",
    )


def _int_or_none(element: Json | None) -> int | None:
    if not element or not element.get("Value"):
        return None
    try:
        return int(element["Value"][0])
    except (TypeError, ValueError):
        return None


def _year_of(study_date: str | None) -> int | None:
    """The year of a StudyDate, if it starts with four ASCII digits (a value decoded from another
    character set may hold digits int() would read, or refuse)."""
    head = (study_date or "")[:4]
    return int(head) if len(head) == 4 and head.isascii() and head.isdigit() else None


def _text_or_none(element: Json | None) -> str | None:
    if not element or not element.get("Value"):
        return None
    value = element["Value"][0]
    return value if isinstance(value, str) else None


class Archive:
    def __init__(
        self,
        *,
        index: Index,
        blobs: BlobStore,
        keks: KekProvider,
        max_instance_bytes: int = DEFAULT_MAX_INSTANCE_BYTES,
        refresh_keys: Callable[[], None] | None = None,
        audit: LedgerAudit | None = None,
    ) -> None:
        """``refresh_keys`` is called before each write batch so that a KEK rotated by another
        process (``medvault keys rotate``) wraps new data keys at once; it must be cheap."""
        self.index = index
        self.blobs = blobs
        self.keks = keks
        self.max_instance_bytes = max_instance_bytes
        self._rotation_lock = threading.Lock()
        self._refresh_keys = refresh_keys
        self.audit = audit
        self._publisher = None if audit is None else OutboxPublisher(audit.ledger, index)
        self.legal_holds = LegalHoldStore(index)
        self._writer = ThreadPoolExecutor(max_workers=_WRITERS, thread_name_prefix="medvault-writer")
        self._reader = ThreadPoolExecutor(max_workers=_READERS, thread_name_prefix="medvault-reader")

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)
        self.index.close()

    # -- store -----------------------------------------------------------------------------------

    def store(self, data: bytes, *, study_uid: str | None = None) -> StoreOutcome:
        return self.store_batch([data], study_uid=study_uid)[0]

    def store_batch(
        self,
        items: Sequence[bytes],
        *,
        study_uid: str | None = None,
        actor: Actor | None = None,
        may_store: StoreCheck | None = None,
    ) -> list[StoreOutcome]:
        """Store instances; each gets its own outcome (see :class:`StoreSession`)."""
        session = self.begin_store(study_uid=study_uid, actor=actor, may_store=may_store)
        try:
            for data in items:
                session.add(data)
        except BaseException:
            session.abort()
            raise
        return session.finish()

    def begin_store(
        self,
        *,
        study_uid: str | None = None,
        actor: Actor | None = None,
        may_store: StoreCheck | None = None,
    ) -> StoreSession:
        """The one write pipeline (STOW-RS, C-STORE, import): instances are added one at a time as
        they arrive, and the session encrypts, writes and indexes them in groups.

        ``may_store`` is the writer's policy check (:func:`medvault.guard.store_check`): it sees the
        target study's facts (the stored study's, or those the instance would create) and says
        whether this subject may write there. ``None`` is for callers that hold the home's
        passphrase (``medvault import``), who may write anything.
        """
        if self._refresh_keys is not None:
            self._refresh_keys()
        return StoreSession(self, study_uid=study_uid, actor=actor, may_store=may_store)

    def _store_event(
        self, outcome: StoreOutcome, entry: NewInstance | None, actor: Actor | None
    ) -> AuditEvent:
        """The ledger event of one store: the SHA-256 of the stored bytes, or why it was refused."""
        details: dict[str, str | int] = {}
        patient = None
        if entry is not None and outcome.status == "stored":
            details = {
                "sha256": entry.sha256.hex(),
                "size": entry.size,
                "study_uid": entry.study_uid,
                "series_uid": entry.series_uid,
            }
            patient_id = _text_or_none(entry.metadata.get("00100020"))
            patient = self.index.pseudonym("00100020", patient_id) if patient_id else None
        failure = outcome.error
        if failure is not None:
            details["failure_reason"] = failure.failure_reason
        return AuditEvent(
            kind=EventKind.STORE,
            time=datetime.now(UTC),
            actor=actor or SYSTEM,
            action="study.store",
            outcome=Outcome.SUCCESS if outcome.status == "stored" else Outcome.FAILURE,
            object=ObjectRef(type="instance", id=outcome.sop_instance_uid)
            if outcome.sop_instance_uid
            else None,
            patient=patient,
            reason=failure.message[:500] if failure is not None else None,
            details=details,
        )

    def _parse(self, data: bytes) -> ParsedInstance:
        if len(data) > self.max_instance_bytes:
            raise TooLarge(
                f"instance of {len(data)} bytes exceeds the limit of {self.max_instance_bytes} bytes",
                hint="Raise server.max_instance_bytes in medvault.toml if such objects are expected.",
            )
        return parse_instance(data)

    @staticmethod
    def _stored(parsed: ParsedInstance, status: StoreStatus = "stored") -> StoreOutcome:
        return StoreOutcome(
            status,
            sop_class_uid=parsed.sop_class_uid,
            sop_instance_uid=parsed.sop_instance_uid,
            study_uid=parsed.study_instance_uid,
            series_uid=parsed.series_instance_uid,
        )

    def _index_one(self, p: _Prepared, event: AuditEvent) -> StoreOutcome:
        outbox = self._outbox([event])
        try:
            self.index.add_instances([p.entry], outbox=outbox)
        except (Conflict, StudyMismatch) as exc:
            self.blobs.delete(p.entry.blob_key)
            uid = p.parsed.sop_instance_uid
            known = self.index.stored_instances([uid]).get(uid)
            if known is not None and known == (p.entry.sha256, p.entry.study_uid):
                return self._stored(p.parsed, "already_present")
            return self._failed(p.parsed, exc)
        self._publish(outbox)
        return self._stored(p.parsed)

    def _same_as_stored(self, parsed: ParsedInstance, data: bytes) -> bool:
        """Do these bytes hold the stored instance in another envelope (new file meta, another
        transfer syntax), as a modality's retry or a re-send of an imported file does?"""
        records = self.index.find_instances(
            parsed.study_instance_uid, parsed.series_instance_uid, parsed.sop_instance_uid
        )
        return bool(records) and same_instance(self.read(records[0]), data)

    def _outbox(self, events: Sequence[AuditEvent]) -> Outbox | None:
        """The ledger events of an index change, to be written with it (medvault.index.outbox)."""
        if self.audit is None or not events:
            return None
        return outbox_for(self.audit.ledger, events)

    def _publish(self, outbox: Outbox | None) -> None:
        if self._publisher is not None:  # the rows go with the next store's transaction
            self._publisher.publish(outbox)

    def _failed(self, parsed: ParsedInstance, exc: MedvaultError) -> StoreOutcome:
        return StoreOutcome(
            "failed",
            sop_class_uid=parsed.sop_class_uid,
            sop_instance_uid=parsed.sop_instance_uid,
            study_uid=parsed.study_instance_uid,
            series_uid=parsed.series_instance_uid,
            error=exc,
        )

    def _encrypt_and_put(self, data: bytes, prepared: _Prepared) -> None:
        context = prepared.entry.blob_key.encode()
        chunks = encrypt_object_chunks(data, prepared.data_key, object_id=context)
        prepared.data_key = b""
        self.blobs.put_chunks(prepared.entry.blob_key, chunks)

    def _prepare(self, data: bytes, parsed: ParsedInstance, digest: bytes) -> _Prepared:
        """A fresh data key, its wrapped form and the index entry (the object is written apart)."""
        blob_key = secrets.token_hex(16)
        data_key = new_data_key()
        wrapped = self.keks.wrap(data_key, context=blob_key.encode())
        meta = parsed.metadata
        study_date = _text_or_none(meta.get("00080020"))
        entry = NewInstance(
            study_uid=parsed.study_instance_uid,
            series_uid=parsed.series_instance_uid,
            sop_uid=parsed.sop_instance_uid,
            sop_class_uid=parsed.sop_class_uid,
            transfer_syntax=parsed.transfer_syntax_uid,
            instance_number=_int_or_none(meta.get("00200013")),
            modality=_text_or_none(meta.get("00080060")),
            series_number=_int_or_none(meta.get("00200011")),
            study_year=_year_of(study_date),
            number_of_frames=parsed.number_of_frames,
            frames=[list(f.fragments) for f in parsed.frames],
            blob_key=blob_key,
            size=len(data),
            sha256=digest,
            study_doc=level_attributes(meta, "study"),
            series_doc=level_attributes(meta, "series"),
            instance_doc=level_attributes(meta, "instance"),
            metadata=meta,
            wrapped_key=wrapped,
            department=_text_or_none(meta.get("00081040")),
        )
        return _Prepared(parsed=parsed, entry=entry, data_key=data_key)

    # -- find ------------------------------------------------------------------------------------

    def search(
        self,
        level: Level,
        criteria: Sequence[Criterion],
        *,
        study_uid: str | None = None,
        series_uid: str | None = None,
        offset: int = 0,
        limit: int | None = None,
        visible: Callable[[StudyFacts], bool] | None = None,
    ) -> list[Hit]:
        return self.index.search(
            level,
            criteria,
            study_uid=study_uid,
            series_uid=series_uid,
            offset=offset,
            limit=limit,
            visible=visible,
        )

    def instances(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[InstanceRecord]:
        """The instances under the given UIDs; ``NotFound`` when there are none."""
        records = self.index.find_instances(study_uid, series_uid, sop_uid)
        if not records:
            what = "instance" if sop_uid else "series" if series_uid else "study"
            raise NotFound(f"no such {what}")
        return records

    def metadata(self, records: Sequence[InstanceRecord]) -> list[Json]:
        return self.index.instance_metadata(records)

    # -- retrieve --------------------------------------------------------------------------------

    def _data_key(self, record: InstanceRecord) -> bytes:
        return self.keks.unwrap(record.wrapped_key, context=record.blob_key.encode())

    def read(self, record: InstanceRecord) -> bytes:
        """The original bytes of an instance, verified; ``IntegrityError`` if anything is off."""
        out = bytearray(record.size)
        self.read_into(record, memoryview(out))
        return bytes(out)

    def read_into(self, record: InstanceRecord, out: memoryview) -> None:
        """Decrypt and verify an instance into ``out`` (exactly ``record.size`` bytes long), so that
        a response can be assembled without copying each instance again. On ``IntegrityError``
        ``out`` holds bytes that must not be served."""
        self._decrypt_into(record, self.blobs.get(record.blob_key), out)

    def read_many_into(self, items: Sequence[tuple[InstanceRecord, memoryview]]) -> None:
        """:meth:`read_into` for several instances, in order, their objects fetched together: with
        an object store each fetch is a network round trip, and these overlap (a study retrieval
        reads a few MB at a time this way). The first failure is raised; nothing after it is
        decrypted."""
        if len(items) < 2:
            for record, out in items:
                self.read_into(record, out)
            return
        fetches = [self._reader.submit(self.blobs.get, record.blob_key) for record, _ in items]
        try:
            for (record, out), fetch in zip(items, fetches, strict=True):
                self._decrypt_into(record, fetch.result(), out)
        finally:
            for fetch in fetches:
                fetch.cancel()  # after a failure: the fetches not started yet are not needed

    def _decrypt_into(self, record: InstanceRecord, ciphertext: bytes, out: memoryview) -> None:
        try:
            decrypt_object_into(
                ciphertext, self._data_key(record), object_id=record.blob_key.encode(), out=out
            )
            intact = hashlib.sha256(out).digest() == record.sha256
        except IntegrityError:
            intact = False
        if not intact:
            raise IntegrityError(
                f"instance {record.sop_uid} failed its integrity check and is not served",
                hint="The stored object no longer matches what was ingested; restore it from backup.",
            )

    def read_frames(self, record: InstanceRecord, numbers: Sequence[int]) -> list[bytes]:
        """Frames as stored (1-based numbers), decrypting only the segments that hold them."""
        for n in numbers:
            if n < 1 or n > len(record.frames):
                raise NotFound(f"frame {n} does not exist (the instance has {len(record.frames)})")
        data_key = self._data_key(record)
        context = record.blob_key.encode()

        def read(pos: int, length: int) -> bytes:
            return self.blobs.read_range(record.blob_key, pos, length)

        frames: list[bytes] = []
        for n in numbers:
            parts = [
                decrypt_range(read, data_key, object_id=context, offset=offset, length=length)
                for offset, length in record.frames[n - 1]
            ]
            frames.append(b"".join(parts))
        return frames

    # -- delete ----------------------------------------------------------------------------------

    def delete(
        self,
        study_uid: str,
        series_uid: str | None = None,
        sop_uid: str | None = None,
        *,
        actor: Actor | None = None,
        cause: Literal["delete", "retention", "erasure"] = "delete",
        rule: str | None = None,
        request: int | None = None,
    ) -> int:
        """Delete and crypto-shred: the wrapped data keys go with the index rows, then the objects.
        The ledger records each deleted instance (durably) before this returns.

        The one delete path (DICOMweb DELETE, retention's expiry): a legal hold on the study, its
        patient or a query it matches refuses it (:class:`LegalHoldActive`, ledgered as denied),
        checked inside the delete's own transaction. A study deleted whole leaves a tombstone."""
        records = self.instances(study_uid, series_uid, sop_uid)
        found = self.index.study_facts(study_uid=study_uid)
        facts = next(iter(found.values())) if found else None
        patient = facts.patient if facts is not None else None
        who = actor or SYSTEM
        action = {"retention": "retention.expire", "erasure": "patient.erasure"}.get(cause, "study.delete")
        now = datetime.now(UTC)
        extra: dict[str, str | int] = {"rule": rule} if rule else {}
        if request is not None:
            extra["erasure_request"] = request
        outbox = self._outbox(
            [
                AuditEvent(
                    kind=EventKind.DELETE,
                    time=now,
                    actor=who,
                    action=action,
                    outcome=Outcome.SUCCESS,
                    object=ObjectRef(type="instance", id=r.sop_uid),
                    patient=patient,
                    details={
                        "sha256": r.sha256.hex(),
                        "study_uid": r.study_uid,
                        "crypto_shredded": 1,
                        **extra,
                    },
                )
                for r in records
            ]
        )
        whole = series_uid is None and sop_uid is None

        def check(conn: Any) -> None:
            if facts is None:
                return
            self.legal_holds.refuse_if_held(facts)
            if whole:
                self.legal_holds.tombstone(
                    conn, facts, by=who.id, cause=cause, rule=rule, instances=len(records), now=now
                )

        try:
            blob_keys = self.index.delete_instances(records, outbox=outbox, check=check)
        except LegalHoldActive as refused:
            if self.audit is not None:
                self.audit.emit(
                    AuditEvent(
                        kind=EventKind.DELETE,
                        time=now,
                        actor=who,
                        action=action,
                        outcome=Outcome.DENIED,
                        object=ObjectRef(type="study", id=study_uid),
                        patient=patient,
                        reason="under legal hold",
                        details={"legal_holds": ",".join(str(i) for i in refused.hold_ids), **extra},
                    )
                )
            raise
        for blob_key in blob_keys:
            self.blobs.delete(blob_key)
        self._publish(outbox)
        return len(records)

    def audit_read(
        self, kind: Literal["query", "retrieve"], actor: Actor, study_ids: Sequence[int], **details: str | int
    ) -> None:
        """Record which studies a query or retrieval disclosed to whom (group-committed)."""
        if self.audit is None or not study_ids:
            return
        self.audit_disclosure(
            kind, actor, list(self.index.study_facts(study_ids=study_ids).values()), **details
        )

    def audit_disclosure(
        self,
        kind: Literal["query", "retrieve"],
        actor: Actor,
        facts: Sequence[StudyFacts],
        **details: str | int,
    ) -> None:
        """``audit_read`` for studies whose facts the caller already has (from the access decision)."""
        if self.audit is None:
            return
        now = datetime.now(UTC)
        for fact in facts:
            self.audit.emit(
                AuditEvent(
                    kind=EventKind.QUERY if kind == "query" else EventKind.RETRIEVE,
                    time=now,
                    actor=actor,
                    action="study.read",
                    outcome=Outcome.SUCCESS,
                    object=ObjectRef(type="study", id=fact.study_uid),
                    patient=fact.patient,
                    details=dict(details),
                )
            )

    # -- keys ------------------------------------------------------------------------------------

    def key_status(self) -> KeyStatus:
        return KeyStatus(
            current_kek=self.keks.current_kek_id,
            known_keks=self.keks.kek_ids(),
            objects_per_kek=self.index.key_counts(),
        )

    def rewrap_all(self, progress: Callable[[int], None] | None = None) -> int:
        """Rewrap every data key under the current KEK without touching any object."""
        total = 0
        if self._refresh_keys is not None:
            self._refresh_keys()
        with self._rotation_lock:
            current = self.keks.current_kek_id
            for batch in self.index.iter_wrapped_keys(not_kek=current):
                updates = []
                for row_id, blob_key, wrapped in batch:
                    context = blob_key.encode()
                    data_key = self.keks.unwrap(wrapped, context=context)
                    updates.append((row_id, self.keks.wrap(data_key, context=context), wrapped.kek_id))
                total += self.index.replace_wrapped_keys(updates)
                if progress is not None:
                    progress(len(batch))
        return total


# Group commit: parsed instances are deduplicated and submitted for writing in groups, and written
# ones are indexed (one transaction, one ledger batch) in groups. The bytes thresholds bound what a
# session holds: a request's memory is a few of these plus its largest instance, however large the
# request (issue #12).
_GROUP_INSTANCES = 64
_GROUP_BYTES = 32 * 1024**2
_INFLIGHT_BYTES = 64 * 1024**2  # plaintext handed to the writer threads and not yet written
# ...and no written object waits longer than this for its index row (a slow sender's group), so
# that an object without a row for long is a crash's leftover (medvault.fsck).
_GROUP_SECONDS = 2.0


class StoreSession:
    """One write: instances go in with :meth:`add` and come out as outcomes from :meth:`finish`.

    Nothing is half-stored: an instance is indexed only once its ciphertext is durable, and the
    ciphertext of every instance that does not get indexed is removed again (:meth:`abort` on a
    failed request). Instances are indexed (and ledgered) in groups as the session goes, so a long
    request that breaks off keeps the groups committed before the break; each has its outcome.
    """

    def __init__(
        self,
        archive: Archive,
        *,
        study_uid: str | None,
        actor: Actor | None,
        may_store: StoreCheck | None,
    ) -> None:
        self._archive = archive
        self._study_uid = study_uid
        self._actor = actor
        self._may_store = may_store
        self._outcomes: list[StoreOutcome | None] = []
        self._seen: dict[str, bytes] = {}  # SOP UID -> SHA-256, within this session
        self._studies: dict[str, StudyFacts | None] = {}  # study UID -> stored facts (None: new)
        self._allowed: dict[StudyFacts, bool] = {}  # the writer's decision per target study
        self._new_studies: dict[str, str | None] = {}  # study UID -> patient, for studies not stored
        self._parsed: list[tuple[int, ParsedInstance, bytes, bytes]] = []  # pos, parsed, digest, data
        self._parsed_bytes = 0
        self._inflight: list[tuple[int, _Prepared, Future[None], int]] = []
        self._inflight_bytes = 0
        self._written: list[tuple[int, _Prepared]] = []
        self._written_since = 0.0  # when the oldest written, unindexed object was written
        self._unlogged: list[tuple[int, StoreOutcome]] = []
        self._actors: dict[int, Actor] = {}  # instances added on behalf of another actor
        self._closed = False

    @property
    def count(self) -> int:
        return len(self._outcomes)

    def add(self, data: bytes, *, actor: Actor | None = None, expect: tuple[str, str] | None = None) -> None:
        """Take the next instance (its outcome is the next in :meth:`finish`'s list). Blocks while
        the writer threads are behind (back-pressure on the sender). ``actor``: who sent this
        one, when the session groups several senders (the DIMSE listener's concurrent
        associations of one node); its store event names them. ``expect``: the (SOP Class,
        SOP Instance) UIDs the data set must carry (a C-STORE command's)."""
        pos = len(self._outcomes)
        self._outcomes.append(None)
        if actor is not None:
            self._actors[pos] = actor
        outcome = self._check(pos, data, expect)
        if outcome is not None:
            self._settle(pos, outcome)
        if len(self._parsed) >= _GROUP_INSTANCES or self._parsed_bytes >= _GROUP_BYTES:
            self._submit()
        if self._written and (
            len(self._written) >= _GROUP_INSTANCES or time.monotonic() - self._written_since > _GROUP_SECONDS
        ):
            self._index()

    def refuse(self, error: MedvaultError) -> None:
        """Count a part that is not an instance at all (e.g. of another media type) as failed."""
        self._outcomes.append(None)
        self._settle(len(self._outcomes) - 1, StoreOutcome("failed", error=error))

    def finish(self) -> list[StoreOutcome]:
        """Write and index what is left; the outcome of every instance, in the order added."""
        self._submit()
        self._drain(0)
        self._index()
        self._closed = True
        return [
            o if o is not None else StoreOutcome("failed", error=MedvaultError("not processed"))
            for o in self._outcomes
        ]

    def abort(self) -> None:
        """Give up: remove what was written and not indexed (indexed groups stay, ledgered)."""
        if self._closed:
            return
        self._closed = True
        for _, prepared, future, _ in self._inflight:
            try:
                future.result()
            except Exception:  # noqa: S112 - it is being removed either way
                continue
            finally:
                self._archive.blobs.delete(prepared.entry.blob_key)
        for _, prepared in self._written:
            self._archive.blobs.delete(prepared.entry.blob_key)
        self._inflight, self._written, self._parsed = [], [], []
        self._log()

    # -- the steps ---------------------------------------------------------------------------------

    def _check(self, pos: int, data: bytes, expect: tuple[str, str] | None) -> StoreOutcome | None:
        """Parse and decide an instance; an outcome when it is settled already, else None (queued)."""
        archive = self._archive
        try:
            parsed = archive._parse(data)
        except MedvaultError as exc:
            return StoreOutcome("failed", error=exc)
        if expect is not None and (parsed.sop_class_uid, parsed.sop_instance_uid) != expect:
            field = "SOPClassUID" if parsed.sop_class_uid != expect[0] else "SOPInstanceUID"
            mismatch = CommandMismatch(f"the data set's {field} is not the one its C-STORE command names")
            return archive._failed(parsed, mismatch)
        if self._study_uid is not None and parsed.study_instance_uid != self._study_uid:
            return archive._failed(
                parsed, StudyMismatch("the instance's StudyInstanceUID differs from the study in the URL")
            )
        digest = hashlib.sha256(data).digest()
        uid = parsed.sop_instance_uid
        earlier = self._seen.get(uid)
        if earlier is not None:
            if earlier == digest:
                return archive._stored(parsed, "already_present")
            return archive._failed(
                parsed, Conflict(f"SOP instance {uid} appears twice with different content")
            )
        refusal = self._placement(parsed)
        if refusal is not None:
            return archive._failed(parsed, refusal)
        self._seen[uid] = digest
        self._parsed.append((pos, parsed, digest, data))
        self._parsed_bytes += len(data)
        return None

    def _placement(self, parsed: ParsedInstance) -> MedvaultError | None:
        """May this writer put this instance into its study, and does it belong there? The same
        refusal for every out-of-scope case, so that it tells nothing about what exists."""
        study_uid = parsed.study_instance_uid
        index = self._archive.index
        if study_uid not in self._studies:
            found = index.study_facts(study_uid=study_uid)
            self._studies[study_uid] = next(iter(found.values())) if found else None
        stored = self._studies[study_uid]
        own = index.facts_for_new(parsed.metadata)
        target = stored or own
        if self._may_store is not None:
            allowed = self._allowed.get(target)
            if allowed is None:
                allowed = self._allowed[target] = self._may_store(target)
            if not allowed:
                return _OUT_OF_SCOPE
        expected = (
            stored.patient if stored is not None else self._new_studies.setdefault(study_uid, own.patient)
        )
        if expected != own.patient:
            return StudyMismatch(
                "the instance's PatientID differs from that of the study with its StudyInstanceUID; "
                "it was not stored",
                hint="Check the sending application's patient matching, or give the study a new UID.",
            )
        return None

    def _submit(self) -> None:
        """Deduplicate the queued instances against the index and hand the new ones to the writers."""
        if not self._parsed:
            return
        archive = self._archive
        queued, self._parsed, self._parsed_bytes = self._parsed, [], 0
        existing = archive.index.stored_instances([p.sop_instance_uid for _, p, _, _ in queued])
        for pos, parsed, digest, data in queued:
            known = existing.get(parsed.sop_instance_uid)
            if known is not None:
                self._settle(pos, self._duplicate(parsed, digest, known, data))
                continue
            prepared = archive._prepare(data, parsed, digest)
            if len(queued) == 1 and not self._inflight:
                future = _written_here(archive._encrypt_and_put, data, prepared)  # nothing to overlap
            else:
                future = archive._writer.submit(archive._encrypt_and_put, data, prepared)
            self._inflight.append((pos, prepared, future, len(data)))
            self._inflight_bytes += len(data)
            self._drain(_INFLIGHT_BYTES)

    def _duplicate(
        self, parsed: ParsedInstance, digest: bytes, known: tuple[bytes, str], data: bytes
    ) -> StoreOutcome:
        """An SOP instance that is stored already: unchanged (fine, also when re-encoded by the
        sender), changed (a conflict), or in a study this writer may not touch (refused exactly as
        any other out-of-scope write)."""
        stored_digest, stored_study = known
        archive = self._archive
        if self._may_store is not None and stored_study != parsed.study_instance_uid:
            facts = archive.index.study_facts(study_uid=stored_study)
            if not facts or not self._may_store(next(iter(facts.values()))):
                return archive._failed(parsed, _OUT_OF_SCOPE)
        if stored_study != parsed.study_instance_uid:
            return archive._failed(
                parsed, Conflict(f"SOP instance {parsed.sop_instance_uid} is stored in another study")
            )
        if stored_digest == digest or archive._same_as_stored(parsed, data):
            return archive._stored(parsed, "already_present")
        return archive._failed(parsed, _conflict_with_stored(parsed.sop_instance_uid))

    def _drain(self, limit: int) -> None:
        """Wait for the oldest writes until at most ``limit`` bytes are in flight."""
        while self._inflight and self._inflight_bytes > limit:
            pos, prepared, future, size = self._inflight.pop(0)
            self._inflight_bytes -= size
            try:
                future.result()
            except MedvaultError as exc:
                self._settle(pos, self._archive._failed(prepared.parsed, exc))
                continue
            if not self._written:
                self._written_since = time.monotonic()
            self._written.append((pos, prepared))

    def _index(self) -> None:
        """Index the written instances in one transaction, once their objects are durable; their
        store events go into the ledger outbox in that same transaction (medvault.index.outbox)."""
        if not self._written:
            self._log()
            return
        archive = self._archive
        ready, self._written = self._written, []
        events = [
            archive._store_event(archive._stored(p.parsed), p.entry, self._actor_of(pos)) for pos, p in ready
        ]
        try:
            archive.blobs.sync()  # objects durable before the index acknowledges them
            outbox = archive._outbox(events)
            archive.index.add_instances([p.entry for _, p in ready], outbox=outbox)
        except (Conflict, StudyMismatch):
            # A concurrent writer stored one of them first: index one by one to sort it out.
            for (pos, p), event in zip(ready, events, strict=True):
                self._settle(pos, archive._index_one(p, event))
        except BaseException:
            for _, p in ready:
                archive.blobs.delete(p.entry.blob_key)
            raise
        else:
            archive._publish(outbox)
            for pos, p in ready:
                self._settle(pos, archive._stored(p.parsed))
        self._log()

    def _settle(self, pos: int, outcome: StoreOutcome) -> None:
        self._outcomes[pos] = outcome
        if outcome.status == "failed":  # stored ones were ledgered with their index rows
            self._unlogged.append((pos, outcome))

    def _log(self) -> None:
        """Ledger the refusals (durably: stores are not group-committed reads)."""
        archive = self._archive
        if archive.audit is not None and self._unlogged:
            archive.audit.emit_many(
                [archive._store_event(o, None, self._actor_of(pos)) for pos, o in self._unlogged]
            )
        self._unlogged = []

    def _actor_of(self, pos: int) -> Actor | None:
        return self._actors.get(pos, self._actor)


def _written_here(
    write: Callable[[bytes, _Prepared], None], data: bytes, prepared: _Prepared
) -> Future[None]:
    """A lone instance (a C-STORE) is written in the caller's thread: a hand-off to a writer
    thread and back costs more than it overlaps."""
    future: Future[None] = Future()
    try:
        write(data, prepared)
    except BaseException as exc:
        future.set_exception(exc)
    else:
        future.set_result(None)
    return future


_OUT_OF_SCOPE = Forbidden(
    "not permitted: storing into this study, or for this patient, is outside the writer's scope",
    hint="An administrator can grant the patient, study or department (`medvault users grant`).",
)
