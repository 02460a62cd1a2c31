"""Legal holds and study tombstones in the index: a hold on a patient, a study or a query blocks
every deletion of the studies it covers until it is lifted (medvault.compliance.holds places and
lifts them, ledgered; the archive's one delete path asks :meth:`LegalHoldStore.covering` inside
its delete transaction, so no door can get past it).

A query hold keeps its QIDO-style query (sealed: it may name a patient) and is evaluated when a
deletion is asked for, so it covers studies stored after it was placed as well as those stored
before. Reasons are sealed too; the ledger carries their SHA-256.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Connection, insert, select, update

from medvault.dicom.matching import Criterion
from medvault.dicom.query import parse_query
from medvault.errors import Conflict, Forbidden, InvalidInput, NotFound
from medvault.index.compliance_schema import TABLES, legal_holds, tombstones
from medvault.index.schema import metadata, studies
from medvault.index.store import Index, StudyFacts

HoldKind = Literal["patient", "study", "query"]
HOLD_KINDS: tuple[HoldKind, ...] = ("patient", "study", "query")
MAX_REASON = 2000
MAX_QUERY = 2000


class LegalHoldActive(Forbidden):
    """A deletion refused because legal holds cover the study (HTTP 403). Names the holds by id
    and kind only: their reasons and queries may name a patient."""

    def __init__(self, study_uid: str, holds: Sequence[LegalHold]) -> None:
        self.study_uid = study_uid
        self.hold_ids = tuple(h.id for h in holds)
        names = ", ".join(f"#{h.id} ({h.kind})" for h in holds)
        super().__init__(
            f"not deleted: study {study_uid} is under legal hold {names}",
            hint="A legal hold blocks every deletion until it is lifted: `medvault legal-hold list`, "
            "`medvault legal-hold lift ID --reason ...` (legalhold.manage).",
        )


@dataclass(frozen=True)
class LegalHold:
    id: int
    kind: HoldKind
    target: str  # patient: pseudonym (token hex); study: UID; query: ""
    query: str | None
    reason: str
    placed_by: str
    placed_at: datetime
    lifted_by: str | None = None
    lifted_at: datetime | None = None
    lift_reason: str | None = None

    @property
    def active(self) -> bool:
        return self.lifted_at is None

    def to_json(self) -> dict[str, Any]:
        """For holders of legalhold.manage (the reason and query are shown: they asked for them)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "study_uid": self.target if self.kind == "study" else None,
            "patient": self.target if self.kind == "patient" else None,  # pseudonym
            "query": self.query,
            "reason": self.reason,
            "placed_by": self.placed_by,
            "placed_at": self.placed_at.isoformat(),
            "active": self.active,
            "lifted_by": self.lifted_by,
            "lifted_at": self.lifted_at.isoformat() if self.lifted_at else None,
            "lift_reason": self.lift_reason,
        }


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def hold_criteria(query: str) -> list[Criterion]:
    """The matching criteria of a query hold (``Modality=CT&StudyDate=2019-2020``: QIDO-RS
    matching keys only); a 400 naming what is wrong."""
    if not query.strip():
        raise InvalidInput("a query hold needs a query, e.g. Modality=CT&StudyDate=20190101-20191231")
    if len(query) > MAX_QUERY:
        raise InvalidInput(f"a hold's query must be at most {MAX_QUERY} characters")
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise InvalidInput("the hold's query must look like Key=value&Key=value") from None
    parsed = parse_query(pairs)
    if parsed.include_tags or parsed.include_all or parsed.offset or parsed.limit is not None:
        raise InvalidInput("a hold's query takes matching keys only (no includefield, limit or offset)")
    if not parsed.criteria:
        raise InvalidInput("a hold's query needs at least one matching key")
    return parsed.criteria


class LegalHoldStore:
    """Legal holds and tombstones over the index's database (sealed with its field cipher)."""

    def __init__(self, index: Index) -> None:
        self._index = index
        self._cipher = index._cipher  # the index's own field cipher, one package
        self._writer = index.engine.execution_options(write=True)
        metadata.create_all(self._writer, tables=TABLES)

    def _seal(self, text: str, context: str) -> bytes:
        return self._cipher.encrypt(text.encode(), context=context.encode())

    def _open(self, blob: bytes | None, context: str) -> str | None:
        if blob is None:
            return None
        return self._cipher.decrypt(bytes(blob), context=context.encode()).decode()

    def _hold(self, row: Any) -> LegalHold:
        return LegalHold(
            id=row.id,
            kind=row.kind,
            target=row.target,
            query=self._open(row.query, f"legal-hold-query/{row.id}"),
            reason=self._open(row.reason, f"legal-hold/{row.id}") or "",
            placed_by=row.placed_by,
            placed_at=_aware(row.placed_at) or datetime.now(UTC),
            lifted_by=row.lifted_by,
            lifted_at=_aware(row.lifted_at),
            lift_reason=self._open(row.lift_reason, f"legal-hold-lift/{row.id}"),
        )

    # -- holds -----------------------------------------------------------------------------------

    def place(
        self, *, kind: HoldKind, target: str, query: str | None, reason: str, by: str, now: datetime
    ) -> LegalHold:
        """Record a hold (the caller has checked the target and ledgers it)."""
        if kind not in HOLD_KINDS:
            raise InvalidInput(f"a legal hold is on a patient, a study or a query, not {kind!r}")
        now = now.astimezone(UTC).replace(microsecond=0)
        with self._index._write_lock, self._writer.begin() as conn:
            hold_id = conn.execute(
                insert(legal_holds).values(
                    kind=kind,
                    target=target,
                    reason=b"",  # sealed below, bound to the row's id
                    placed_by=by,
                    placed_at=now,
                )
            ).inserted_primary_key[0]  # type: ignore[index]
            conn.execute(
                update(legal_holds)
                .where(legal_holds.c.id == hold_id)
                .values(
                    reason=self._seal(reason, f"legal-hold/{hold_id}"),
                    query=self._seal(query, f"legal-hold-query/{hold_id}") if query is not None else None,
                )
            )
        return self.get(int(hold_id))

    def lift(self, hold_id: int, *, reason: str, by: str, now: datetime) -> LegalHold:
        with self._index._write_lock, self._writer.begin() as conn:
            row = conn.execute(select(legal_holds).where(legal_holds.c.id == hold_id)).first()
            if row is None:
                raise NotFound(f"no legal hold {hold_id}")
            if row.lifted_at is not None:
                raise Conflict(f"legal hold {hold_id} was lifted already")
            conn.execute(
                update(legal_holds)
                .where(legal_holds.c.id == hold_id)
                .values(
                    lifted_by=by,
                    lifted_at=now.astimezone(UTC),
                    lift_reason=self._seal(reason, f"legal-hold-lift/{hold_id}"),
                )
            )
        return self.get(hold_id)

    def get(self, hold_id: int) -> LegalHold:
        with self._index.engine.connect() as conn:
            row = conn.execute(select(legal_holds).where(legal_holds.c.id == hold_id)).first()
        if row is None:
            raise NotFound(f"no legal hold {hold_id}")
        return self._hold(row)

    def holds(self, *, active: bool | None = True) -> list[LegalHold]:
        query = select(legal_holds).order_by(legal_holds.c.id)
        if active is True:
            query = query.where(legal_holds.c.lifted_at.is_(None))
        elif active is False:
            query = query.where(legal_holds.c.lifted_at.is_not(None))
        with self._index.engine.connect() as conn:
            return [self._hold(r) for r in conn.execute(query)]

    # -- which studies are held ------------------------------------------------------------------

    def covering(self, facts: StudyFacts) -> list[LegalHold]:
        """The holds in force on this study: by its UID, its patient, or a query it matches now."""
        found: list[LegalHold] = []
        for hold in self.holds(active=True):
            if hold.kind == "study" and hold.target == facts.study_uid:
                found.append(hold)
            elif hold.kind == "patient" and facts.patient is not None and hold.target == facts.patient:
                found.append(hold)
            elif (
                hold.kind == "query" and hold.query is not None and self._matches(hold.query, facts.study_uid)
            ):
                found.append(hold)
        return found

    def held_studies(self) -> dict[str, list[int]]:
        """Study UID -> ids of the holds in force on it, for every held study (one pass per hold)."""
        held: dict[str, list[int]] = {}
        active = self.holds(active=True)
        with self._index.engine.connect() as conn:
            for hold in active:
                uids: list[str] = []
                if hold.kind == "study":
                    uids = [hold.target]
                elif hold.kind == "patient":
                    rows = conn.execute(
                        select(studies.c.study_uid).where(
                            studies.c.patient_id_tok == bytes.fromhex(hold.target)
                        )
                    )
                    uids = [r[0] for r in rows]
                elif hold.query is not None:
                    hits = self._index.search("series", hold_criteria(hold.query))
                    uids = sorted({str(h.attributes["0020000D"]["Value"][0]) for h in hits})
                for uid in uids:
                    held.setdefault(uid, []).append(hold.id)
        return held

    def _matches(self, query: str, study_uid: str) -> bool:
        # Series level: study and series attributes (Modality) both take part in the match.
        return bool(self._index.search("series", hold_criteria(query), study_uid=study_uid, limit=1))

    def refuse_if_held(self, facts: StudyFacts) -> None:
        holds = self.covering(facts)
        if holds:
            raise LegalHoldActive(facts.study_uid, holds)

    # -- tombstones ------------------------------------------------------------------------------

    @staticmethod
    def tombstone(
        conn: Connection,
        facts: StudyFacts,
        *,
        by: str,
        cause: Literal["retention", "delete", "erasure"],
        rule: str | None,
        instances: int,
        now: datetime,
    ) -> None:
        """Inside the delete's own transaction: the study's tombstone."""
        conn.execute(
            insert(tombstones).values(
                study_uid=facts.study_uid,
                patient=facts.patient,
                deleted_at=now,
                deleted_by=by,
                cause=cause,
                rule=rule,
                instances=instances,
            )
        )

    def tombstones(self, study_uid: str | None = None) -> list[dict[str, Any]]:
        query = select(tombstones).order_by(tombstones.c.id)
        if study_uid is not None:
            query = query.where(tombstones.c.study_uid == study_uid)
        with self._index.engine.connect() as conn:
            return [
                {
                    "study_uid": r.study_uid,
                    "patient": r.patient,
                    "deleted_at": (_aware(r.deleted_at) or datetime.now(UTC)).isoformat(),
                    "deleted_by": r.deleted_by,
                    "cause": r.cause,
                    "rule": r.rule,
                    "instances": r.instances,
                }
                for r in conn.execute(query)
            ]
