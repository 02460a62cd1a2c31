"""File I/O around the pure monitor: DIRECTORY.json in, EVENTS.jsonl in, OUT.jsonl out.

The only module of ``medvault.monitor`` that touches the file system. ``replay_file`` is what
``medvault monitor replay EVENTS.jsonl --directory DIRECTORY.json --scores OUT.jsonl`` runs: the
columnar reader feeds the online monitor's ``observe_batch``, the one scoring path.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from medvault.errors import DirectoryInvalid
from medvault.monitor._detector import OnlineMonitor, ScoredBatch
from medvault.monitor._directory import Directory, parse_directory
from medvault.monitor._events import EventBatch, read_batches
from medvault.monitor._replay import DEFAULT_BATCH
from medvault.monitor._rules import Feedback, Rules

__all__ = ["ReplaySummary", "load_directory", "read_event_file", "replay_file", "write_scores"]


def load_directory(path: Path) -> Directory:
    """Read and validate DIRECTORY.json."""
    try:
        raw = json.loads(Path(path).read_bytes())
    except ValueError:
        raise DirectoryInvalid("the directory file is not valid JSON") from None
    return parse_directory(raw)


def read_event_file(path: Path, *, batch_size: int = DEFAULT_BATCH) -> Iterator[EventBatch]:
    """EVENTS.jsonl as batches; errors name the line."""
    with Path(path).open("rb") as f:
        yield from read_batches(f, batch_size=batch_size)


def _line(event_id: str, score: float, alert: bool, incident: str | None, reasons: tuple[str, ...]) -> str:
    return (
        f'{{"event_id":{json.dumps(event_id, ensure_ascii=False)},"score":{round(score, 6)!r},'
        f'"alert":{"true" if alert else "false"},'
        f'"incident_id":{"null" if incident is None else json.dumps(incident)},'
        f'"reasons":{json.dumps(list(reasons), ensure_ascii=False) if reasons else "[]"}}}\n'
    )


def write_scores(out: IO[str], scored: ScoredBatch) -> None:
    """OUT.jsonl lines for a scored batch: event_id, score, alert, incident_id, reasons."""
    score, alert, ids, inc, reasons = (
        scored.score.tolist(),
        scored.alert.tolist(),
        scored.event_id,
        scored.incident_id,
        scored.reasons,
    )
    out.writelines(_line(ids[i], score[i], alert[i], inc[i], reasons.get(i, ())) for i in range(len(ids)))


@dataclass(frozen=True, slots=True)
class ReplaySummary:
    events: int
    alerts: int
    incidents: int


def replay_file(
    events: Path,
    scores: Path,
    *,
    directory: Directory | None = None,
    rules: Rules | None = None,
    feedback: Feedback | None = None,
    monitor: OnlineMonitor | None = None,
    batch_size: int = DEFAULT_BATCH,
    on_batch: Callable[[int], None] | None = None,
) -> ReplaySummary:
    """Score EVENTS.jsonl into OUT.jsonl (one line per input event, same order); ``on_batch``
    hears how many events each batch held (for a progress display)."""
    m = monitor or OnlineMonitor(directory=directory, rules=rules, feedback=feedback)
    n = alerts = 0
    incidents: set[str] = set()
    with Path(scores).open("w", encoding="utf-8") as out:
        for batch in read_event_file(events, batch_size=batch_size):
            scored = m.observe_batch(batch)
            write_scores(out, scored)
            n += len(scored)
            alerts += int(scored.alert.sum())
            incidents.update(i for i in scored.incident_id if i is not None)
            if on_batch is not None:
                on_batch(len(scored))
    return ReplaySummary(events=n, alerts=alerts, incidents=len(incidents))
