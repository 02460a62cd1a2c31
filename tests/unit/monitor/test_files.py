"""File replay (EVENTS.jsonl -> OUT.jsonl) is the online monitor's code path, line for line."""

from __future__ import annotations

import gc
import importlib.util
import io
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import medvault.monitor
from medvault.errors import DirectoryInvalid, EventInvalid, EventOutOfOrder, UnknownAction
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
    assert [x for b, _ in blocks for x in b] == lines
    assert all(ok for _, ok in blocks)
    assert max(sum(len(x) + 1 for x in b) for b, _ in blocks) <= 64 + 13 + 2 * 6 + 1  # a block and one line
    bad = list(_line_blocks(io.BytesIO(b'{"a": 1}\n{"b": "\xff"}\n'), 64))
    assert [ok for _, ok in bad] == [False]


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
