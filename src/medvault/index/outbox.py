"""The ledger outbox: how an index change and its ledger event cannot be separated by a crash.

The index and the ledger are two databases, so no transaction spans both. A change (instances
stored, deleted) therefore writes its ledger events, as canonical leaf bytes, into the
``ledger_outbox`` table *in the same transaction* as the change; once the transaction commits they
are appended to the ledger and their outbox rows removed. A process killed in between leaves rows
whose events may or may not have reached the ledger: whoever finds them after the writer is gone
(``serve`` at start, a restarted worker, ``medvault fsck``) appends the ones the ledger does not
hold yet, looking only at entries appended since the row's ``after_size``. So every indexed change
has exactly one ledger event, crash or not.

A row names its writer as ``pid:start-time`` (``/proc/PID/stat``, field 22), so a row is never
taken from a process that is alive, nor kept for a process whose pid was reused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from medvault.index.schema import ledger_outbox


@dataclass
class Outbox:
    """Leaves to write with a change; ``ids`` are filled in by the index when it writes them."""

    owner: str
    after_size: int
    leaves: list[bytes]
    ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class OutboxRow:
    id: int
    owner: str
    after_size: int
    leaf: bytes


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    return stat.rsplit(")", 1)[1].split()[19]


@cache
def _tag(pid: int) -> str:
    return f"{pid}:{_start_time(pid) or '?'}"


def process_tag() -> str:
    """This process's owner tag (recomputed after a fork: the cache is keyed by pid)."""
    return _tag(os.getpid())


def owner_alive(owner: str) -> bool:
    pid_text, _, started = owner.partition(":")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if started not in ("", "?"):
        return _start_time(pid) == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_INSERT_ROW = insert(ledger_outbox)


def write_outbox(conn: Any, outbox: Outbox) -> None:
    """Write an outbox's rows inside the caller's transaction (the change's own)."""
    for leaf in outbox.leaves:
        values = {"owner": outbox.owner, "after_size": outbox.after_size, "leaf": leaf}
        outbox.ids.append(int(conn.execute(_INSERT_ROW, values).inserted_primary_key[0]))
