"""File I/O around the pure monitor: DIRECTORY.json in, EVENTS.jsonl in, OUT.jsonl out.

The only module of ``medvault.monitor`` that touches the file system. ``replay_file`` is what
``medvault monitor replay EVENTS.jsonl --directory DIRECTORY.json --scores OUT.jsonl`` runs: the
columnar reader feeds the online monitor's ``observe_batch``, the one scoring path.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from medvault.errors import DirectoryInvalid
from medvault.monitor._detector import OnlineMonitor, ScoredBatch
from medvault.monitor._directory import Directory, parse_directory
from medvault.monitor._events import EventBatch, read_chunk
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
    """EVENTS.jsonl as batches of at most ``batch_size`` events; errors name the line. The file is
    read in blocks of whole lines (about ``batch_size`` * 256 bytes: memory stays bounded), each
    block split and checked for UTF-8 once, at C speed."""
    last, line = -1, 1
    with Path(path).open("rb") as f:
        for lines, utf8 in _line_blocks(f, max(batch_size, 1) * 256):
            for a in range(0, len(lines), batch_size):
                chunk = lines[a : a + batch_size]
                batch = read_chunk(chunk, first_line=line + a, last_us=last, utf8=utf8)
                if len(batch):
                    last = int(batch.ts_us[-1])
                    yield batch
            line += len(lines)


def _line_blocks(f: IO[bytes], size: int) -> Iterator[tuple[list[bytes], bool]]:
    """Whole lines, about ``size`` bytes at a time, and whether the block is valid UTF-8."""
    while block := f.read(size):
        rest = b"" if block.endswith(b"\n") else f.readline()  # the rest of the last line
        lines = block.split(b"\n")
        lines[-1] += rest.removesuffix(b"\n")
        if not lines[-1]:
            lines.pop()  # the text after the final newline: none
        yield lines, (block.isascii() and rest.isascii()) or _is_utf8(block + rest)


def _is_utf8(block: bytes) -> bool:
    try:
        block.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _line(event_id: str, score: float, alert: bool, incident: str | None, reasons: tuple[str, ...]) -> str:
    return (
        f'{{"event_id":{json.dumps(event_id, ensure_ascii=False)},"score":{round(score, 6)!r},'
        f'"alert":{"true" if alert else "false"},'
        f'"incident_id":{"null" if incident is None else json.dumps(incident)},'
        f'"reasons":{json.dumps(list(reasons), ensure_ascii=False) if reasons else "[]"}}}\n'
    )


_HEAD = '{"event_id":"'
_QUIET = '","score":0.0,"alert":false,"incident_id":null,"reasons":[]}\n'  # the line of a 0.0 score


def write_scores(out: IO[str], scored: ScoredBatch) -> None:
    """OUT.jsonl lines for a scored batch: event_id, score, alert, incident_id, reasons.

    Most events score 0.0 and their lines differ only in the event id: when no id in the batch
    needs escaping in JSON, each run of such lines is one ``str.join`` and the rest go through
    :func:`_line`; the text is the same either way (tests/unit/monitor/test_files.py)."""
    ids, inc, reasons = scored.event_id, scored.incident_id, scored.reasons
    n = len(ids)
    joined = "".join(ids)
    if not (joined.isascii() and joined.isprintable() and '"' not in joined and "\\" not in joined):
        score, alert = scored.score.tolist(), scored.alert.tolist()
        out.write("".join(_line(ids[i], score[i], alert[i], inc[i], reasons.get(i, ())) for i in range(n)))
        return
    quiet = (scored.score == 0.0) & ~np.signbit(scored.score) & ~scored.alert
    for i, why in reasons.items():
        if why:
            quiet[i] = False
    if inc.count(None) != n:
        for i, x in enumerate(inc):
            if x is not None:
                quiet[i] = False
    loud = np.flatnonzero(~quiet).tolist()
    score, alert = scored.score[loud].tolist(), scored.alert[loud].tolist()
    parts: list[str] = []
    prev = 0
    texts: dict[object, str] = {None: "null", (): "[]"}  # JSON of reasons and incident ids, once each
    for k, i in enumerate(loud):
        if i > prev:
            parts.append(_HEAD + (_QUIET + _HEAD).join(ids[prev:i]) + _QUIET)
        why, case = reasons.get(i, ()), inc[i]
        if (why_text := texts.get(why)) is None:
            why_text = texts[why] = json.dumps(list(why), ensure_ascii=False)
        if (case_text := texts.get(case)) is None:
            case_text = texts[case] = json.dumps(case)
        parts.append(
            f'{_HEAD}{ids[i]}","score":{round(score[k], 6)!r},"alert":{"true" if alert[k] else "false"},'
            f'"incident_id":{case_text},"reasons":{why_text}}}\n'
        )
        prev = i + 1
    if n > prev:
        parts.append(_HEAD + (_QUIET + _HEAD).join(ids[prev:n]) + _QUIET)
    out.write("".join(parts))


@dataclass(frozen=True, slots=True)
class ReplaySummary:
    events: int
    alerts: int
    incidents: int


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector; reference counting still frees every batch. Each
    collection walks every list of the batch in hand (13 columns of 32,768, and more): ~7 % of a
    replay; a replay makes no reference cycles (tests/unit/monitor/test_files.py checks). The
    collector's state is restored on the way out, errors included."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


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
    hears how many events each batch held (for a progress display). The cyclic garbage collector
    is paused meanwhile (see :func:`_cyclic_gc_paused`)."""
    m = monitor or OnlineMonitor(directory=directory, rules=rules, feedback=feedback)
    n = alerts = 0
    incidents: set[str] = set()
    with _cyclic_gc_paused(), Path(scores).open("w", encoding="utf-8") as out:
        for batch in read_event_file(events, batch_size=batch_size):
            scored = m.observe_batch(batch)
            write_scores(out, scored)
            n += len(scored)
            alerts += int(scored.alert.sum())
            incidents.update(inc.incident_id for inc in scored.incidents.values())
            if on_batch is not None:
                on_batch(len(scored))
    return ReplaySummary(events=n, alerts=alerts, incidents=len(incidents))
