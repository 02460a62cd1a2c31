"""The SQL index: one class that stores and finds instance records, keeping PHI encrypted.

Callers hand over plaintext DICOM JSON documents; this module encrypts them (bound to their row
by the encryption context) and derives blind-index tokens for the exact-match fields. A query is
answered in two steps: SQL narrows the candidates on clear columns and tokens, then the decrypted
documents are matched exactly (PS3.4 C.2.2.2) in Python. Tokens are only a prefilter, so a token
collision can never produce a wrong answer.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydicom.datadict import dictionary_VR
from sqlalchemy import (
    Engine,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.sql.elements import BindParameter, ColumnElement

from medvault.crypto.fields import BlindIndex, FieldCipher
from medvault.crypto.kek import WrappedKey
from medvault.dicom.matching import Criterion, MatchKind, normalize_for_exact
from medvault.errors import Conflict, NotFound, StudyMismatch
from medvault.index import alerts_schema as _holds  # noqa: F401 - its tables are created with the index's
from medvault.index import compliance_schema as _compliance  # noqa: F401 - legal holds, tombstones
from medvault.index import schema as t
from medvault.index.outbox import Outbox, OutboxRow, write_outbox

Level = Literal["study", "series", "instance"]
Json = dict[str, Any]

TAG_STUDY_UID = "0020000D"
TAG_SERIES_UID = "0020000E"
TAG_SOP_UID = "00080018"
TAG_SOP_CLASS = "00080016"
TAG_MODALITY = "00080060"
TAG_MODALITIES_IN_STUDY = "00080061"
TAG_STUDY_DATE = "00080020"
TAG_PATIENT_ID = "00100020"
TAG_REFERRING = "00080090"
TAG_DEPARTMENT = "00081040"
TAG_PATIENT_ID = "00100020"
_SCAN_BATCH = 500

# The lookups every retrieval makes are built once, with bind parameters: SQLAlchemy then neither
# rebuilds nor re-keys the statement per call (an instance lookup costs ~70 instead of ~190 µs).
_INSTANCES = select(t.instances, t.series.c.series_uid, t.studies.c.study_uid).select_from(
    t.instances.join(t.series, t.instances.c.series_id == t.series.c.id).join(
        t.studies, t.instances.c.study_id == t.studies.c.id
    )
)
_IN_STUDY = _INSTANCES.where(t.studies.c.study_uid == bindparam("study_uid"))
_BY_SERIES = t.series.c.series_uid == bindparam("series_uid")
_BY_SOP = t.instances.c.sop_uid == bindparam("sop_uid")
_INSTANCE_ORDER = (t.series.c.id, t.instances.c.instance_number, t.instances.c.id)
_INSTANCES_FOUND_BY = {  # (series given, SOP instance given) -> statement
    (False, False): _IN_STUDY.order_by(*_INSTANCE_ORDER),
    (True, False): _IN_STUDY.where(_BY_SERIES).order_by(*_INSTANCE_ORDER),
    (False, True): _IN_STUDY.where(_BY_SOP).order_by(*_INSTANCE_ORDER),
    (True, True): _IN_STUDY.where(_BY_SERIES, _BY_SOP).order_by(*_INSTANCE_ORDER),
}
_INSTANCE_BY_SOP = _INSTANCES.where(_BY_SOP)
_STUDY_FACTS_COLUMNS = select(
    t.studies.c.id,
    t.studies.c.study_uid,
    t.studies.c.patient_id_tok,
    t.studies.c.referring_tok,
    t.studies.c.department_tok,
)
# The write path's statements, built once (a C-STORE is one small transaction: SQLAlchemy's
# per-call statement building was a third of its CPU).
_STUDY_OF_UID = select(t.studies.c.id, t.studies.c.patient_id_tok).where(
    t.studies.c.study_uid == bindparam("uid")
)
_SERIES_OF_UID = select(t.series.c.id, t.series.c.study_id).where(t.series.c.series_uid == bindparam("uid"))
_INSERT_INSTANCES = insert(t.instances)
_STORED_COLUMNS = select(t.instances.c.sop_uid, t.instances.c.sha256, t.studies.c.study_uid).join(
    t.studies, t.studies.c.id == t.instances.c.study_id
)
_STORED_INSTANCES = _STORED_COLUMNS.where(t.instances.c.sop_uid.in_(bindparam("uids", expanding=True)))
_STORED_INSTANCE = _STORED_COLUMNS.where(t.instances.c.sop_uid == bindparam("uid"))  # cached as is
_DELETE_OUTBOX_ROWS = delete(t.ledger_outbox).where(
    t.ledger_outbox.c.id.in_(bindparam("ids", expanding=True))
)
_DELETE_OUTBOX_ROW = delete(t.ledger_outbox).where(t.ledger_outbox.c.id == bindparam("id"))
_STUDY_FACTS_BY_UID = _STUDY_FACTS_COLUMNS.where(t.studies.c.study_uid == bindparam("study_uid"))
# Searches ask these for every page of results (and the access filter per study).
_STUDY_IDS: BindParameter[list[int]] = bindparam("ids", expanding=True)
_STUDY_FACTS_BY_IDS = _STUDY_FACTS_COLUMNS.where(t.studies.c.id.in_(_STUDY_IDS))
_SERIES_MODALITIES_OF_STUDIES = select(t.series.c.study_id, t.series.c.modality).where(
    t.series.c.study_id.in_(_STUDY_IDS)
)
_INSTANCE_COUNTS_OF_STUDIES = (
    select(t.instances.c.study_id, func.count())
    .where(t.instances.c.study_id.in_(_STUDY_IDS))
    .group_by(t.instances.c.study_id)
)
_INSTANCE_COUNTS_OF_SERIES = (
    select(t.instances.c.series_id, func.count())
    .where(t.instances.c.series_id.in_(bindparam("ids", expanding=True)))
    .group_by(t.instances.c.series_id)
)


@dataclass(frozen=True, kw_only=True)
class NewInstance:
    """Everything the index records for one stored instance (documents still in clear)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    instance_number: int | None
    modality: str | None
    series_number: int | None
    study_year: int | None
    number_of_frames: int
    frames: list[list[tuple[int, int]]]
    blob_key: str
    size: int
    sha256: bytes
    study_doc: Json
    series_doc: Json
    instance_doc: Json
    metadata: Json
    wrapped_key: WrappedKey
    department: str | None = None


@dataclass(frozen=True, kw_only=True)
class InstanceRecord:
    id: int
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    instance_number: int | None
    number_of_frames: int
    frames: list[list[tuple[int, int]]]
    blob_key: str
    size: int
    sha256: bytes
    wrapped_key: WrappedKey


@dataclass(frozen=True)
class Hit:
    """One query match: the merged attributes of its level and the levels above it."""

    study_id: int
    series_id: int | None
    instance_id: int | None
    attributes: Json


@dataclass(frozen=True)
class StudyFacts:
    study_id: int
    study_uid: str
    patient: str | None
    referring: str | None
    department: str | None


def _facts(row: Any, study_id: int) -> StudyFacts:
    """A study's facts from a row that carries its study UID and blind-index token columns."""

    def hexed(value: bytes | None) -> str | None:
        return bytes(value).hex() if value is not None else None

    return StudyFacts(
        study_id=study_id,
        study_uid=row.study_uid,
        patient=hexed(row.patient_id_tok),
        referring=hexed(row.referring_tok),
        department=hexed(row.department_tok),
    )


@dataclass(frozen=True)
class StudyCounts:
    series: int
    instances: int
    modalities: list[str]


def _first_text(element: Json | None) -> str | None:
    if not element:
        return None
    values = element.get("Value")
    if not values:
        return None
    first = values[0]
    if isinstance(first, dict):
        text = first.get("Alphabetic")
        return text if isinstance(text, str) else None
    return str(first)


class Index:
    """The metadata index over a SQLAlchemy engine (SQLite by default; PostgreSQL-portable SQL)."""

    def __init__(self, engine: Engine, *, cipher: FieldCipher, blind: BlindIndex) -> None:
        self.engine = engine
        self._cipher = cipher
        self._blind = blind
        self._write_lock = threading.Lock()
        # Outbox rows whose events are in the ledger, deleted by this process's next write
        # transaction instead of one of their own (see outbox_published).
        self._published: list[int] = []
        self._writer = engine.execution_options(write=True)

    @classmethod
    def open_sqlite(cls, path: Path, *, cipher: FieldCipher, blind: BlindIndex) -> Index:
        """Open (creating if needed) a SQLite index in WAL mode with secure delete on.

        ``secure_delete`` overwrites freed pages, so a deleted wrapped data key does not linger in
        the database file after crypto-shredding.
        """
        engine = create_engine(f"sqlite:///{path}", connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA secure_delete=ON")
            cur.execute("PRAGMA temp_store=MEMORY")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            # Writers take the write lock up front, so concurrent processes (server workers, an
            # import, a key rotation) queue on busy_timeout instead of failing on lock upgrade.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

        index = cls(engine, cipher=cipher, blind=blind)
        index.create_schema()
        path.chmod(0o600)
        return index

    def create_schema(self) -> None:
        t.metadata.create_all(self._writer)

    def close(self) -> None:
        self.flush_published()
        self.engine.dispose()

    # -- encryption helpers ----------------------------------------------------------------------

    def _seal(self, doc: Json, context: str) -> bytes:
        raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        return self._cipher.encrypt(raw, context=context.encode())

    def _open(self, blob: bytes, context: str) -> Json:
        doc: Json = json.loads(self._cipher.decrypt(blob, context=context.encode()))
        return doc

    def _token(self, tag: str, value: str) -> bytes:
        return self._blind.token(tag, normalize_for_exact(dictionary_VR(int(tag, 16)), value))

    def _study_tokens(self, study_doc: Json, department: str | None) -> dict[str, bytes | None]:
        """The blind-index token columns of a new study row."""
        tokens: dict[str, bytes | None] = {}
        for tag, column in t.STUDY_TOKEN_FIELDS.items():
            text = department if tag == TAG_DEPARTMENT else _first_text(study_doc.get(tag))
            tokens[column] = self._token(tag, text) if text else None
        return tokens

    def _patient_token(self, attributes: Json) -> bytes | None:
        text = _first_text(attributes.get(TAG_PATIENT_ID))
        return self._token(TAG_PATIENT_ID, text) if text else None

    def facts_for_new(self, metadata: Json) -> StudyFacts:
        """The facts a study would have if this instance (its DICOM JSON) created it: what the
        writer's policy check sees for a study that is not stored yet (``study_id`` 0)."""

        def token(tag: str) -> str | None:
            text = _first_text(metadata.get(tag))
            return self._token(tag, text).hex() if text else None

        return StudyFacts(
            study_id=0,
            study_uid=_first_text(metadata.get("0020000D")) or "",
            patient=token(TAG_PATIENT_ID),
            referring=token("00080090"),
            department=token(TAG_DEPARTMENT),
        )

    # -- writes ----------------------------------------------------------------------------------

    def add_instances(self, items: Sequence[NewInstance], *, outbox: Outbox | None = None) -> None:
        """Record instances in one transaction (all or none). ``Conflict`` on a duplicate SOP UID.
        ``outbox``: their ledger events, written in the same transaction (medvault.index.outbox)."""
        if not items:
            return
        now = datetime.now(UTC)
        # Encrypt outside the write lock; the transaction only moves bytes.
        sealed = {
            item.sop_uid: {
                "sop_uid": item.sop_uid,
                "sop_class_uid": item.sop_class_uid,
                "instance_number": item.instance_number,
                "transfer_syntax": item.transfer_syntax,
                "number_of_frames": item.number_of_frames,
                "frames": json.dumps(item.frames, separators=(",", ":")).encode(),
                "blob_key": item.blob_key,
                "size": item.size,
                "sha256": item.sha256,
                "doc": self._seal(item.instance_doc, "instance/" + item.sop_uid),
                "metadata": self._seal(item.metadata, "metadata/" + item.sop_uid),
                "kek_id": item.wrapped_key.kek_id,
                "wrapped_key": item.wrapped_key.blob,
                "stored_at": now,
            }
            for item in items
        }
        if len(sealed) != len(items):
            raise Conflict("the same SOP instance appears twice in one batch")
        rows: list[dict[str, Any]] = []
        with self._write_lock, self._writer.begin() as conn:
            study_ids: dict[str, int] = {}
            study_patients: dict[str, bytes | None] = {}
            series_ids: dict[str, int] = {}
            for item in items:
                study_id = study_ids.get(item.study_uid)
                patient = self._patient_token(item.study_doc)
                if study_id is not None and study_patients[item.study_uid] != patient:
                    raise StudyMismatch("an instance's PatientID differs from that of its study")
                if study_id is None:
                    found = conn.execute(_STUDY_OF_UID, {"uid": item.study_uid}).first()
                    if found is not None:
                        study_id = found.id
                        stored_patient = bytes(found.patient_id_tok) if found.patient_id_tok else None
                        if stored_patient != patient:
                            raise StudyMismatch("an instance's PatientID differs from that of its study")
                    else:
                        tokens = self._study_tokens(item.study_doc, item.department)
                        study_id = conn.execute(
                            insert(t.studies).values(
                                study_uid=item.study_uid,
                                study_year=item.study_year,
                                doc=self._seal(item.study_doc, "study/" + item.study_uid),
                                created_at=now,
                                **tokens,
                            )
                        ).inserted_primary_key[0]  # type: ignore[index]
                    study_ids[item.study_uid] = int(study_id)
                    study_patients[item.study_uid] = patient
                series_id = series_ids.get(item.series_uid)
                if series_id is None:
                    row = conn.execute(_SERIES_OF_UID, {"uid": item.series_uid}).first()
                    if row is None:
                        series_id = conn.execute(
                            insert(t.series).values(
                                series_uid=item.series_uid,
                                study_id=study_id,
                                modality=item.modality,
                                series_number=item.series_number,
                                doc=self._seal(item.series_doc, "series/" + item.series_uid),
                            )
                        ).inserted_primary_key[0]  # type: ignore[index]
                    elif row.study_id != study_id:
                        raise Conflict(f"series {item.series_uid} already belongs to another study")
                    else:
                        series_id = row.id
                    series_ids[item.series_uid] = int(series_id)
                rows.append({**sealed[item.sop_uid], "series_id": series_id, "study_id": study_id})
            try:
                conn.execute(_INSERT_INSTANCES, rows)
            except SqlIntegrityError:
                raise Conflict("an SOP instance of this batch is already stored") from None
            if outbox is not None:
                write_outbox(conn, outbox)
            self._delete_published(conn)

    def delete_instances(
        self,
        records: Iterable[InstanceRecord],
        *,
        outbox: Outbox | None = None,
        check: Callable[[Any], None] | None = None,
    ) -> list[str]:
        """Delete instance rows (and with them their wrapped data keys); drop emptied series/studies.

        Returns the blob keys to remove from storage. After the commit the WAL is checkpointed and
        truncated so the destroyed keys leave the -wal file too. ``outbox`` as for ``add_instances``.
        ``check(conn)`` runs first inside the write transaction (holding the database's write lock,
        so what it reads cannot change before the delete commits); if it raises, nothing is deleted.
        """
        ids = [r.id for r in records]
        blob_keys = [r.blob_key for r in records]
        if not ids:
            return []
        with self._write_lock:
            with self._writer.begin() as conn:
                if check is not None:
                    check(conn)
                deleted = 0
                for start in range(0, len(ids), _SCAN_BATCH):
                    chunk = ids[start : start + _SCAN_BATCH]
                    deleted += conn.execute(delete(t.instances).where(t.instances.c.id.in_(chunk))).rowcount
                if deleted != len(ids):  # another process deleted some first: it ledgered them
                    raise NotFound("deleted meanwhile by another request; nothing was deleted by this one")
                conn.execute(
                    delete(t.series).where(~exists().where(t.instances.c.series_id == t.series.c.id))
                )
                conn.execute(delete(t.studies).where(~exists().where(t.series.c.study_id == t.studies.c.id)))
                if outbox is not None:
                    write_outbox(conn, outbox)
            self.checkpoint()
        return blob_keys

    def checkpoint(self) -> None:
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- instance lookups ------------------------------------------------------------------------

    @staticmethod
    def _record(row: Any) -> InstanceRecord:
        return InstanceRecord(
            id=row.id,
            study_uid=row.study_uid,
            series_uid=row.series_uid,
            sop_uid=row.sop_uid,
            sop_class_uid=row.sop_class_uid,
            transfer_syntax=row.transfer_syntax,
            instance_number=row.instance_number,
            number_of_frames=row.number_of_frames,
            frames=[[(int(o), int(n)) for o, n in frame] for frame in json.loads(row.frames)],
            blob_key=row.blob_key,
            size=row.size,
            sha256=bytes(row.sha256),
            wrapped_key=WrappedKey(kek_id=row.kek_id, blob=bytes(row.wrapped_key)),
        )

    def stored_digests(self, sop_uids: Sequence[str]) -> dict[str, bytes]:
        """SHA-256 of each already stored SOP instance among ``sop_uids``."""
        return {uid: digest for uid, (digest, _study) in self.stored_instances(sop_uids).items()}

    def stored_instances(self, sop_uids: Sequence[str]) -> dict[str, tuple[bytes, str]]:
        """(SHA-256, study UID) of each already stored SOP instance among ``sop_uids`` (one query
        per 500)."""
        found: dict[str, tuple[bytes, str]] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(sop_uids), _SCAN_BATCH):
                chunk = list(sop_uids[start : start + _SCAN_BATCH])
                rows = (
                    conn.execute(_STORED_INSTANCE, {"uid": chunk[0]})
                    if len(chunk) == 1  # a C-STORE: no expanding IN (compiled on every call)
                    else conn.execute(_STORED_INSTANCES, {"uids": chunk})
                )
                for row in rows:
                    found[row.sop_uid] = (bytes(row.sha256), row.study_uid)
        return found

    def get_instance(self, sop_uid: str) -> InstanceRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(_INSTANCE_BY_SOP, {"sop_uid": sop_uid}).first()
        return self._record(row) if row else None

    def find_instances(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[InstanceRecord]:
        """Instances under a study / series / single instance, in series then instance order."""
        query = _INSTANCES_FOUND_BY[series_uid is not None, sop_uid is not None]
        params = {"study_uid": study_uid, "series_uid": series_uid, "sop_uid": sop_uid}
        with self.engine.connect() as conn:
            return [self._record(row) for row in conn.execute(query, params)]

    def instance_metadata(self, records: Sequence[InstanceRecord]) -> list[Json]:
        """The full DICOM JSON (without bulk data) of each record, decrypted."""
        if not records:
            return []
        ids = [r.id for r in records]
        found: dict[int, Json] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), _SCAN_BATCH):
                chunk = ids[start : start + _SCAN_BATCH]
                for row in conn.execute(
                    select(t.instances.c.id, t.instances.c.sop_uid, t.instances.c.metadata).where(
                        t.instances.c.id.in_(chunk)
                    )
                ):
                    found[row.id] = self._open(row.metadata, "metadata/" + row.sop_uid)
        return [found[i] for i in ids if i in found]

    # -- queries (QIDO-RS / C-FIND) ------------------------------------------------------------------

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
        """Matches at ``level`` in insertion order, after ``offset``, at most ``limit``.

        ``visible(facts)`` drops studies the caller may not see *before* paging, so neither
        results nor counts reveal that they exist."""
        if limit == 0:
            return []
        studies, series, insts = t.studies, t.series, t.instances
        conds: list[ColumnElement[bool]] = []
        if study_uid is not None:
            conds.append(studies.c.study_uid == study_uid)
        if series_uid is not None:
            conds.append(series.c.series_uid == series_uid)
        python_checks: list[Criterion] = []
        for crit in criteria:
            cond = self._sql_prefilter(level, crit)
            if cond is not None:
                conds.append(cond)
            if crit.kind is not MatchKind.UNIVERSAL:
                python_checks.append(crit)

        # What the access filter decides on comes with each row: no query per study.
        facts_columns = (studies.c.patient_id_tok, studies.c.referring_tok, studies.c.department_tok)
        if level == "study":
            query = select(studies.c.id.label("study_id"), studies.c.study_uid, studies.c.doc, *facts_columns)
            order = studies.c.id
        elif level == "series":
            query = select(
                studies.c.id.label("study_id"),
                studies.c.study_uid,
                studies.c.doc,
                *facts_columns,
                series.c.id.label("series_id"),
                series.c.series_uid,
                series.c.doc.label("series_doc"),
            ).select_from(series.join(studies, series.c.study_id == studies.c.id))
            order = series.c.id
        else:
            query = select(
                studies.c.id.label("study_id"),
                studies.c.study_uid,
                studies.c.doc,
                *facts_columns,
                series.c.id.label("series_id"),
                series.c.series_uid,
                series.c.doc.label("series_doc"),
                insts.c.id.label("instance_id"),
                insts.c.sop_uid,
                insts.c.doc.label("instance_doc"),
            ).select_from(
                insts.join(series, insts.c.series_id == series.c.id).join(
                    studies, insts.c.study_id == studies.c.id
                )
            )
            order = insts.c.id
        if conds:
            query = query.where(and_(*conds))
        query = query.order_by(order)

        needs_modalities = any(c.tag == TAG_MODALITIES_IN_STUDY for c in python_checks)
        hits: list[Hit] = []
        skipped = 0
        study_cache: dict[int, Json] = {}
        series_cache: dict[int, Json] = {}
        seen_visible: dict[int, bool] = {}
        # the result is closed on the way out, also at ``limit`` (PostgreSQL streams it through a
        # server-side cursor, which must not outlive the loop)
        with (
            self.engine.connect() as conn,
            conn.execution_options(yield_per=_SCAN_BATCH).execute(query) as rows,
        ):
            for row in rows:
                attrs = study_cache.get(row.study_id)
                if attrs is None:
                    attrs = self._open(row.doc, "study/" + row.study_uid)
                    if needs_modalities:
                        mods = self.study_counts([row.study_id], conn=conn)[row.study_id].modalities
                        attrs[TAG_MODALITIES_IN_STUDY] = {"vr": "CS", "Value": mods} if mods else {"vr": "CS"}
                    study_cache[row.study_id] = attrs
                attrs = dict(attrs)
                if level in ("series", "instance"):
                    series_attrs = series_cache.get(row.series_id)
                    if series_attrs is None:
                        series_attrs = self._open(row.series_doc, "series/" + row.series_uid)
                        series_cache[row.series_id] = series_attrs
                    attrs.update(series_attrs)
                if level == "instance":
                    attrs.update(self._open(row.instance_doc, "instance/" + row.sop_uid))
                if not all(c.matches(attrs.get(c.tag)) for c in python_checks):
                    continue
                # Only matches are put to the policy (one decision per study the query would
                # return, not per candidate examined); still before paging, so counts hide nothing.
                if visible is not None:
                    allowed = seen_visible.get(row.study_id)
                    if allowed is None:
                        allowed = seen_visible[row.study_id] = visible(_facts(row, row.study_id))
                    if not allowed:
                        continue
                if skipped < offset:
                    skipped += 1
                    continue
                hits.append(
                    Hit(
                        study_id=row.study_id,
                        series_id=getattr(row, "series_id", None),
                        instance_id=getattr(row, "instance_id", None),
                        attributes=attrs,
                    )
                )
                if limit is not None and len(hits) >= limit:
                    break
        return hits

    def _sql_prefilter(self, level: Level, crit: Criterion) -> ColumnElement[bool] | None:
        """A SQL condition that keeps every true match (it may keep more), or None."""
        studies, series, insts = t.studies, t.series, t.instances
        uid_columns = {TAG_STUDY_UID: studies.c.study_uid}
        if level in ("series", "instance"):
            uid_columns[TAG_SERIES_UID] = series.c.series_uid
            uid_columns[TAG_MODALITY] = series.c.modality
        if level == "instance":
            uid_columns[TAG_SOP_UID] = insts.c.sop_uid
            uid_columns[TAG_SOP_CLASS] = insts.c.sop_class_uid
        column = uid_columns.get(crit.tag)
        if column is not None:
            if crit.kind is MatchKind.SINGLE:
                return column == crit.value
            if crit.kind is MatchKind.UID_LIST:
                return column.in_(crit.uids)
            return None
        token_column = t.STUDY_TOKEN_FIELDS.get(crit.tag)
        if token_column is not None and crit.kind is MatchKind.SINGLE and crit.exact_value is not None:
            return studies.c[token_column] == self._blind.token(crit.tag, crit.exact_value)
        if crit.tag == TAG_STUDY_DATE:
            return self._year_prefilter(crit)
        if crit.tag == TAG_MODALITIES_IN_STUDY and crit.kind is MatchKind.SINGLE:
            other = t.series.alias("study_series")  # any series of the study, not the row's own
            return exists().where(and_(other.c.study_id == studies.c.id, other.c.modality == crit.value))
        return None

    @staticmethod
    def _year_prefilter(crit: Criterion) -> ColumnElement[bool] | None:
        year = t.studies.c.study_year

        def _year(text: str | None) -> int | None:
            return (
                int(text[:4])
                if text and len(text) >= 4 and text[:4].isascii() and text[:4].isdigit()
                else None
            )

        if crit.kind is MatchKind.SINGLE:
            y = _year(crit.value)
            return year == y if y is not None else None
        if crit.kind is MatchKind.RANGE:
            low, high = _year(crit.low), _year(crit.high)
            conds = []
            if low is not None:
                conds.append(year >= low)
            if high is not None:
                conds.append(year <= high)
            return and_(*conds) if conds else None
        return None

    def study_facts(
        self, *, study_ids: Sequence[int] = (), study_uid: str | None = None
    ) -> dict[int, StudyFacts]:
        """What access decisions need about studies, all pseudonymous (blind-index tokens in hex)."""
        with self.engine.connect() as conn:
            if study_uid is not None:
                rows = conn.execute(_STUDY_FACTS_BY_UID, {"study_uid": study_uid}).all()
            else:
                rows = conn.execute(_STUDY_FACTS_BY_IDS, {"ids": list(study_ids)}).all()

        return {row.id: _facts(row, row.id) for row in rows}

    def pseudonym(self, tag: str, value: str) -> str:
        """The token under which studies record ``value`` of ``tag`` (for grants and identities):
        PatientID for patient grants, InstitutionalDepartmentName for departments,
        ReferringPhysicianName for a referring physician's identity."""
        return self._token(tag, value).hex()

    def studies_recording(self, tag: str, value: str) -> int:
        """How many stored studies record ``value`` of a study-level ``tag`` (by its token): a grant
        that matches none is worth a warning (a typo, or studies that carry another spelling)."""
        column = t.studies.c[t.STUDY_TOKEN_FIELDS[tag]]
        query = select(func.count()).select_from(t.studies).where(column == self._token(tag, value))
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def study_counts(self, study_ids: Sequence[int], *, conn: Any = None) -> dict[int, StudyCounts]:
        """Series and instance counts and modalities of each study (QIDO computed attributes)."""
        if not study_ids:
            return {}
        own = conn is None
        conn = conn or self.engine.connect()
        try:
            series_rows = conn.execute(_SERIES_MODALITIES_OF_STUDIES, {"ids": list(study_ids)}).all()
            inst_rows = conn.execute(_INSTANCE_COUNTS_OF_STUDIES, {"ids": list(study_ids)}).all()
        finally:
            if own:
                conn.close()
        result = {sid: StudyCounts(series=0, instances=0, modalities=[]) for sid in study_ids}
        mods: dict[int, set[str]] = {sid: set() for sid in study_ids}
        nseries: dict[int, int] = dict.fromkeys(study_ids, 0)
        for sid, modality in series_rows:
            nseries[sid] += 1
            if modality:
                mods[sid].add(modality)
        ninst = dict(inst_rows)
        for sid in study_ids:
            result[sid] = StudyCounts(
                series=nseries[sid], instances=ninst.get(sid, 0), modalities=sorted(mods[sid])
            )
        return result

    def series_instance_counts(self, series_ids: Sequence[int]) -> dict[int, int]:
        if not series_ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(_INSTANCE_COUNTS_OF_SERIES, {"ids": list(series_ids)}).all()
        return dict(rows)

    # -- key management --------------------------------------------------------------------------

    def key_counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(t.instances.c.kek_id, func.count()).group_by(t.instances.c.kek_id)
            ).all()
        return dict(rows)

    def iter_wrapped_keys(self, *, not_kek: str) -> Iterator[list[tuple[int, str, WrappedKey]]]:
        """Batches of (row id, blob key, wrapped key) still wrapped by a KEK other than ``not_kek``."""
        last_id = 0
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(
                        t.instances.c.id,
                        t.instances.c.blob_key,
                        t.instances.c.kek_id,
                        t.instances.c.wrapped_key,
                    )
                    .where(and_(t.instances.c.kek_id != not_kek, t.instances.c.id > last_id))
                    .order_by(t.instances.c.id)
                    .limit(_SCAN_BATCH)
                ).all()
            if not rows:
                return
            last_id = rows[-1].id
            yield [(r.id, r.blob_key, WrappedKey(kek_id=r.kek_id, blob=bytes(r.wrapped_key))) for r in rows]

    def replace_wrapped_keys(self, updates: Sequence[tuple[int, WrappedKey, str]]) -> int:
        """Swap wrapped keys in one transaction; each update applies only if the row still has the
        KEK it was read with (a concurrent delete or rotation wins). Returns rows changed."""
        changed = 0
        with self._write_lock, self._writer.begin() as conn:
            for row_id, wrapped, old_kek in updates:
                result = conn.execute(
                    update(t.instances)
                    .where(and_(t.instances.c.id == row_id, t.instances.c.kek_id == old_kek))
                    .values(kek_id=wrapped.kek_id, wrapped_key=wrapped.blob)
                )
                changed += result.rowcount
        return changed

    def iter_instances(self) -> Iterator[InstanceRecord]:
        """Every instance record, in storage order (for integrity sweeps)."""
        last_id = 0
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    _INSTANCES.where(t.instances.c.id > last_id).order_by(t.instances.c.id).limit(_SCAN_BATCH)
                ).all()
            if not rows:
                return
            last_id = rows[-1].id
            yield from (self._record(r) for r in rows)

    def outbox_done(self, ids: Sequence[int]) -> None:
        """Remove outbox rows whose events are in the ledger now."""
        if not ids:
            return
        with self._write_lock, self._writer.begin() as conn:
            for start in range(0, len(ids), _SCAN_BATCH):
                conn.execute(
                    delete(t.ledger_outbox).where(
                        t.ledger_outbox.c.id.in_(list(ids[start : start + _SCAN_BATCH]))
                    )
                )

    def outbox_published(self, ids: Sequence[int]) -> None:
        """Outbox rows whose events the ledger now holds: deleted with this process's next write
        transaction (one commit less per stored group; C-STORE stores one instance per group).
        Until then they are harmless: if the process dies first, the rows are orphans whose
        events :func:`medvault.fsck.publish_outbox` finds in the ledger already, and it only
        clears them."""
        with self._write_lock:
            self._published.extend(ids)
            overdue = len(self._published) >= _SCAN_BATCH
        if overdue:
            self.flush_published()

    def flush_published(self) -> None:
        """Delete the published outbox rows now (at close, and when many are waiting)."""
        with self._write_lock:
            if not self._published:
                return
            with self._writer.begin() as conn:
                self._delete_published(conn)

    def _delete_published(self, conn: Any) -> None:
        """Inside a write transaction, holding the write lock."""
        ids, self._published = self._published, []
        for start in range(0, len(ids), _SCAN_BATCH):
            chunk = ids[start : start + _SCAN_BATCH]
            if len(chunk) == 1:  # the previous C-STORE's row: no expanding IN to compile
                conn.execute(_DELETE_OUTBOX_ROW, {"id": chunk[0]})
            else:
                conn.execute(_DELETE_OUTBOX_ROWS, {"ids": chunk})

    def outbox_rows(self) -> list[OutboxRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.ledger_outbox).order_by(t.ledger_outbox.c.id)).all()
        return [OutboxRow(r.id, r.owner, int(r.after_size), bytes(r.leaf)) for r in rows]

    def blob_keys(self) -> set[str]:
        """The storage key of every indexed instance (for reconciling storage with the index)."""
        with self.engine.connect() as conn:
            return {row[0] for row in conn.execute(select(t.instances.c.blob_key))}

    def storage_totals(self) -> tuple[int, int]:
        """(instances, bytes of their original encodings)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(func.count(), func.coalesce(func.sum(t.instances.c.size), 0))).one()
        return int(row[0]), int(row[1])

    def count_instances(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(t.instances)).scalar_one())
