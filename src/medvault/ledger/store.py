"""The durable ledger: one SQLite file (WAL, synchronous=FULL) of entries, tree nodes and checkpoints.

Schema (``PRAGMA user_version = 1``)::

    meta        (key TEXT PRIMARY KEY, value TEXT)          -- origin, format
    entries     (idx INTEGER PRIMARY KEY, data BLOB)        -- leaf bytes, exactly as hashed and served
    tree        (level, idx, hash) PRIMARY KEY(level, idx)  -- root of every COMPLETE subtree:
                                                            -- leaves [idx*2^level, (idx+1)*2^level)
    checkpoints (id INTEGER PRIMARY KEY, size, note BLOB)   -- every signed checkpoint ever issued
    cosignatures (checkpoint_id, witness, line)             -- witnesses' cosignature lines on them

Sequencing and integration happen in one ``BEGIN IMMEDIATE`` transaction: the writer (whichever
thread or process holds SQLite's write lock) reads the size, assigns the next indices, and writes
the entries and the subtree hashes they complete, so the tree can never disagree with the entries
and no checkpoint can cover an entry that is not durable. Level-0 rows are the leaf hashes; every
append adds on average one more row per leaf (the subtrees it completes). The root of ANY size
m <= n and every proof are computed from at most O(log n) stored subtree hashes.

Durability: :meth:`Ledger.append` and :meth:`Ledger.append_many` return only after COMMIT under
``synchronous=FULL`` (WAL fsynced). :meth:`Ledger.record` queues a *read* event for a group commit
by a background thread (every ``group_commit_interval`` seconds) or by :meth:`Ledger.flush`; a
crash may lose queued read events, never a returned index.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

from medvault.errors import InvalidInput, LedgerError, LedgerTampered, NotFound
from medvault.ledger.events import AuditEvent, canonical_bytes
from medvault.ledger.merkle import (
    EMPTY_ROOT,
    ConsistencyProof,
    InclusionProof,
    consistency_path,
    fold_peaks,
    inclusion_path,
    leaf_hash,
    node_hash,
    range_hash,
    subtree_decomposition,
)
from medvault.ledger.note import Signer, format_checkpoint

__all__ = ["DEFAULT_GROUP_COMMIT_INTERVAL", "SCHEMA_VERSION", "Ledger"]

SCHEMA_VERSION = 1
DEFAULT_GROUP_COMMIT_INTERVAL = 0.05  # seconds a queued read event may wait for its commit
MAX_GROUP_BATCH = 4096
BUSY_TIMEOUT_MS = 30_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entries (idx INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS tree (
    level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY, size INTEGER NOT NULL, note BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS cosignatures (
    checkpoint_id INTEGER NOT NULL, witness TEXT NOT NULL, line TEXT NOT NULL,
    PRIMARY KEY (checkpoint_id, witness)
) WITHOUT ROWID;
"""


def connect(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """A connection in autocommit mode with the ledger's pragmas (WAL, synchronous=FULL). The
    file is created owner-only (0600): the ledger names users and their addresses, and SQLite
    gives its -wal and -shm files the database's own mode."""
    if str(path) != ":memory:":
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
    conn = sqlite3.connect(os.fspath(path), isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


def peak_nodes(size: int) -> list[tuple[int, int]]:
    """The complete subtrees ``(level, idx)`` of a tree of ``size`` leaves, largest first."""
    return subtree_decomposition(0, size) if size else []


class Ledger:
    """An append-only RFC 9162 Merkle log of audit events, stored in one SQLite file.

    Safe to share between threads; several processes may open the same file and append.
    """

    def __init__(
        self, conn: sqlite3.Connection, *, signer: Signer | None, origin: str, group_commit_interval: float
    ) -> None:
        self._conn = conn
        self._signer = signer
        self.origin = origin
        self._lock = threading.RLock()  # one connection, one user at a time
        self._interval = group_commit_interval
        self._peaks_cache: tuple[int, list[bytes]] = (0, [])
        # group commit of read events
        self._pending: list[bytes] = []
        self._cond = threading.Condition()
        self._flush_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._bg_error: BaseException | None = None

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        signer: Signer | None,
        origin: str,
        group_commit_interval: float = DEFAULT_GROUP_COMMIT_INTERVAL,
    ) -> Ledger:
        """Open (creating if needed) the ledger at ``path`` for log ``origin``.

        ``signer`` signs checkpoints; a process that only appends may pass ``None``. Opening an
        existing ledger under another origin is refused.
        """
        format_checkpoint(origin, 0, EMPTY_ROOT)  # validates the origin line
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = connect(path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            row = conn.execute("SELECT value FROM meta WHERE key = 'origin'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('origin', ?)", (origin,))
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
            raise
        if row is not None and row[0] != origin:
            conn.close()
            raise LedgerError(f"ledger at {os.fspath(path)} is for origin {row[0]!r}, not {origin!r}")
        return cls(conn, signer=signer, origin=origin, group_commit_interval=group_commit_interval)

    # --- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Flush queued read events, stop the group-commit thread, close the file."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        try:
            self.flush()
        finally:
            with self._lock:
                self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- appending ---------------------------------------------------------------------------

    def append(self, event: AuditEvent) -> int:
        """Append one event durably and return its index."""
        return self._append_leaves([canonical_bytes(event)])[0]

    def append_many(self, events: Iterable[AuditEvent]) -> list[int]:
        """Append events in ONE durable transaction; returns their (consecutive) indices."""
        return self._append_leaves([canonical_bytes(e) for e in events])

    def append_leaves(self, leaves: Sequence[bytes]) -> list[int]:
        """Append raw leaf bytes in ONE durable transaction, exactly as given.

        For a mirror keeping a copy of another log (the bytes it was served), and for events the
        archive wrote to its outbox as canonical bytes (:mod:`medvault.index.outbox`).
        """
        return self._append_leaves(leaves)

    def present_leaves(self, leaves: Sequence[bytes], *, start: int) -> set[bytes]:
        """Which of ``leaves`` the log holds at an index of ``start`` or later."""
        wanted = set(leaves)
        found: set[bytes] = set()
        with self._lock:
            for (data,) in self._conn.execute("SELECT data FROM entries WHERE idx >= ?", (max(0, start),)):
                if bytes(data) in wanted:
                    found.add(bytes(data))
        return found

    def record(self, event: AuditEvent) -> None:
        """Queue a READ event (query, retrieve) for the next group commit; returns at once.

        Change events must go through :meth:`append`: they are acknowledged only once durable.
        """
        if not event.kind.is_read:
            raise InvalidInput(f"{event.kind.value} is a change event: append() it durably")
        data = canonical_bytes(event)
        with self._cond:
            self._raise_background_error()
            if self._closing:
                raise LedgerError("the ledger is closed")
            self._pending.append(data)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._group_commit_loop, name="ledger-group-commit", daemon=True
                )
                self._thread.start()
            if len(self._pending) >= MAX_GROUP_BATCH:
                self._cond.notify_all()

    def flush(self) -> list[int]:
        """Commit every queued read event now (one transaction); returns their indices."""
        with self._flush_lock:
            with self._cond:
                self._raise_background_error()
                batch, self._pending = self._pending, []
            if not batch:
                return []
            try:
                return self._append_leaves(batch)
            except BaseException:
                with self._cond:
                    self._pending[:0] = batch  # keep them for the next try
                raise

    def _raise_background_error(self) -> None:
        if self._bg_error is not None:
            err, self._bg_error = self._bg_error, None
            raise LedgerError(f"group commit of read events failed: {err}") from err

    def _group_commit_loop(self) -> None:
        while True:
            with self._cond:
                if self._closing:
                    return
                self._cond.wait(timeout=self._interval)
                if self._closing:
                    return
            try:
                self.flush()
            except Exception as exc:  # kept and re-raised to the next caller of record/flush
                with self._cond:
                    self._bg_error = exc

    def _append_leaves(self, leaves: Sequence[bytes]) -> list[int]:
        if not leaves:
            return []
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")  # serializes index assignment across processes
            try:
                size = self._size()
                peaks = self._peaks(size)
                nodes: list[tuple[int, int, bytes]] = []
                for offset, data in enumerate(leaves):
                    i = size + offset
                    h = leaf_hash(data)
                    nodes.append((0, i, h))
                    peaks.append(h)
                    level, idx, count = 0, i, i + 1
                    while count & 1 == 0:  # each trailing zero bit completes one subtree
                        right = peaks.pop()
                        h = node_hash(peaks[-1], right)
                        peaks[-1] = h
                        level, idx, count = level + 1, idx >> 1, count >> 1
                        nodes.append((level, idx, h))
                conn.executemany(
                    "INSERT INTO entries (idx, data) VALUES (?, ?)",
                    [(size + j, d) for j, d in enumerate(leaves)],
                )
                conn.executemany("INSERT INTO tree (level, idx, hash) VALUES (?, ?, ?)", nodes)
                conn.execute("COMMIT")
            except BaseException:
                self._peaks_cache = (0, [])
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            new_size = size + len(leaves)
            self._peaks_cache = (new_size, peaks)
            return list(range(size, new_size))

    # --- reading -----------------------------------------------------------------------------

    def _size(self) -> int:
        row = self._conn.execute("SELECT max(idx) FROM entries").fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def _node(self, level: int, idx: int) -> bytes:
        row = self._conn.execute("SELECT hash FROM tree WHERE level = ? AND idx = ?", (level, idx)).fetchone()
        if row is None:
            raise LedgerTampered(f"tree node (level {level}, index {idx}) is missing; run verify")
        return bytes(row[0])

    def _peaks(self, size: int) -> list[bytes]:
        cached_size, cached = self._peaks_cache
        if cached_size == size and (size == 0 or cached):
            return list(cached)
        return [self._node(level, idx) for level, idx in peak_nodes(size)]

    @property
    def size(self) -> int:
        """The number of durable entries (all processes)."""
        with self._lock:
            return self._size()

    def entry(self, index: int) -> bytes:
        """The exact leaf bytes at ``index`` (as hashed and as served)."""
        with self._lock:
            row = self._conn.execute("SELECT data FROM entries WHERE idx = ?", (index,)).fetchone()
        if row is None:
            raise NotFound(f"ledger entry {index} does not exist")
        return bytes(row[0])

    def entries(self, start: int, stop: int) -> list[bytes]:
        """Leaf bytes for indices ``[start, stop)`` that exist, in order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT data FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx", (start, stop)
            ).fetchall()
        return [bytes(r[0]) for r in rows]

    def _check_size(self, size: int) -> None:
        current = self._size()
        if not 0 <= size <= current:
            raise InvalidInput(f"tree size {size} is beyond the ledger's size {current}")

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` entries (default: all), from O(log n) stored subtree hashes."""
        with self._lock:
            if size is None:
                size = self._size()
            self._check_size(size)
            return self._root(size)

    def _root(self, size: int) -> bytes:
        return fold_peaks(self._peaks(size)) if size else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int) -> InclusionProof:
        """RFC 9162 §2.1.3 proof that entry ``index`` is in the tree of ``size`` entries."""
        with self._lock:
            self._check_size(size)
            if not 0 <= index < size:
                raise InvalidInput(f"leaf index {index} is outside tree size {size}")
            hashes = tuple(range_hash(r, self._node) for r in inclusion_path(index, size))
        return InclusionProof(index=index, tree_size=size, hashes=hashes)

    def consistency_proof(self, first: int, second: int) -> ConsistencyProof:
        """RFC 9162 §2.1.4 proof that the tree of ``second`` entries extends that of ``first``."""
        with self._lock:
            self._check_size(second)
            if not 0 <= first <= second:
                raise InvalidInput(f"no consistency proof from size {first} to size {second}")
            ranges = consistency_path(first, second) if first else []
            hashes = tuple(range_hash(r, self._node) for r in ranges)
        return ConsistencyProof(first=first, second=second, hashes=hashes)

    # --- checkpoints ---------------------------------------------------------------------------

    def checkpoint(self) -> bytes:
        """Sign, store and return a checkpoint (C2SP signed note) for the current size."""
        if self._signer is None:
            raise LedgerError("this ledger was opened without a signer; it cannot sign checkpoints")
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                size = self._size()
                note = self._signer.sign_checkpoint(self.origin, size, self._root(size))
                conn.execute("INSERT INTO checkpoints (size, note) VALUES (?, ?)", (size, note))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return note

    def latest_checkpoint(self) -> bytes | None:
        """The most recently stored checkpoint note, with the cosignatures it has gathered, or
        ``None`` before the first."""
        record = self.latest_checkpoint_record()
        return None if record is None else self._with_cosignatures(record[0], record[2])

    def latest_checkpoint_record(self) -> tuple[int, int, bytes] | None:
        """(id, tree size, note as signed by the log) of the newest checkpoint."""
        with self._lock:
            row = self._conn.execute(
                "SELECT id, size, note FROM checkpoints ORDER BY id DESC LIMIT 1"
            ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]), bytes(row[2]))

    def add_cosignatures(self, checkpoint_id: int, lines: dict[str, str]) -> None:
        """Keep witnesses' cosignature lines (witness name -> line) of a stored checkpoint. The
        caller has verified them; a newer line from the same witness replaces the older."""
        with self._lock:
            self._conn.executemany(
                "INSERT OR REPLACE INTO cosignatures (checkpoint_id, witness, line) VALUES (?, ?, ?)",
                [(checkpoint_id, name, line) for name, line in lines.items()],
            )

    def cosigners(self, checkpoint_id: int) -> set[str]:
        """The witnesses whose cosignature of checkpoint ``checkpoint_id`` is kept."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT witness FROM cosignatures WHERE checkpoint_id = ?", (checkpoint_id,)
            ).fetchall()
        return {str(name) for (name,) in rows}

    def cosigned_checkpoint(self, witnesses: int) -> bytes | None:
        """The newest checkpoint cosigned by at least ``witnesses`` witnesses, with those
        cosignatures, or ``None`` if none is."""
        with self._lock:
            # Walks the cosignatures' primary key from the newest checkpoint down and stops at the
            # first with enough: a request never scans the (ever-growing) checkpoints table.
            row = self._conn.execute(
                "SELECT c.id, c.note FROM checkpoints c WHERE c.id = (SELECT checkpoint_id FROM cosignatures "
                "GROUP BY checkpoint_id HAVING COUNT(*) >= ? ORDER BY checkpoint_id DESC LIMIT 1)",
                (witnesses,),
            ).fetchone()
        return None if row is None else self._with_cosignatures(int(row[0]), bytes(row[1]))

    def _with_cosignatures(self, checkpoint_id: int, note: bytes) -> bytes:
        with self._lock:
            lines = self._conn.execute(
                "SELECT line FROM cosignatures WHERE checkpoint_id = ? ORDER BY witness", (checkpoint_id,)
            ).fetchall()
        return note + "".join(line for (line,) in lines).encode("utf-8")

    def verifier_key_text(self) -> str:
        """The note verifier key of this ledger's signer (served at /ledger/key)."""
        if self._signer is None:
            raise LedgerError("this ledger was opened without a signer")
        return self._signer.verifier_key_text()
