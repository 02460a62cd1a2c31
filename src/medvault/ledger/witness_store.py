"""A witness's durable view: the latest checkpoint it cosigned per log, in one SQLite file.

Check and update happen in one ``BEGIN IMMEDIATE`` transaction (WAL, synchronous=FULL), and the
cosignature leaves only after the commit: a witness killed at any point has either not answered or
holds what it answered for, and two concurrent requests cannot roll the view back (the race the
tlog-witness spec warns of). Refused requests whose checkpoint carried a valid log signature are
kept too (bounded): a consistency failure or a second root for a size is evidence against the log.

Schema::

    logs     (origin TEXT PRIMARY KEY, size TEXT, root BLOB, note BLOB, cosigned_at INTEGER)
    refusals (id INTEGER PRIMARY KEY, at INTEGER, origin TEXT, status INTEGER, reason TEXT, note BLOB)
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from medvault.errors import WitnessRefused
from medvault.ledger.note import Verifier
from medvault.ledger.witness import AddCheckpoint, Recorded, check_add_checkpoint, check_signed

__all__ = ["MAX_REFUSALS", "Refusal", "WitnessStore"]

MAX_REFUSALS = 10_000
_EVIDENCE = (409, 422)  # refusals that happen after the log's signature verified

_SCHEMA = """
CREATE TABLE IF NOT EXISTS logs (
    origin TEXT PRIMARY KEY, size TEXT NOT NULL, root BLOB NOT NULL, note BLOB NOT NULL,
    cosigned_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS refusals (
    id INTEGER PRIMARY KEY, at INTEGER NOT NULL, origin TEXT NOT NULL, status INTEGER NOT NULL,
    reason TEXT NOT NULL, note BLOB NOT NULL
);
"""


@dataclass(frozen=True)
class Refusal:
    """A signed checkpoint the witness would not cosign, kept as evidence."""

    at: int
    origin: str
    status: int
    reason: str
    note: bytes


class WitnessStore:
    """The witness's state file. Thread-safe; safe across processes through SQLite's locks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # private from its first byte
        os.close(fd)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> WitnessStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def latest(self, origin: str) -> Recorded | None:
        with self._lock:
            return self._latest(origin)

    def views(self) -> list[Recorded]:
        with self._lock:
            rows = self._conn.execute("SELECT origin, size, root, note FROM logs ORDER BY origin").fetchall()
        return [Recorded(origin=o, size=int(s), root_hash=bytes(r), note=bytes(n)) for o, s, r, n in rows]

    def refusals(self, limit: int = 100) -> list[Refusal]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT at, origin, status, reason, note FROM refusals ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [Refusal(at, origin, status, reason, bytes(note)) for at, origin, status, reason, note in rows]

    def _latest(self, origin: str) -> Recorded | None:
        row = self._conn.execute("SELECT size, root, note FROM logs WHERE origin = ?", (origin,)).fetchone()
        if row is None:
            return None
        return Recorded(origin=origin, size=int(row[0]), root_hash=bytes(row[1]), note=bytes(row[2]))

    def add_checkpoint(
        self,
        request: AddCheckpoint,
        logs: Mapping[str, Sequence[Verifier]],
        cosign: Callable[[Recorded], str],
        *,
        now: int,
    ) -> str:
        """Check ``request`` against the recorded view, record it, and return ``cosign``'s lines.

        Raises :class:`WitnessRefused` (nothing recorded but, for 409/422, the evidence).
        """
        check_signed(request, logs)  # unknown, unsigned or malformed: refused before the lock
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                try:
                    recorded = check_add_checkpoint(request, logs, self._current(request, logs))
                except WitnessRefused as refused:
                    if refused.http_status in _EVIDENCE:
                        self._keep_refusal(request, refused, now)
                    conn.execute("COMMIT")
                    raise
                lines = cosign(recorded)
                conn.execute(
                    "INSERT INTO logs (origin, size, root, note, cosigned_at) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT(origin) DO UPDATE SET size = excluded.size, root = excluded.root, "
                    "note = excluded.note, cosigned_at = excluded.cosigned_at",
                    (recorded.origin, str(recorded.size), recorded.root_hash, recorded.note, now),
                )
                conn.execute("COMMIT")
                return lines
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _current(self, request: AddCheckpoint, logs: Mapping[str, Sequence[Verifier]]) -> Recorded | None:
        text = request.note.split(b"\n", 1)[0]
        try:
            origin = text.decode("utf-8")
        except UnicodeDecodeError:
            return None  # check_add_checkpoint refuses it with the right reason
        return self._latest(origin) if origin in logs else None

    def _keep_refusal(self, request: AddCheckpoint, refused: WitnessRefused, now: int) -> None:
        origin = request.note.split(b"\n", 1)[0].decode("utf-8", "replace")
        self._conn.execute(
            "INSERT INTO refusals (at, origin, status, reason, note) VALUES (?, ?, ?, ?, ?)",
            (now, origin, refused.http_status, refused.message, request.note),
        )
        self._conn.execute(
            "DELETE FROM refusals WHERE id <= (SELECT MAX(id) FROM refusals) - ?", (MAX_REFUSALS,)
        )
