"""Detection quality of medvault's monitor, side by side with a plain IsolationForest and the
rules alone, on data the detector was not tuned on.

    python bench/monitor_quality.py [--work bench/data/monitor] [--tune-seed 1] [--eval-seed 2] [--json FILE]

Generates (bench/monitor_generate.py) the tuning set (seed A) and the evaluation sets (seed B, and
seed B with ``--subtle`` scenarios), replays each through ``medvault.monitor`` with the default
rules and directory, through the same monitor with only the hand rules (no learned baselines, no
care relation), and through scikit-learn's IsolationForest over per-event features (fitted on the
warm-up week, scoring the rest). Prints, per set and detector: event AUROC, average precision,
event and incident recall at 1 % false-positive rate, alerts/day at each detector's own default
operating point, and recall per scenario type. Events of the warm-up week (days 0-6, when no
scenario runs and baselines are being learned) are left out of every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))

import monitor_generate
from medvault.monitor import OnlineMonitor, Rules
from medvault.monitor._events import ACTIONS
from medvault.monitor.files import load_directory, read_event_file

WARMUP_DAYS = 7
DAY_US = 86_400 * 1_000_000

RULES_ONLY = Rules(
    unusual_hour_points=0.0,
    rare_action_points=0.0,
    unexplained_points=0.0,
    new_patients_points=0.0,
    vip_unexplained_points=Rules().vip_points,
)


def load(path: Path) -> dict[str, Any]:
    batches = list(read_event_file(path / "EVENTS.jsonl"))
    labels = {}
    with (path / "LABELS.jsonl").open() as f:
        for line in f:
            rec = json.loads(line)
            labels[rec["event_id"]] = rec
    return {"batches": batches, "labels": labels, "directory": load_directory(path / "DIRECTORY.json")}


def run_monitor(
    data: dict[str, Any], rules: Rules, *, directory: bool = True
) -> tuple[np.ndarray, np.ndarray, float]:
    m = OnlineMonitor(directory=data["directory"] if directory else None, rules=rules)
    scores, alerts, incidents = [], [], []
    t0 = time.perf_counter()
    for b in data["batches"]:
        s = m.observe_batch(b)
        scores.append(s.score)
        alerts.append(s.alert)
        incidents.extend(s.incident_id)
    secs = time.perf_counter() - t0
    data["last_incidents"] = np.array([i or "" for i in incidents], dtype=object)
    return np.concatenate(scores), np.concatenate(alerts), secs


def if_features(data: dict[str, Any]) -> np.ndarray:
    """Per-event features a plain baseline would use: time, action, role, size, outcome, whether
    the address is on site, and how many events the user made in the last hour."""
    rows = []
    roles: dict[str, int] = {}
    recent: dict[str, list[int]] = defaultdict(list)
    for b in data["batches"]:
        ts = b.ts_us
        for i in range(len(b)):
            t = int(ts[i])
            hour = (t // 3_600_000_000) % 24
            dow = (t // DAY_US + 3) % 7
            onehot = [0.0] * len(ACTIONS)
            onehot[int(b.action[i])] = 1.0
            role = roles.setdefault(b.role[i] or "", len(roles))
            q = recent[b.user[i]]
            q.append(t)
            while q and q[0] <= t - 3_600_000_000:
                q.pop(0)
            ip = b.src_ip[i] or ""
            rows.append(
                [
                    float(hour),
                    float(dow),
                    *onehot,
                    float(role),
                    float(np.log1p(b.bytes[i])),
                    float(b.failure[i]),
                    float(ip.startswith("10.")),
                    float(len(q)),
                    float(b.patient_id[i] is not None),
                ]
            )
    return np.array(rows)


def metrics(
    score: np.ndarray,
    alert: np.ndarray,
    y: np.ndarray,
    inc: np.ndarray,
    scen: np.ndarray,
    days: float,
    found: np.ndarray | None = None,
) -> dict[str, Any]:
    neg = score[y == 0]
    thr = float(np.quantile(neg, 0.99))
    hit = score > thr
    fpr = float(hit[y == 0].mean())
    out: dict[str, Any] = {
        "auroc": float(roc_auc_score(y, score)),
        "ap": float(average_precision_score(y, score)),
        "event_recall_1fpr": float(hit[y == 1].mean()),
        "fpr_at_threshold": fpr,
        "alerts_per_day": float(alert.sum() / days),
        "false_alerts_per_day": float(alert[y == 0].sum() / days),
    }
    if found is not None:  # incidents the detector opened (what an officer triages)
        opened = set(found[alert].tolist()) - {""}
        false_opened = opened - set(found[alert & (y == 1)].tolist())
        out["incidents_per_day"] = len(opened) / days
        out["false_incidents_per_day"] = len(false_opened) / days
    else:
        out["incidents_per_day"] = out["false_incidents_per_day"] = float("nan")
    incidents = sorted(set(inc[y == 1].tolist()))
    out["incident_recall_1fpr"] = float(np.mean([hit[inc == i].any() for i in incidents]))
    out["incident_recall_default"] = float(np.mean([alert[inc == i].any() for i in incidents]))
    per: dict[str, dict[str, float]] = {}
    for s in sorted(set(scen[y == 1].tolist())):
        m = scen == s
        its = sorted(set(inc[m].tolist()))
        per[s] = {
            "events": int(m.sum()),
            "event_recall_1fpr": float(hit[m].mean()),
            "incident_recall_1fpr": float(np.mean([hit[inc == i].any() for i in its])),
            "incident_recall_default": float(np.mean([alert[inc == i].any() for i in its])),
        }
    out["per_scenario"] = per
    return out


def evaluate(name: str, data: dict[str, Any]) -> dict[str, Any]:
    ids = [e for b in data["batches"] for e in b.event_id]
    ts = np.concatenate([b.ts_us for b in data["batches"]])
    lab = data["labels"]
    y = np.array([lab.get(e, {}).get("label", 0) for e in ids])
    inc = np.array([lab.get(e, {}).get("incident") or "" for e in ids], dtype=object)
    scen = np.array([lab.get(e, {}).get("scenario") or "" for e in ids], dtype=object)
    day = (ts - ts[0]) // DAY_US
    keep = day >= WARMUP_DAYS
    days = float(day.max() + 1 - WARMUP_DAYS)
    results: dict[str, Any] = {"events": int(keep.sum()), "positives": int(y[keep].sum()), "days": days}
    s, a, secs = run_monitor(data, Rules())
    results["medvault"] = metrics(
        s[keep], a[keep], y[keep], inc[keep], scen[keep], days, data["last_incidents"][keep]
    )
    results["medvault"]["events_per_s"] = len(ids) / secs
    s, a, _ = run_monitor(data, Rules(), directory=False)
    results["medvault_no_directory"] = metrics(
        s[keep], a[keep], y[keep], inc[keep], scen[keep], days, data["last_incidents"][keep]
    )
    s, a, _ = run_monitor(data, RULES_ONLY)
    results["rules_only"] = metrics(
        s[keep], a[keep], y[keep], inc[keep], scen[keep], days, data["last_incidents"][keep]
    )
    x = if_features(data)
    forest = IsolationForest(n_estimators=200, random_state=0).fit(x[~keep])
    s = -forest.score_samples(x)
    a = forest.predict(x) == -1
    results["isolation_forest"] = metrics(s[keep], a[keep], y[keep], inc[keep], scen[keep], days)
    print_table(name, results)
    return results


def print_table(name: str, r: dict[str, Any]) -> None:
    print(
        f"\n== {name}: {r['events']} events after warm-up, {r['positives']} insider events,"
        f" {r['days']:.0f} days"
    )
    cols = ["medvault", "medvault_no_directory", "rules_only", "isolation_forest"]
    print(f"{'':28}" + "".join(f"{c:>24}" for c in cols))
    for key in (
        "auroc",
        "ap",
        "event_recall_1fpr",
        "incident_recall_1fpr",
        "alerts_per_day",
        "false_alerts_per_day",
        "incidents_per_day",
        "false_incidents_per_day",
        "incident_recall_default",
    ):
        print(f"{key:28}" + "".join(f"{r[c][key]:>24.3f}" for c in cols))
    print("per scenario (event recall @1%FPR / incident recall @1%FPR / incident recall at default):")
    for s in r["medvault"]["per_scenario"]:
        cells = []
        for c in cols:
            p = r[c]["per_scenario"][s]
            cells.append(
                f"{p['event_recall_1fpr']:.2f}/{p['incident_recall_1fpr']:.2f}/{p['incident_recall_default']:.2f}"
            )
        print(f"  {s:26}" + "".join(f"{x:>24}" for x in cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("bench/data/monitor"))
    ap.add_argument("--tune-seed", type=int, default=1)
    ap.add_argument("--eval-seed", type=int, default=2)
    ap.add_argument("--days", type=int, default=28)
    ap.add_argument("--only", choices=["tune", "eval"], default=None)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    sets = []
    if a.only != "eval":
        sets.append((f"tuning set (seed {a.tune_seed})", a.tune_seed, False))
    if a.only != "tune":
        sets.append((f"evaluation (seed {a.eval_seed})", a.eval_seed, False))
        sets.append((f"evaluation, subtle scenarios (seed {a.eval_seed})", a.eval_seed, True))
    out = {}
    for name, seed, subtle in sets:
        path = a.work / f"seed{seed}{'-subtle' if subtle else ''}"
        if not (path / "EVENTS.jsonl").exists():
            monitor_generate.generate(path, seed=seed, days=a.days, users=160, subtle=subtle)
        out[name] = evaluate(name, load(path))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
