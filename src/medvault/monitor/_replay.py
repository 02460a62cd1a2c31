"""Replay: score a whole log with the online monitor's own code path, a batch at a time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

from medvault.monitor._detector import OnlineMonitor, ScoredBatch, ScoredEvent
from medvault.monitor._directory import Directory
from medvault.monitor._events import EventBatch, MonitorEvent
from medvault.monitor._rules import Feedback, Rules

__all__ = ["DEFAULT_BATCH", "replay", "replay_batches"]

DEFAULT_BATCH = 32_768


def replay_batches(batches: Iterable[EventBatch], monitor: OnlineMonitor) -> Iterator[ScoredBatch]:
    """Score ready-made batches (the file reader's columnar path) with ``monitor``."""
    for batch in batches:
        yield monitor.observe_batch(batch)


def replay(
    events: Iterable[MonitorEvent],
    directory: Directory | None = None,
    *,
    rules: Rules | None = None,
    feedback: Feedback | None = None,
    monitor: OnlineMonitor | None = None,
    batch_size: int = DEFAULT_BATCH,
) -> Iterator[ScoredEvent]:
    """Score ``events`` (in time order) and yield one :class:`ScoredEvent` per event. Pass
    ``monitor`` to continue from a restored state; otherwise a fresh one is made. The batch size
    changes speed only, never a score (tests/unit/monitor pin this)."""
    m = monitor or OnlineMonitor(directory=directory, rules=rules, feedback=feedback)
    it = iter(events)
    while chunk := list(islice(it, batch_size)):
        yield from m.observe_batch(EventBatch.of(chunk))
