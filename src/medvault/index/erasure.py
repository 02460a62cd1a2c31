"""Erasure requests (GDPR Art. 17) and their states, over the index's database.

    requested --approve (a second person)--> approved --execute--> executed
        \\--cancel--> cancelled            \\--cancel--> cancelled

The patient is held by keyed pseudonym (blind-index token in hex, as in the ledger); the reference
is a ticket number (checked by the caller); the grounds given are sealed with the index's cipher.
A state changes only from the state before it, in one transaction, so two officers pressing
"execute" at once erase once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from sqlalchemy import Column, DateTime, Integer, LargeBinary, String, Table, insert, select, update

from medvault.errors import Conflict, NotFound
from medvault.index.schema import metadata
from medvault.index.store import Index

__all__ = ["STATES", "ErasureRequest", "ErasureStore", "State"]

State = Literal["requested", "approved", "executed", "cancelled"]
STATES: Final = ("requested", "approved", "executed", "cancelled")

erasure_requests = Table(
    "erasure_requests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("patient", String(128), nullable=False, index=True),  # keyed pseudonym (hex)
    Column("reference", String(64), nullable=False),
    Column("grounds", LargeBinary, nullable=False),  # sealed
    Column("state", String(16), nullable=False),
    Column("requested_by", String(255), nullable=False),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("approved_by", String(255), nullable=True),
    Column("approved_at", DateTime(timezone=True), nullable=True),
    Column("executed_by", String(255), nullable=True),
    Column("executed_at", DateTime(timezone=True), nullable=True),
    Column("cancelled_by", String(255), nullable=True),
    Column("cancelled_at", DateTime(timezone=True), nullable=True),
    Column("studies", Integer, nullable=True),  # erased, once executed
    Column("instances", Integer, nullable=True),
)


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ErasureRequest:
    id: int
    patient: str
    reference: str
    grounds: str
    state: State
    requested_by: str
    requested_at: datetime
    approved_by: str | None
    approved_at: datetime | None
    executed_by: str | None
    executed_at: datetime | None
    cancelled_by: str | None
    cancelled_at: datetime | None
    studies: int | None
    instances: int | None

    def to_json(self) -> dict[str, Any]:
        def when(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "id": self.id,
            "patient": self.patient,
            "reference": self.reference,
            "grounds": self.grounds,
            "state": self.state,
            "requested_by": self.requested_by,
            "requested_at": when(self.requested_at),
            "approved_by": self.approved_by,
            "approved_at": when(self.approved_at),
            "executed_by": self.executed_by,
            "executed_at": when(self.executed_at),
            "cancelled_by": self.cancelled_by,
            "cancelled_at": when(self.cancelled_at),
            "studies": self.studies,
            "instances": self.instances,
        }


class ErasureStore:
    def __init__(self, index: Index) -> None:
        self._index = index
        self._cipher = index._cipher  # the index's own field cipher, one package
        self._writer = index.engine.execution_options(write=True)
        metadata.create_all(self._writer, tables=[erasure_requests])

    def _request(self, row: Any) -> ErasureRequest:
        grounds = self._cipher.decrypt(bytes(row.grounds), context=f"erasure/{row.id}".encode()).decode()
        return ErasureRequest(
            id=row.id,
            patient=row.patient,
            reference=row.reference,
            grounds=grounds,
            state=row.state,
            requested_by=row.requested_by,
            requested_at=_aware(row.requested_at) or datetime.now(UTC),
            approved_by=row.approved_by,
            approved_at=_aware(row.approved_at),
            executed_by=row.executed_by,
            executed_at=_aware(row.executed_at),
            cancelled_by=row.cancelled_by,
            cancelled_at=_aware(row.cancelled_at),
            studies=row.studies,
            instances=row.instances,
        )

    def add(self, *, patient: str, reference: str, grounds: str, by: str, now: datetime) -> ErasureRequest:
        with self._index._write_lock, self._writer.begin() as conn:
            new_id = conn.execute(
                insert(erasure_requests).values(
                    patient=patient,
                    reference=reference,
                    grounds=b"",  # sealed below, bound to the row's id
                    state="requested",
                    requested_by=by,
                    requested_at=now,
                )
            ).inserted_primary_key[0]  # type: ignore[index]
            sealed = self._cipher.encrypt(grounds.encode(), context=f"erasure/{new_id}".encode())
            conn.execute(
                update(erasure_requests).where(erasure_requests.c.id == new_id).values(grounds=sealed)
            )
        return self.get(int(new_id))

    def get(self, request_id: int) -> ErasureRequest:
        with self._index.engine.connect() as conn:
            row = conn.execute(select(erasure_requests).where(erasure_requests.c.id == request_id)).first()
        if row is None:
            raise NotFound(f"no erasure request {request_id}")
        return self._request(row)

    def requests(self, *, state: State | None = None) -> list[ErasureRequest]:
        query = select(erasure_requests).order_by(erasure_requests.c.id)
        if state is not None:
            query = query.where(erasure_requests.c.state == state)
        with self._index.engine.connect() as conn:
            return [self._request(r) for r in conn.execute(query)]

    def move(
        self,
        request_id: int,
        *,
        frm: State | tuple[State, ...],
        to: State,
        by: str,
        now: datetime,
        **values: int,
    ) -> ErasureRequest:
        """Change the state, only from ``frm``; :class:`Conflict` naming the state it is in otherwise."""
        allowed = (frm,) if isinstance(frm, str) else frm
        stamp = {"approved": "approved", "executed": "executed", "cancelled": "cancelled"}[to]
        with self._index._write_lock, self._writer.begin() as conn:
            changed = conn.execute(
                update(erasure_requests)
                .where(erasure_requests.c.id == request_id, erasure_requests.c.state.in_(allowed))
                .values(state=to, **{f"{stamp}_by": by, f"{stamp}_at": now}, **values)
            ).rowcount
        if changed != 1:
            current = self.get(request_id)  # NotFound when there is none
            raise Conflict(f"erasure request {request_id} is {current.state}, not {' or '.join(allowed)}")
        return self.get(request_id)
