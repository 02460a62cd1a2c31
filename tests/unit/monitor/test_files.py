"""File replay (EVENTS.jsonl -> OUT.jsonl) is the online monitor's code path, line for line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import medvault.monitor
from medvault.errors import DirectoryInvalid, EventOutOfOrder
from medvault.monitor import replay
from medvault.monitor.files import load_directory, replay_file

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
