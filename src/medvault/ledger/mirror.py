"""A mirror's verified copy of a remote ledger, and the checks that catch a log lying to it.

The mirror keeps every entry it fetched in a ledger file of its own (the same format, no signer),
so the history survives the archive. It never trusts a size or a root it did not recompute:

* a checkpoint must carry the log's signature (and, with a policy, the witnesses' cosignatures
  are counted); its root must equal the root the mirror computes *from its own copy* at that size.
  Entries already copied are never fetched again, so a log that rewrote them cannot make a later
  checkpoint match: that is an *inconsistent* log;
* two verified checkpoints with one size and different roots cannot both be true: a *split view*
  (the log shows different histories to different clients). Witnesses' views (their ``/latest``)
  are checked the same way, so a mirror shown a fork the witnesses never saw notices.

Alerts are kept in the mirror's file (``mirror_alerts``) with the offending notes as evidence.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medvault.errors import NoteInvalid
from medvault.ledger.policy import PolicyResult, WitnessPolicy
from medvault.ledger.store import Ledger

__all__ = ["MIRROR_FILE", "Mirror", "MirrorAlert"]

MIRROR_FILE = "mirror.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS mirror_checkpoints (
    id INTEGER PRIMARY KEY, size INTEGER NOT NULL, root BLOB NOT NULL, note BLOB NOT NULL,
    source TEXT NOT NULL, seen_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS mirror_checkpoints_size ON mirror_checkpoints (size);
CREATE TABLE IF NOT EXISTS mirror_alerts (
    id INTEGER PRIMARY KEY, at INTEGER NOT NULL, kind TEXT NOT NULL, message TEXT NOT NULL,
    evidence BLOB NOT NULL
);
"""


@dataclass(frozen=True)
class MirrorAlert:
    """Evidence that the log lies: ``kind`` is split_view, inconsistent or bad_signature."""

    at: int
    kind: str
    message: str
    evidence: bytes


class Mirror:
    """The mirror's folder: the copied log and what it saw. Not thread-safe; one process at a time."""

    def __init__(self, folder: Path, policy: WitnessPolicy) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        self.policy = policy
        self.origin = policy.logs[0].name
        self.ledger = Ledger.open(
            folder / MIRROR_FILE, signer=None, origin=self.origin, group_commit_interval=0
        )
        self._conn = sqlite3.connect(folder / MIRROR_FILE, isolation_level=None)
        self._conn.execute("PRAGMA busy_timeout = 30000")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        self._conn.close()
        self.ledger.close()

    @property
    def size(self) -> int:
        return self.ledger.size

    def append(self, start: int, entries: Sequence[bytes]) -> None:
        """Add fetched entries; ``start`` must be the current size (nothing is ever replaced)."""
        if start != self.ledger.size:
            raise NoteInvalid(f"entries from {start} offered to a mirror holding {self.ledger.size}")
        self.ledger.append_leaves(list(entries))

    def verify(self, note: bytes, source: str) -> PolicyResult | None:
        """Check a checkpoint from ``source`` (the log, or a witness); returns it if it verified.

        Its signature must verify; once the mirror holds its size, the root must be the one
        recomputed from the copy; no other verified checkpoint may give that size another root.
        """
        try:
            result = self.policy.check(note, origin=self.origin)
        except NoteInvalid as exc:
            self.alert("bad_signature", f"a checkpoint from {source} does not verify: {exc.message}", note)
            return None
        cp = result.checkpoint
        other = self._conn.execute(
            "SELECT note, source FROM mirror_checkpoints WHERE size = ? AND root != ? LIMIT 1",
            (cp.size, cp.root_hash),
        ).fetchone()
        if other is not None:
            self.alert(
                "split_view",
                f"two checkpoints of size {cp.size} with different roots: from {source} and from {other[1]}",
                note + b"\n" + bytes(other[0]),
            )
            return None
        if cp.size <= self.ledger.size and self.ledger.root(cp.size) != cp.root_hash:
            if source.startswith("witness"):  # the log showed us a history its witnesses never saw
                kind, why = "split_view", "the log serves this mirror a history its witnesses did not cosign"
            else:
                kind, why = "inconsistent", "the log was rewritten"
            self.alert(
                kind, f"the checkpoint of size {cp.size} from {source} does not match the copy: {why}", note
            )
            return None
        known = self._conn.execute(
            "SELECT 1 FROM mirror_checkpoints WHERE size = ? AND source = ?", (cp.size, source)
        ).fetchone()
        if known is None:
            self._conn.execute(
                "INSERT INTO mirror_checkpoints (size, root, note, source, seen_at) VALUES (?, ?, ?, ?, ?)",
                (cp.size, cp.root_hash, note, source, int(time.time())),
            )
        return result

    def recheck(self) -> int:
        """Compare every recorded checkpoint the copy now covers with the copy; returns alerts raised."""
        raised = 0
        rows = self._conn.execute(
            "SELECT id, size, root, note, source FROM mirror_checkpoints WHERE size <= ?", (self.ledger.size,)
        ).fetchall()
        for cid, size, root, note, source in rows:
            if self.ledger.root(int(size)) != bytes(root):
                self.alert(
                    "inconsistent",
                    f"the checkpoint of size {size} from {source} does not match the entries copied: "
                    "the log served entries that its own checkpoint does not cover",
                    bytes(note),
                )
                self._conn.execute("DELETE FROM mirror_checkpoints WHERE id = ?", (cid,))
                raised += 1
        return raised

    def alert(self, kind: str, message: str, evidence: bytes) -> MirrorAlert:
        now = int(time.time())
        self._conn.execute(
            "INSERT INTO mirror_alerts (at, kind, message, evidence) VALUES (?, ?, ?, ?)",
            (now, kind, message, evidence),
        )
        return MirrorAlert(now, kind, message, evidence)

    def alerts(self, after: int = 0) -> list[tuple[int, MirrorAlert]]:
        rows = self._conn.execute(
            "SELECT id, at, kind, message, evidence FROM mirror_alerts WHERE id > ? ORDER BY id", (after,)
        ).fetchall()
        return [(int(i), MirrorAlert(int(at), str(k), str(m), bytes(e))) for i, at, k, m, e in rows]
