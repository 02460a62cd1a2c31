"""``fsck`` for the ledger: rebuild the tree from the stored entries and check everything against it.

What :func:`verify_ledger` checks, in one pass over the file:

1. entries are numbered 0, 1, 2, … without gaps (a gap names the first removed entry);
2. each entry's bytes hash to the leaf hash stored when it was appended (names the first entry
   altered, moved by a swap, or inserted; an entry without a stored leaf hash was inserted);
3. every stored subtree hash equals the one recomputed from the entries (proofs would be wrong);
4. no leaf hashes remain for entries past the end (the log was truncated);
5. every stored checkpoint carries a valid signature by ``verifier_key`` for this origin, its
   tree size is not beyond the log (rollback), its root equals the recomputed root of that size,
   no two checkpoints disagree, and consecutive checkpoints are linked by consistency proofs
   served from the stored tree (RFC 9162 §2.1.4.2);
6. the ``trusted_checkpoint`` you kept from earlier, if given: same checks (a log rolled back
   behind it is reported);
7. with a witness ``policy`` (docs/witness.md): every kept cosignature verifies, some checkpoint
   is cosigned by a quorum (the newest such is reported as ``witnessed``), and each witness's own
   view (``witness_views``, the cosigned checkpoints witnesses serve) matches the rebuilt tree: a
   ledger rewritten and re-signed by the archive's own key fails here, because the witnesses
   still hold the old roots.

Against someone who rewrites the entries *and* the stored hashes consistently, only the signed
checkpoints are evidence: the report then names the range between the last matching checkpoint
and the first mismatching one, and gives its start as ``first_bad_index``.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medvault.errors import LedgerTampered, MedvaultError, NoteInvalid, NotFound
from medvault.ledger.merkle import EMPTY_ROOT, fold_peaks, leaf_hash, node_hash
from medvault.ledger.note import Checkpoint, Verifier, parse_and_verify
from medvault.ledger.policy import PolicyResult, WitnessPolicy
from medvault.ledger.store import DEFAULT_GROUP_COMMIT_INTERVAL, Ledger, connect

__all__ = ["VerifyReport", "verify_ledger"]

_BATCH = 8192


@dataclass(frozen=True, kw_only=True)
class Problem:
    index: int | None  # first entry index the problem implicates, if any
    message: str


@dataclass(frozen=True, kw_only=True)
class VerifyReport:
    """What :func:`verify_ledger` found. ``ok`` only when there is no problem at all."""

    size: int
    root_hash: bytes
    checkpoints_verified: int
    latest_checkpoint: Checkpoint | None
    problems: tuple[Problem, ...] = field(default=())
    witnessed: PolicyResult | None = None  # with a policy: the newest checkpoint a quorum cosigned

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad_index(self) -> int | None:
        """The lowest entry index any problem implicates (``None`` when none does)."""
        indices = [p.index for p in self.problems if p.index is not None]
        return min(indices) if indices else None

    def summary(self) -> str:
        witnessed = ""
        if self.witnessed is not None:
            w = self.witnessed
            names = ", ".join(c.name for c in w.cosigned_by)
            witnessed = f"; witnessed up to size {w.checkpoint.size} by {names} (quorum {w.quorum})"
        if self.ok:
            return (
                f"ledger OK: {self.size} entries, {self.checkpoints_verified} checkpoints verified, "
                f"root {self.root_hash.hex()}{witnessed}"
            )
        lines = [f"ledger FAILED verification (first bad index: {self.first_bad_index}):"]
        lines += [f"  - {p.message}" for p in self.problems]
        return "\n".join(lines)

    def raise_for_problems(self) -> None:
        """Raise :class:`LedgerTampered` with the summary unless the report is ok."""
        if not self.ok:
            raise LedgerTampered(self.summary())


def verify_ledger(
    path: str | os.PathLike[str],
    *,
    verifier_key: str | Verifier,
    trusted_checkpoint: bytes | None = None,
    read_only: bool = False,
    policy: WitnessPolicy | None = None,
    witness_views: Sequence[bytes] = (),
) -> VerifyReport:
    """Recompute the tree of the ledger at ``path`` and check it; see the module docstring.

    ``read_only`` opens the file without changing a byte of it (no WAL switch): for a copy in
    rollback-journal mode, such as a backup's, whose files are hashed.

    Raises :class:`NoteInvalid` if ``trusted_checkpoint`` itself does not verify (bad input);
    every finding about the file is returned in the report, never raised.
    """
    if not Path(path).is_file():
        raise NotFound(f"no ledger file at {os.fspath(path)}")
    verifier = verifier_key if isinstance(verifier_key, Verifier) else Verifier.from_key_text(verifier_key)
    conn = (
        sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)
        if read_only
        else connect(path)
    )
    try:
        conn.execute("BEGIN")  # one read snapshot: appenders in other processes do not disturb it
        try:
            return _verify(conn, verifier, trusted_checkpoint, policy, witness_views)
        finally:
            conn.execute("ROLLBACK")
    finally:
        conn.close()


def _verify(
    conn: sqlite3.Connection,
    verifier: Verifier,
    trusted_note: bytes | None,
    policy: WitnessPolicy | None = None,
    witness_views: Sequence[bytes] = (),
) -> VerifyReport:
    problems: list[Problem] = []
    row = conn.execute("SELECT value FROM meta WHERE key = 'origin'").fetchone()
    if row is None:
        raise NotFound("not a medvault ledger (no origin recorded)")
    origin: str = row[0]

    trusted = parse_and_verify(trusted_note, verifier, origin=origin) if trusted_note is not None else None

    checkpoints: list[tuple[int, Checkpoint]] = []
    for cid, size_col, note in conn.execute("SELECT id, size, note FROM checkpoints ORDER BY id"):
        try:
            cp = parse_and_verify(bytes(note), verifier, origin=origin)
        except NoteInvalid as exc:
            problems.append(Problem(index=None, message=f"checkpoint #{cid}: {exc.message}"))
            continue
        if cp.size != size_col:
            problems.append(Problem(index=None, message=f"checkpoint #{cid}: size column altered"))
        checkpoints.append((cid, cp))
    witnessed: PolicyResult | None = None
    views: list[tuple[str, Checkpoint]] = []
    if policy is not None:
        witnessed = _witnessed(conn, policy, problems)
        views = _views(witness_views, policy, origin, problems)
    wanted = {cp.size for _, cp in checkpoints} | ({trusted.size} if trusted else set())
    wanted |= {cp.size for _, cp in views}

    # --- one pass over the entries, rebuilding the tree -------------------------------------
    roots: dict[int, bytes] = {0: EMPTY_ROOT}
    peaks: list[bytes] = []
    leaf_problem = node_problem = False
    expected = 0
    node_sql = "SELECT hash FROM tree WHERE level = ? AND idx = ?"
    cursor = conn.execute(
        "SELECT e.idx, e.data, t.hash FROM entries e "
        "LEFT JOIN tree t ON t.level = 0 AND t.idx = e.idx ORDER BY e.idx"
    )
    lookup = conn.cursor()
    while rows := cursor.fetchmany(_BATCH):
        for idx, data, stored in rows:
            if idx != expected:
                problems.append(
                    Problem(
                        index=expected,
                        message=(f"entry {expected} is missing (removed); the next stored entry is {idx}"),
                    )
                )
                leaf_problem = True
                break
            h = leaf_hash(data)
            if not leaf_problem and stored != h:
                leaf_problem = True
                what = (
                    "has no stored leaf hash (inserted?)"
                    if stored is None
                    else "does not hash to its stored leaf hash (altered, or moved by a reorder)"
                )
                problems.append(Problem(index=idx, message=f"entry {idx} {what}"))
            peaks.append(h)
            level, node, count = 0, idx, idx + 1
            while count & 1 == 0:
                right = peaks.pop()
                h = node_hash(peaks[-1], right)
                peaks[-1] = h
                level, node, count = level + 1, node >> 1, count >> 1
                if not (leaf_problem or node_problem):
                    got = lookup.execute(node_sql, (level, node)).fetchone()
                    if got is None or got[0] != h:
                        node_problem = True
                        problems.append(
                            Problem(
                                index=node << level,
                                message=(
                                    f"stored tree node (level {level}, index {node}) over entries "
                                    f"[{node << level}, {(node + 1) << level}) "
                                    "differs from the recomputed one"
                                ),
                            )
                        )
            expected += 1
            if expected in wanted:
                roots[expected] = fold_peaks(peaks)
        else:
            continue
        break
    size = expected
    root_hash = fold_peaks(peaks) if peaks else EMPTY_ROOT

    if not leaf_problem:
        extra = conn.execute("SELECT min(idx) FROM tree WHERE level = 0 AND idx >= ?", (size,)).fetchone()
        if extra[0] is not None:
            problems.append(
                Problem(
                    index=size,
                    message=(f"entries from index {size} were removed: the tree still holds leaf {extra[0]}"),
                )
            )

    exact_count = len(problems)  # problems so far name exact entries (or none)

    # --- checkpoints against the rebuilt tree -------------------------------------------------
    good_sizes: list[int] = [0]
    verified = 0
    latest: Checkpoint | None = None
    by_size: dict[int, bytes] = {}

    def check(label: str, cp: Checkpoint) -> bool:
        if cp.size > size:
            problems.append(
                Problem(
                    index=size,
                    message=(
                        f"{label} covers {cp.size} entries but the log has {size}: rolled back or truncated"
                    ),
                )
            )
            return False
        if roots[cp.size] != cp.root_hash:
            below = max(s for s in good_sizes if s <= cp.size)
            # an exact finding inside the range explains the mismatch; else only the range is known
            exact = [p.index for p in problems[:exact_count] if p.index is not None and p.index < cp.size]
            problems.append(
                Problem(
                    index=min(exact) if exact else below,
                    message=(
                        f"{label} (size {cp.size}) does not match the stored entries: "
                        f"entries in [{below}, {cp.size}) were altered"
                    ),
                )
            )
            return False
        return True

    for cid, cp in checkpoints:
        if cp.size in by_size and by_size[cp.size] != cp.root_hash:
            problems.append(
                Problem(
                    index=None,
                    message=(f"checkpoint #{cid} and an earlier one sign different roots for size {cp.size}"),
                )
            )
        by_size.setdefault(cp.size, cp.root_hash)
        if check(f"checkpoint #{cid}", cp):
            verified += 1
            good_sizes.append(cp.size)
            if latest is None or cp.size >= latest.size:
                latest = cp
    if trusted is not None:
        check("the trusted checkpoint", trusted)
    for name, cp in views:
        check(f"the checkpoint witness {name} holds", cp)

    # --- consecutive checkpoints linked by proofs served from the stored tree ------------------
    if not problems:
        ledger = Ledger(conn, signer=None, origin=origin, group_commit_interval=DEFAULT_GROUP_COMMIT_INTERVAL)
        ordered = sorted({cp.size: cp for _, cp in checkpoints}.values(), key=lambda c: c.size)
        for a, b in itertools.pairwise(ordered):
            try:
                ledger.consistency_proof(a.size, b.size).verify(a.root_hash, b.root_hash)
            except MedvaultError as exc:
                problems.append(
                    Problem(
                        index=a.size,
                        message=(
                            f"no valid consistency proof from checkpoint size {a.size} "
                            f"to {b.size}: {exc.message}"
                        ),
                    )
                )
                break

    return VerifyReport(
        size=size,
        root_hash=root_hash,
        checkpoints_verified=verified,
        latest_checkpoint=latest,
        problems=tuple(problems),
        witnessed=witnessed,
    )


def _witnessed(
    conn: sqlite3.Connection, policy: WitnessPolicy, problems: list[Problem]
) -> PolicyResult | None:
    """The newest stored checkpoint a quorum cosigned; forged or broken cosignatures are problems."""
    has_table = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'cosignatures'").fetchone()
    best: PolicyResult | None = None
    query = (
        "SELECT c.id, c.note, group_concat(s.line, '') FROM checkpoints c "
        "JOIN cosignatures s ON s.checkpoint_id = c.id GROUP BY c.id ORDER BY c.id"
    )
    for cid, note, lines in conn.execute(query) if has_table else ():
        try:
            result = policy.check(bytes(note) + str(lines).encode("utf-8"))
        except NoteInvalid as exc:
            problems.append(Problem(index=None, message=f"checkpoint #{cid}: {exc.message}"))
            continue
        if result.met and (best is None or result.checkpoint.size >= best.checkpoint.size):
            best = result
    if best is None and policy.quorum:
        problems.append(
            Problem(
                index=None, message=f"no checkpoint is cosigned by {policy.quorum} of the policy's witnesses"
            )
        )
    return best


def _views(
    notes: Sequence[bytes], policy: WitnessPolicy, origin: str, problems: list[Problem]
) -> list[tuple[str, Checkpoint]]:
    """The witnesses' own views that verify (log signature and that witness's cosignature)."""
    out: list[tuple[str, Checkpoint]] = []
    for note in notes:
        try:
            result = policy.check(note, origin=origin)
        except NoteInvalid as exc:
            problems.append(
                Problem(index=None, message=f"a witness's checkpoint does not verify: {exc.message}")
            )
            continue
        out += [(c.name, result.checkpoint) for c in result.cosigned_by]
    return out
