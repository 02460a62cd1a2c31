"""Reconciling object storage with the index, after a crash (issue #12, item 9).

An instance's ciphertext is written before its index row commits; a process killed in between
leaves an object no index row names. Its data key was only ever in that uncommitted row, so the
object can never be decrypted again: it is removed, never re-indexed. An index row whose object is
missing is the opposite and worse case (data lost): it is reported, never "repaired".

Objects younger than the grace period may be writes in flight in another process (server workers,
the DIMSE listener, ``medvault import`` share the folder), so they are counted but left alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from medvault.archive import Archive
from medvault.audit import SYSTEM
from medvault.index.outbox import owner_alive
from medvault.ledger.events import Actor, AuditEvent, EventKind, ObjectRef, Outcome
from medvault.storage.filesystem import STALE_TEMP_SECONDS

#: Default grace period: no single write stays unfinished this long.
GRACE_SECONDS = STALE_TEMP_SECONDS


@dataclass
class Reconciliation:
    objects: int = 0  # complete objects in storage
    indexed: int = 0  # index rows
    orphans: list[str] = field(default_factory=list)  # objects without a row, older than the grace
    recent_unindexed: int = 0  # objects without a row, younger: maybe a write in flight
    missing: list[str] = field(default_factory=list)  # SOP UIDs whose object is absent
    partial_writes: list[str] = field(default_factory=list)  # unfinished writes, older than the grace
    removed: int = 0
    pending_events: int = 0  # outbox rows of live writers (their events are on the way)
    published: int = 0  # events of dead writers appended to the ledger now

    @property
    def clean(self) -> bool:
        """No data lost, and no leftover remains (none found, or all removed)."""
        return not self.missing and self.removed >= len(self.orphans) + len(self.partial_writes)

    def summary(self) -> str:
        return (
            f"storage: {self.objects} objects, {self.indexed} indexed; "
            f"{len(self.orphans)} without an index row (leftovers of interrupted writes), "
            f"{len(self.partial_writes)} unfinished writes, {len(self.missing)} indexed but missing, "
            f"{self.recent_unindexed} too recent to judge; {self.removed} leftovers removed; "
            f"{self.published} ledger events of interrupted writes published, {self.pending_events} pending"
        )


def reconcile(
    archive: Archive,
    *,
    repair: bool,
    grace_seconds: float = GRACE_SECONDS,
    now: float | None = None,
    actor: Actor | None = None,
    progress: Callable[[int], None] | None = None,
) -> Reconciliation:
    """Compare storage with the index; with ``repair``, remove leftovers older than the grace
    period (ledgered as one event). Index rows come first, so an object indexed while the folder
    is listed is never taken for an orphan."""
    cutoff = (time.time() if now is None else now) - grace_seconds
    report = Reconciliation()
    report.published, report.pending_events = publish_outbox(archive, dry_run=not repair)
    indexed = archive.index.blob_keys()
    report.indexed = len(indexed)
    present: set[str] = set()
    for info in archive.blobs.list_objects():
        report.objects += 1
        present.add(info.key)
        if info.key not in indexed:
            if info.modified < cutoff:
                report.orphans.append(info.key)
            else:
                report.recent_unindexed += 1
        if progress is not None:
            progress(1)
    if indexed - present:
        gone = indexed - present
        report.missing = sorted(r.sop_uid for r in archive.index.iter_instances() if r.blob_key in gone)
    report.partial_writes = archive.blobs.partial_writes(older_than=cutoff)
    if repair and (report.orphans or report.partial_writes):
        still_unindexed = set(report.orphans) - archive.index.blob_keys()  # indexed meanwhile? keep
        for key in report.orphans:
            if key in still_unindexed:
                archive.blobs.delete(key)
                report.removed += 1
        for name in report.partial_writes:
            archive.blobs.remove_partial(name)
            report.removed += 1
        if archive.audit is not None:
            archive.audit.emit(
                AuditEvent(
                    kind=EventKind.DELETE,
                    time=datetime.now(UTC),
                    actor=actor or SYSTEM,
                    action="storage.leftovers_removed",
                    outcome=Outcome.SUCCESS,
                    object=ObjectRef(type="storage", id="objects"),
                    details={
                        "orphans": len(still_unindexed),
                        "partial_writes": len(report.partial_writes),
                    },
                )
            )
    return report


def publish_outbox(archive: Archive, *, dry_run: bool = False) -> tuple[int, int]:
    """Append the outbox events of writers that are gone (killed between committing a change and
    ledgering it) which the ledger does not hold yet, and clear their rows; see
    :mod:`medvault.index.outbox`. Returns (events published, rows of live writers left alone);
    with ``dry_run`` the first number is how many would be."""
    if archive.audit is None:
        return 0, 0
    rows = archive.index.outbox_rows()
    orphaned = [r for r in rows if not owner_alive(r.owner)]
    live = len(rows) - len(orphaned)
    if not orphaned:
        return 0, live
    ledger = archive.audit.ledger
    present = ledger.present_leaves([r.leaf for r in orphaned], start=min(r.after_size for r in orphaned))
    missing = [r.leaf for r in orphaned if r.leaf not in present]
    if dry_run:
        return len(missing), live
    ledger.append_leaves(missing)
    archive.index.outbox_done([r.id for r in orphaned])
    return len(missing), live
