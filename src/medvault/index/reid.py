"""Re-identification maps of de-identified exports, encrypted in the index.

An export keeps its map only when asked (``keep_map``). The map links every replaced UID and
patient pseudonym to the original and is therefore PHI: it is stored as one ``FieldCipher``
ciphertext per export (AES-256-GCM under the keyring's index key, context ``b"reid/" + project``,
so a row moved to another project does not decrypt). Nothing of it is in clear in the database.

Reading a map needs the opened home (the keyring passphrase) and is ledgered by the caller
(:func:`medvault.export.read_reid_map`); no HTTP route serves it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, insert, select

from medvault.crypto.fields import FieldCipher
from medvault.dicom.deid import PatientEntry, ReidentificationMap
from medvault.errors import IntegrityError, NotFound
from medvault.index.reid_schema import reid_maps

__all__ = ["ReidMapInfo", "ReidMapStore", "map_from_json", "map_to_json"]


def _context(project: str) -> bytes:
    return b"reid/" + project.encode("utf-8")


def map_to_json(mapping: ReidentificationMap) -> dict[str, Any]:
    return {
        "uids": dict(sorted(mapping.uids.items())),
        "patients": {
            original: {
                "pseudonym_id": entry.pseudonym_id,
                "pseudonym_name": entry.pseudonym_name,
                "date_offset_days": entry.date_offset_days,
            }
            for original, entry in sorted(mapping.patients.items())
        },
    }


def map_from_json(data: dict[str, Any]) -> ReidentificationMap:
    try:
        return ReidentificationMap(
            uids={str(k): str(v) for k, v in data["uids"].items()},
            patients={
                str(k): PatientEntry(
                    pseudonym_id=str(v["pseudonym_id"]),
                    pseudonym_name=str(v["pseudonym_name"]),
                    date_offset_days=None if v["date_offset_days"] is None else int(v["date_offset_days"]),
                )
                for k, v in data["patients"].items()
            },
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise IntegrityError("a stored re-identification map is malformed") from None


@dataclass(frozen=True)
class ReidMapInfo:
    """One kept map, without its content."""

    project: str
    export_id: str
    actor: str
    created_at: datetime


class ReidMapStore:
    """The kept maps, over the index's engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine, *, cipher: FieldCipher) -> None:
        self.engine = engine
        self._writer = engine.execution_options(write=True)
        self._cipher = cipher
        reid_maps.create(self._writer, checkfirst=True)

    def save(
        self, project: str, mapping: ReidentificationMap, *, export_id: str, actor: str, now: datetime
    ) -> None:
        raw = json.dumps(map_to_json(mapping), separators=(",", ":"), ensure_ascii=False).encode()
        doc = self._cipher.encrypt(raw, context=_context(project))
        with self._writer.begin() as conn:
            conn.execute(
                insert(reid_maps).values(
                    project=project, export_id=export_id, actor=actor[:255], created_at=now, doc=doc
                )
            )

    def kept(self, project: str | None = None) -> list[ReidMapInfo]:
        query = select(reid_maps.c.project, reid_maps.c.export_id, reid_maps.c.actor, reid_maps.c.created_at)
        if project is not None:
            query = query.where(reid_maps.c.project == project)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(reid_maps.c.id)).all()
        return [ReidMapInfo(r.project, r.export_id, r.actor, r.created_at) for r in rows]

    def load(self, project: str, *, export_id: str | None = None) -> ReidentificationMap:
        """The project's maps merged (or one export's); ``NotFound`` when none was kept."""
        query = select(reid_maps.c.doc).where(reid_maps.c.project == project)
        if export_id is not None:
            query = query.where(reid_maps.c.export_id == export_id)
        with self.engine.connect() as conn:
            docs = conn.execute(query.order_by(reid_maps.c.id)).scalars().all()
        if not docs:
            raise NotFound(f"no re-identification map is kept for project {project!r}")
        merged = ReidentificationMap()
        for doc in docs:
            merged.merge(map_from_json(json.loads(self._cipher.decrypt(doc, context=_context(project)))))
        return merged

    def delete(self, project: str) -> int:
        """Drop a project's maps (SQLite ``secure_delete`` overwrites the freed pages)."""
        with self._writer.begin() as conn:
            return conn.execute(delete(reid_maps).where(reid_maps.c.project == project)).rowcount
