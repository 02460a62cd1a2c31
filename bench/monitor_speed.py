"""Replay speed of medvault's monitor (events per second), on the synthetic hospital log.

    python bench/monitor_speed.py [--work bench/data/monitor] [--days 56] [--rounds 3]

Measures, on one log (bench/monitor_generate.py, seed 3, 160 users): scoring of ready batches
(``OnlineMonitor.observe_batch``), ``replay()`` from event objects (columns + scoring + one
ScoredEvent per event), the file path (EVENTS.jsonl parsed strictly, scored, OUT.jsonl written:
what ``medvault monitor replay`` runs), and the online path one event at a time (``observe``).
Prints each as events/s and as a ratio to the issue's target of 100,000 events/s. The machine is
shared: run several rounds and read the range.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import monitor_generate
from medvault.monitor import EventBatch, OnlineMonitor, replay
from medvault.monitor.files import load_directory, read_event_file, replay_file

TARGET = 100_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("bench/data/monitor"))
    ap.add_argument("--days", type=int, default=56)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--online-events", type=int, default=5000)
    a = ap.parse_args()
    path = a.work / f"speed-{a.days}d"
    if not (path / "EVENTS.jsonl").exists():
        monitor_generate.generate(path, seed=3, days=a.days, users=160, subtle=False)
    directory = load_directory(path / "DIRECTORY.json")
    batches = list(read_event_file(path / "EVENTS.jsonl"))
    n = sum(len(b) for b in batches)
    events = [e for b in batches for e in _objects(b)]
    print(f"log: {n} events, {a.days} days, 160 users; target {TARGET:,} events/s")
    rows: dict[str, list[float]] = {
        k: [] for k in ("observe_batch", "replay(objects)", "replay_file", "observe(1)")
    }
    for _ in range(a.rounds):
        m = OnlineMonitor(directory=directory)
        t = time.perf_counter()
        for b in batches:
            m.observe_batch(b)
        rows["observe_batch"].append(n / (time.perf_counter() - t))
        t = time.perf_counter()
        for _ in replay(events, directory):
            pass
        rows["replay(objects)"].append(n / (time.perf_counter() - t))
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            replay_file(path / "EVENTS.jsonl", Path(tmp) / "OUT.jsonl", directory=directory)
            rows["replay_file"].append(n / (time.perf_counter() - t))
        m = OnlineMonitor(directory=directory)
        k = min(a.online_events, n)
        t = time.perf_counter()
        for e in events[:k]:
            m.observe(e)
        rows["observe(1)"].append(k / (time.perf_counter() - t))
    for name, vals in rows.items():
        lo, hi = min(vals), max(vals)
        ratio = f"x{lo / TARGET:.2f} - x{hi / TARGET:.2f}"
        print(f"{name:18} {lo:>10,.0f} - {hi:>10,.0f} events/s   {ratio} of target")


def _objects(b: EventBatch) -> list:  # type: ignore[type-arg]
    from datetime import UTC, datetime, timedelta

    from medvault.monitor import MonitorEvent
    from medvault.monitor._events import ACTIONS

    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return [
        MonitorEvent(
            event_id=b.event_id[i],
            ts=epoch + timedelta(microseconds=int(b.ts_us[i])),
            user=b.user[i],
            role=b.role[i],
            dept=b.dept[i],
            action=ACTIONS[int(b.action[i])],
            patient_id=b.patient_id[i],
            study_uid=b.study_uid[i],
            bytes=int(b.bytes[i]),
            src_ip=b.src_ip[i],
            user_agent=b.user_agent[i],
            outcome="failure" if b.failure[i] else "success",
            break_glass=bool(b.break_glass[i]),
        )
        for i in range(len(b))
    ]


if __name__ == "__main__":
    main()
