"""File replay (EVENTS.jsonl -> OUT.jsonl) is the online monitor's code path, line for line."""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import io
import json
import os
import signal
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import medvault.monitor
from medvault.errors import (
    DirectoryInvalid,
    EventInvalid,
    EventOutOfOrder,
    MonitorReaderFailed,
    UnknownAction,
)
from medvault.monitor import Directory, EventBatch, MonitorEvent, ScoredBatch, iter_events, replay
from medvault.monitor.files import _line_blocks, load_directory, read_event_file, replay_file, write_scores

from .conftest import directory, make_log


def test_replay_file_writes_one_line_per_event(tmp_path: Path) -> None:
    events = make_log(seed=5, days=6, per_day=40)
    src, out = tmp_path / "EVENTS.jsonl", tmp_path / "OUT.jsonl"
    src.write_text("".join(json.dumps(e.to_json()) + "\n" for e in events))
    summary = replay_file(src, out, directory=directory(), batch_size=50)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert summary.events == len(events) == len(lines)
    assert all(set(x) == {"event_id", "score", "alert", "incident_id", "reasons"} for x in lines)
    expected = [s.to_json() for s in replay(events, directory())]
    assert lines == expected
    assert summary.alerts == sum(x["alert"] for x in lines) > 0
    assert summary.incidents == len({x["incident_id"] for x in lines if x["incident_id"]})
    assert all(x["incident_id"] for x in lines if x["alert"])


def test_replay_file_names_the_bad_line(tmp_path: Path) -> None:
    events = make_log(seed=5, days=1, per_day=10)
    lines = [json.dumps(e.to_json()) for e in events]
    lines[3], lines[6] = lines[6], lines[3]
    src = tmp_path / "EVENTS.jsonl"
    src.write_text("\n".join(lines))
    with pytest.raises(EventOutOfOrder, match="line 5"):
        replay_file(src, tmp_path / "OUT.jsonl")


def test_load_directory(tmp_path: Path) -> None:
    p = tmp_path / "DIRECTORY.json"
    p.write_text(json.dumps({"users": [{"user": "a", "role": "nurse", "whatever": 1}]}))
    assert load_directory(p).users["a"].role == "nurse"
    p.write_text("{nope")
    with pytest.raises(DirectoryInvalid, match="not valid JSON"):
        load_directory(p)


def test_public_surface() -> None:
    assert sorted(medvault.monitor.__all__) == [
        "Action",
        "Directory",
        "Disposition",
        "EventBatch",
        "Feedback",
        "Incident",
        "MonitorEvent",
        "OnlineMonitor",
        "PatientInfo",
        "Rule",
        "Rules",
        "ScoredBatch",
        "ScoredEvent",
        "UserInfo",
        "alert_event",
        "apply_disposition",
        "from_ledger",
        "iter_events",
        "parse_directory",
        "parse_event_line",
        "read_batches",
        "replay",
        "rules_from",
        "to_ledger",
    ]
    for name in medvault.monitor.__all__:
        assert getattr(medvault.monitor, name) is not None


# -- the fast file path against the reference path --------------------------------------------------

BENCH = Path(__file__).resolve().parents[3] / "bench"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("monitor_generate", BENCH / "monitor_generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["monitor_generate"] = module
    spec.loader.exec_module(module)
    return module


def _old_line(
    event_id: str, score: float, alert: bool, incident: str | None, reasons: tuple[str, ...]
) -> str:
    """One OUT.jsonl line exactly as replay wrote it before the fast writer (the format users have)."""
    return (
        f'{{"event_id":{json.dumps(event_id, ensure_ascii=False)},"score":{round(score, 6)!r},'
        f'"alert":{"true" if alert else "false"},'
        f'"incident_id":{"null" if incident is None else json.dumps(incident)},'
        f'"reasons":{json.dumps(list(reasons), ensure_ascii=False) if reasons else "[]"}}}\n'
    )


def _reference_out(events: list[MonitorEvent], people: Directory) -> str:
    """OUT.jsonl the slow way: event objects, replay(), one line at a time."""
    return "".join(
        _old_line(s.event_id, s.score, s.alert, s.incident_id, s.reasons) for s in replay(events, people)
    )


def test_generated_log_fast_path_equals_reference(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _generator().generate(site, seed=3, days=9, users=40, subtle=False, per_kind=1)
    src = site / "EVENTS.jsonl"
    raw = src.read_bytes().splitlines()
    people = load_directory(site / "DIRECTORY.json")
    reference = list(iter_events(raw))  # the line reader, one event object per line
    # columns: the block reader (small blocks, so lines cross block ends) == the line reader
    batches = list(read_event_file(src, batch_size=997))
    assert len(batches) > 5
    whole = EventBatch.of(reference)
    for name in EventBatch.__dataclass_fields__:
        got = (
            [x for b in batches for x in getattr(b, name).tolist()]
            if name in {"ts_us", "action", "bytes", "failure", "break_glass"}
            else [x for b in batches for x in getattr(b, name)]
        )
        want = getattr(whole, name)
        assert got == (want.tolist() if isinstance(want, np.ndarray) else list(want)), name
    # scores: OUT.jsonl byte for byte as the reference path writes it
    out = tmp_path / "OUT.jsonl"
    summary = replay_file(src, out, directory=people, batch_size=997)
    expected = _reference_out(reference, people)
    assert summary.events == len(reference) and summary.alerts > 0
    assert out.read_text(encoding="utf-8") == expected


ids = st.text(min_size=1, max_size=6) | st.sampled_from(['a"b', "a\\b", "x\ny", "\x7f", "é", "\u2028", "e1"])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            ids,
            st.sampled_from([0.0, -0.0, 1e-7, 3e-6, 0.5, 1.0000004, 12.25, 1e16]) | st.floats(0, 50),
            st.booleans(),
            st.sampled_from([(), ("why",), ('say "why"', "é")]),
            st.sampled_from([None, "inc-000001"]),
        ),
        max_size=8,
    )
)
def test_write_scores_equals_one_line_at_a_time(
    rows: list[tuple[str, float, bool, tuple[str, ...], str | None]],
) -> None:
    scored = ScoredBatch(
        event_id=[r[0] for r in rows],
        score=np.array([r[1] for r in rows], dtype=np.float64),
        alert=np.array([r[2] for r in rows], dtype=np.bool_),
        points=np.zeros((len(rows), 1)),
        incident_id=[r[4] for r in rows],
        severity=["none"] * len(rows),
        reasons={i: r[3] for i, r in enumerate(rows) if r[3] or i % 2},
        features={},
        incidents={},
    )
    buf = io.StringIO()
    write_scores(buf, scored)
    expected = "".join(
        _old_line(i, s, a, c, why if why or k % 2 else ()) for k, (i, s, a, why, c) in enumerate(rows)
    )
    assert buf.getvalue() == expected


def test_blocks_are_bounded_and_cut_at_line_ends(tmp_path: Path) -> None:
    lines = [("é" * (k % 7)).encode() + b"x" * (k % 13) for k in range(500)]
    f = io.BytesIO(b"\n".join(lines))  # no final newline
    blocks = list(_line_blocks(f, 64))
    assert [x for b, _, _ in blocks for x in b] == lines
    assert all(ok for _, ok, _ in blocks)
    assert (
        max(sum(len(x) + 1 for x in b) for b, _, _ in blocks) <= 64 + 13 + 2 * 6 + 1
    )  # a block and one line
    assert sum(size for _, _, size in blocks) == len(f.getvalue())  # where each block starts: exact
    bad = list(_line_blocks(io.BytesIO(b'{"a": 1}\n{"b": "\xff"}\n'), 64))
    assert [ok for _, ok, _ in bad] == [False]


@pytest.mark.parametrize(
    ("line", "error", "words"),
    [
        (b"{not json", EventInvalid, "not a JSON object"),
        (b'{"event_id": "x", "extra": "\xff"}', EventInvalid, "not a JSON object"),
        (b'{"event_id": "x"}', EventInvalid, "missing field"),
        (b"__late__", EventOutOfOrder, "earlier"),
        (b"__peek__", UnknownAction, "unknown action"),
        (b"__offset__", EventInvalid, "time zone"),
        (b"__bytes__", EventInvalid, "'bytes'"),
    ],
)
def test_file_errors_name_the_line_past_block_ends(
    tmp_path: Path, line: bytes, error: type[Exception], words: str
) -> None:
    events = make_log(seed=5, days=2, per_day=60)
    lines = [json.dumps(e.to_json(), ensure_ascii=False).encode() for e in events]
    n = 77  # well past the first block and batch at batch_size=10
    good = json.loads(lines[n])
    swaps = {
        b"__late__": {**good, "ts": "2000-01-01T00:00:00Z"},
        b"__peek__": {**good, "action": "peek"},
        b"__offset__": {**good, "ts": good["ts"][:-1]},
        b"__bytes__": {**good, "bytes": 1.5},
    }
    lines[n] = json.dumps(swaps[line]).encode() if line in swaps else line
    lines.insert(3, b"")  # a blank line: skipped, but counted
    lines.insert(5, b"\r")
    src = tmp_path / "EVENTS.jsonl"
    src.write_bytes(b"\r\n".join(lines) + b"\r\n")
    with pytest.raises(error) as info:
        replay_file(src, tmp_path / "OUT.jsonl", batch_size=10)
    assert getattr(info.value, "line", None) == n + 3 and words in str(info.value)
    assert f"line {n + 3}:" in str(info.value)


def test_replay_pauses_the_cyclic_gc_and_leaves_no_cycles(tmp_path: Path) -> None:
    events = make_log(seed=4, days=6, per_day=120)
    src = tmp_path / "EVENTS.jsonl"
    src.write_text("".join(json.dumps(e.to_json()) + "\n" for e in events))
    seen: list[bool] = []
    gc.collect()
    replay_file(
        src,
        tmp_path / "OUT.jsonl",
        directory=directory(),
        batch_size=50,
        on_batch=lambda _: seen.append(gc.isenabled()),
    )
    assert gc.collect() == 0  # nothing was left for the collector: pausing it loses no memory
    assert gc.isenabled() and seen and not any(seen)
    src.write_text(src.read_text().replace('"view"', '"peek"', 1))
    with pytest.raises(UnknownAction):
        replay_file(src, tmp_path / "OUT.jsonl", directory=directory())
    assert gc.isenabled()


# -- reading in a child process ------------------------------------------------------------------


def _children() -> set[int]:
    """This process's child processes, from /proc (zombies included: they were not reaped)."""
    me = str(os.getpid())
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[1] == me:
                found.add(int(stat.parent.name))
    return found


def test_reading_in_a_child_gives_the_same_batches_and_scores(tmp_path: Path) -> None:
    events = make_log(seed=6, days=5, per_day=90)
    src = tmp_path / "EVENTS.jsonl"
    src.write_text("".join(json.dumps(e.to_json()) + "\n" for e in events))
    before = _children()
    alone = list(read_event_file(src, batch_size=20))
    beside = list(read_event_file(src, batch_size=20, in_child=True))
    assert len(alone) == len(beside) > 10  # many blocks, so many messages through the pipe
    for a, b in zip(alone, beside, strict=True):
        for name in EventBatch.__dataclass_fields__:
            x, y = getattr(a, name), getattr(b, name)
            assert (x.tolist() if isinstance(x, np.ndarray) else x) == (
                y.tolist() if isinstance(y, np.ndarray) else y
            ), name
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    replay_file(src, one, directory=directory(), batch_size=20, parallel=False)
    replay_file(src, two, directory=directory(), batch_size=20, parallel=True)
    assert one.read_bytes() == two.read_bytes() and one.stat().st_size > 0
    assert _children() == before  # every child reaped


@pytest.mark.parametrize("bad_at", [0, 1, 150, 399])
def test_reading_in_a_child_reports_the_error_of_reading_alone(tmp_path: Path, bad_at: int) -> None:
    """The child stops at a bad block and this process reads it again: the same error, naming the
    same line, with the same scores written before it, wherever the line falls in its block."""
    events = make_log(seed=6, days=4, per_day=100)
    lines = [json.dumps(e.to_json()) for e in events][:400]
    lines[bad_at] = lines[bad_at].replace('"action": "', '"action": "peek', 1)
    src = tmp_path / "EVENTS.jsonl"
    src.write_text("\n".join(lines) + "\n")
    outcomes = []
    for parallel in (False, True):
        out = tmp_path / f"OUT-{parallel}.jsonl"
        with pytest.raises(UnknownAction) as info:
            replay_file(src, out, directory=directory(), batch_size=7, parallel=parallel)
        outcomes.append((str(info.value), info.value.line, out.read_bytes()))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][1] == bad_at + 1


def test_a_reader_child_that_dies_is_a_clear_error_and_is_reaped(tmp_path: Path) -> None:
    events = make_log(seed=6, days=10, per_day=1500)  # more than the pipe and its buffers hold
    src = tmp_path / "EVENTS.jsonl"
    src.write_text("".join(json.dumps(e.to_json()) + "\n" for e in events))
    before = _children()
    batches = read_event_file(src, batch_size=5, in_child=True)
    next(batches)
    (child,) = _children() - before
    os.kill(child, signal.SIGKILL)
    with pytest.raises(MonitorReaderFailed, match="ended before the end of the file"):
        for _ in batches:
            pass
    assert _children() == before


def test_stopping_early_ends_the_reader_child(tmp_path: Path) -> None:
    events = make_log(seed=6, days=5, per_day=90)
    src = tmp_path / "EVENTS.jsonl"
    src.write_text("".join(json.dumps(e.to_json()) + "\n" for e in events))
    before = _children()
    batches = read_event_file(src, batch_size=5, in_child=True)
    next(batches)
    assert len(_children() - before) == 1
    batches.close()  # a consumer that stops (an error while scoring, Ctrl-C): the child goes too
    assert _children() == before
    with pytest.raises(FileNotFoundError):
        next(read_event_file(tmp_path / "missing.jsonl", in_child=True))
    assert _children() == before


@pytest.mark.parametrize("bad_at", [0, 9, 10, 11, 26, 27, 28, 55, 299])
def test_a_bad_line_among_short_lines_is_reported_alike(tmp_path: Path, bad_at: int) -> None:
    """Short lines: a block holds several batches, so the child's bookkeeping of which block it
    has sent whole is exercised at every place a bad line can fall."""
    lines = [
        json.dumps(
            {"event_id": f"e{i}", "ts": f"2026-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z"}
            | {"user": f"u{i % 3}", "action": "view", "outcome": "success", "patient_id": f"p{i % 7}"}
        )
        for i in range(300)
    ]
    lines[bad_at] = lines[bad_at].replace('"view"', '"peek"')
    src = tmp_path / "EVENTS.jsonl"
    src.write_text("\n".join(lines) + "\n")
    assert 10 * 256 // (len(lines[0]) + 1) >= 20  # two batches of 10 lines (or more) to a block
    outcomes = []
    for parallel in (False, True):
        out = tmp_path / f"OUT-{parallel}.jsonl"
        with pytest.raises(UnknownAction) as info:
            replay_file(src, out, batch_size=10, parallel=parallel)
        outcomes.append((str(info.value), out.read_bytes()))
    assert outcomes[0] == outcomes[1]
    assert f"line {bad_at + 1}:" in outcomes[0][0]
    good = tmp_path / "GOOD.jsonl"
    good.write_text("\n".join(lines[:bad_at] + lines[bad_at + 1 :]) + "\n")
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    replay_file(good, a, batch_size=10, parallel=False)
    replay_file(good, b, batch_size=10, parallel=True)
    assert a.read_bytes() == b.read_bytes() and len(a.read_bytes().splitlines()) == 299
