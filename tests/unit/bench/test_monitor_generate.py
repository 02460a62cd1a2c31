"""The monitor's synthetic hospital log (bench/monitor_generate.py): valid, seeded, labelled."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

from medvault.monitor.files import load_directory, read_event_file

BENCH = Path(__file__).resolve().parents[3] / "bench"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("monitor_generate", BENCH / "monitor_generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["monitor_generate"] = module
    spec.loader.exec_module(module)
    return module


def test_generate_is_seeded_valid_and_labelled(tmp_path: Path) -> None:
    gen = _load()
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    stats = gen.generate(a, seed=3, days=9, users=40, subtle=False, per_kind=1)
    gen.generate(b, seed=3, days=9, users=40, subtle=False, per_kind=1)
    gen.generate(c, seed=4, days=9, users=40, subtle=True, per_kind=1)
    assert (a / "EVENTS.jsonl").read_bytes() == (b / "EVENTS.jsonl").read_bytes()
    assert (a / "EVENTS.jsonl").read_bytes() != (c / "EVENTS.jsonl").read_bytes()
    n = sum(len(x) for x in read_event_file(a / "EVENTS.jsonl"))  # strict reader: valid and in order
    assert n == stats["events"] > 1000
    d = load_directory(a / "DIRECTORY.json")
    assert len(d.users) == 40 and any(p.vip for p in d.patients.values())
    labels = [json.loads(x) for x in (a / "LABELS.jsonl").read_text().splitlines()]
    scenarios = {x["scenario"] for x in labels if x["label"] == 1}
    assert scenarios == set(gen.SCENARIOS)
    assert {x["noise"] for x in labels if x["label"] == 0} >= {"consult", "covering", "password_typo", "roi"}
    assert "label" not in (a / "EVENTS.jsonl").read_text()  # the detector's input holds no labels
