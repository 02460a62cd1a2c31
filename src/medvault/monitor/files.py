"""File I/O around the pure monitor: DIRECTORY.json in, EVENTS.jsonl in, OUT.jsonl out.

The only module of ``medvault.monitor`` that touches the file system. ``replay_file`` is what
``medvault monitor replay EVENTS.jsonl --directory DIRECTORY.json --scores OUT.jsonl`` runs: the
columnar reader feeds the online monitor's ``observe_batch``, the one scoring path. On two cores
the reader runs in a forked child process beside the scoring (see "reading in a child process").
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import pickle
import signal
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np

from medvault.errors import DirectoryInvalid, MonitorReaderFailed
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


def read_event_file(
    path: Path, *, batch_size: int = DEFAULT_BATCH, in_child: bool = False
) -> Iterator[EventBatch]:
    """EVENTS.jsonl as batches of at most ``batch_size`` events; errors name the line. The file is
    read in blocks of whole lines (about ``batch_size`` * 256 bytes: memory stays bounded), each
    block split and checked for UTF-8 once, at C speed.

    ``in_child``: read and decode in a forked child process while this one scores (the second
    core; see :func:`_read_in_child`); the batches, and any error, are the same."""
    if in_child:
        yield from _read_in_child(Path(path), batch_size)
    else:
        for _, batch, _ in _batches(Path(path), batch_size, _START):
            yield batch


class _Position(NamedTuple):
    """Where a block of lines starts: byte offset, its first line's number, the time before it."""

    offset: int
    line: int
    last_us: int


_START = _Position(0, 1, -1)


def _batches(
    path: Path, batch_size: int, start: _Position
) -> Iterator[tuple[_Position, EventBatch, _Position | None]]:
    """The batches from ``start`` on, each with the position of the block it was read from and,
    for a block's last batch, the position of the next block (else None)."""
    offset, line, last = start
    size = max(batch_size, 1)
    with path.open("rb") as f:
        f.seek(offset)
        for lines, utf8, length in _line_blocks(f, size * 256):
            here = _Position(offset, line, last)
            for a in range(0, len(lines), size):
                batch = read_chunk(lines[a : a + size], first_line=line + a, last_us=last, utf8=utf8)
                if len(batch):
                    last = int(batch.ts_us[-1])
                    ends = a + size >= len(lines)
                    yield here, batch, _Position(offset + length, line + len(lines), last) if ends else None
            line += len(lines)
            offset += length


def _line_blocks(f: IO[bytes], size: int) -> Iterator[tuple[list[bytes], bool, int]]:
    """Whole lines, about ``size`` bytes at a time, whether the block is valid UTF-8, and its
    length in bytes (newlines included)."""
    while block := f.read(size):
        rest = b"" if block.endswith(b"\n") else f.readline()  # the rest of the last line
        lines = block.split(b"\n")
        lines[-1] += rest.removesuffix(b"\n")
        if not lines[-1]:
            lines.pop()  # the text after the final newline: none
        yield lines, (block.isascii() and rest.isascii()) or _is_utf8(block + rest), len(block) + len(rest)


# -- reading in a child process ---------------------------------------------------------------
#
# Decoding JSON is a third of a replay and holds the interpreter lock, so a thread cannot overlap
# it with scoring; a forked child can. The child sends each block's batches through a pipe once
# the block is read whole; if a block fails (a bad line), it sends that block's position instead
# and stops, and this process reads on from there itself, so the error it raises (naming the
# line) and the batches before it are exactly those of reading in one process.

_FRAME = struct.Struct("<Q")
_PARALLEL_FROM = 2  # blocks: with one block there is nothing to overlap
_REPEATED = ("user", "role", "dept", "patient_id", "src_ip", "user_agent")  # the texts the detector looks up
_SEEN_LIMIT = 1 << 20  # distinct texts remembered by the child (~100 MiB at most), then forgotten
_BATCH, _END, _RESUME = 0, 1, 2


def _cores_available() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _read_in_child(path: Path, batch_size: int) -> Iterator[EventBatch]:
    path.stat()  # a missing file fails here, in this process, as it would without a child
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: read, send, and leave without running any of the parent's exit code
        code = 1
        try:
            os.close(read_end)
            with open(write_end, "wb", buffering=1 << 20) as pipe:
                _send_batches(pipe, path, batch_size)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        with open(read_end, "rb", buffering=1 << 20) as pipe:
            while True:
                kind, value = _receive(pipe)
                if kind == _BATCH:
                    yield value
                elif kind == _RESUME:
                    for _, batch, _ in _batches(path, batch_size, value):
                        yield batch
                    return
                else:
                    return
    finally:
        _reap(pid)


def _send_batches(pipe: IO[bytes], path: Path, batch_size: int) -> None:
    block, pending = _START, list[EventBatch]()
    seen: dict[str | None, str | None] = {}
    try:
        for here, batch, following in _batches(path, batch_size, _START):
            if here != block:  # a block whose last lines were blank: read whole all the same
                for b in pending:
                    _send(pipe, _BATCH, b)
                block, pending = here, []
            if len(seen) > _SEEN_LIMIT:
                seen.clear()
            pending.append(_one_object_per_text(batch, seen))
            if following is not None:  # the block was read whole: its batches can go
                for b in pending:
                    _send(pipe, _BATCH, b)
                block, pending = following, []
    except Exception:  # any failure: the parent reads this block again and reports it
        _send(pipe, _RESUME, block)
        return
    for b in pending:
        _send(pipe, _BATCH, b)
    _send(pipe, _END, None)


def _one_object_per_text(batch: EventBatch, seen: dict[str | None, str | None]) -> EventBatch:
    """The batch with each repeated text (a user, an address, a device…) as one object: pickle
    then writes it once per batch, and the parent makes one string for it, its hash computed
    once for all the vocabulary lookups (a third of the bytes through the pipe, a fifth of the
    parent's unpickling)."""
    same: dict[str, Any] = {
        name: list(map(seen.setdefault, c, c)) for name in _REPEATED if (c := getattr(batch, name))
    }
    return dataclasses.replace(batch, **same)


def _send(pipe: IO[bytes], kind: int, value: object) -> None:
    data = pickle.dumps((kind, value), protocol=pickle.HIGHEST_PROTOCOL)
    pipe.write(_FRAME.pack(len(data)))
    pipe.write(data)


def _receive(pipe: IO[bytes]) -> tuple[int, Any]:
    head = pipe.read(_FRAME.size)
    size = _FRAME.unpack(head)[0] if len(head) == _FRAME.size else -1
    data = pipe.read(size) if size > 0 else b""
    if len(data) != size:  # the child died (killed, out of memory) mid-file or mid-message
        raise MonitorReaderFailed("the process reading EVENTS.jsonl ended before the end of the file")
    # our own forked child wrote this, from the file this process was asked to read
    message: tuple[int, Any] = pickle.loads(data)  # noqa: S301
    return message


def _reap(pid: int) -> None:
    """End the child (it may be blocked writing to a pipe nobody reads any more) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


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
    parallel: bool | None = None,
) -> ReplaySummary:
    """Score EVENTS.jsonl into OUT.jsonl (one line per input event, same order); ``on_batch``
    hears how many events each batch held (for a progress display). The cyclic garbage collector
    is paused meanwhile (see :func:`_cyclic_gc_paused`).

    ``parallel``: read the file in a child process (:func:`read_event_file`); by default when two
    cores are available and the file is more than a few blocks long."""
    if parallel is None:
        parallel = _cores_available() > 1 and Path(events).stat().st_size > _PARALLEL_FROM * batch_size * 256
    m = monitor or OnlineMonitor(directory=directory, rules=rules, feedback=feedback)
    n = alerts = 0
    incidents: set[str] = set()
    with _cyclic_gc_paused(), Path(scores).open("w", encoding="utf-8") as out:
        for batch in read_event_file(events, batch_size=batch_size, in_child=parallel):
            scored = m.observe_batch(batch)
            write_scores(out, scored)
            n += len(scored)
            alerts += int(scored.alert.sum())
            incidents.update(inc.incident_id for inc in scored.incidents.values())
            if on_batch is not None:
                on_batch(len(scored))
    return ReplaySummary(events=n, alerts=alerts, incidents=len(incidents))
