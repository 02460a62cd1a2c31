#!/usr/bin/env bash
# Many short side-by-side runs, each with fresh servers and another target measured first, then the
# median of every figure and of the per-round ratios. On a noisy shared machine one run proves little;
# the median over rounds with the order rotated does (a target measured first does a little better).
#
#   bench/rounds.sh [dicomweb_bench.py options]           e.g. --phases stow
#   ROUNDS=8 MEDVAULT_HTTP=1 bench/rounds.sh --phases stow,wado
#
# Knobs: ROUNDS (default 6), RESULTS (default bench/results/rounds), and every run_side_by_side.sh knob
# (DATA, MEDVAULT_HTTP, ORTHANC_TLS: off here unless set, ...). Each round writes RESULTS/roundN.json;
# the summary goes to stdout and RESULTS/summary.json.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ROUNDS=${ROUNDS:-6}
RESULTS=${RESULTS:-bench/results/rounds}
export ORTHANC_TLS=${ORTHANC_TLS:-0}
NAMES=(medvault orthanc)
[[ "${MEDVAULT_HTTP:-0}" == 1 ]] && NAMES+=(medvault-http)
[[ "$ORTHANC_TLS" == 1 ]] && NAMES+=(orthanc-tls)
mkdir -p "$RESULTS"
rm -f "$RESULTS"/round*.json
for ((i = 1; i <= ROUNDS; i++)); do
    first=${NAMES[$(((i - 1) % ${#NAMES[@]}))]}
    echo "== round $i of $ROUNDS: $first first"
    # A round whose servers all ran but where some requests failed still counts: its failed figures
    # are left out below. A round that wrote no results (a server did not start) stops the series.
    FIRST=$first OUT_JSON="$RESULTS/round$i.json" bash bench/run_side_by_side.sh "$@" >"$RESULTS/round$i.log" 2>&1 ||
        if [[ -s "$RESULTS/round$i.json" ]]; then
            echo "   round $i: some requests failed (figures from them left out):" >&2
            grep '^PROBLEM' "$RESULTS/round$i.log" | sed 's/^/   /' >&2
        else
            echo "round $i failed; see $RESULTS/round$i.log" >&2; tail -20 "$RESULTS/round$i.log" >&2; exit 1
        fi
done
"$ROOT/.venv/bin/python" - "$RESULTS" "$ROUNDS" <<'PY'
import json, statistics, sys
from pathlib import Path

results, rounds = Path(sys.argv[1]), int(sys.argv[2])
reports = [json.loads((results / f"round{i}.json").read_text())["targets"] for i in range(1, rounds + 1)]
FIGURES = {  # name: (path in a target's results, higher is better)
    "STOW instances/s": (("stow", "instances_per_s"), True),
    "QIDO /studies?PatientID= p50 ms": (("qido", "studies?PatientID=", "p50_ms"), False),
    "QIDO instances of a series p50 ms": (("qido", "studies/{uid}/series/{uid}/instances", "p50_ms"), False),
    "WADO study MB/s": (("wado", "retrieve_study", "mb_per_s"), True),
    "WADO frame p50 ms": (("wado", "frame", "p50_ms"), False),
    "WADO metadata p50 ms": (("wado", "metadata", "p50_ms"), False),
}


def lookup(target: dict, path: tuple[str, ...]) -> float | None:
    """The figure, or None when it is missing or came from failed or wrong requests."""
    phase = target.get(path[0]) if isinstance(target, dict) else None
    section = phase.get(path[1]) if isinstance(phase, dict) and len(path) > 2 else phase
    if isinstance(phase, dict) and path[0] == "stow" and phase.get("failed"):
        return None
    if isinstance(section, dict) and any(section.get(k) for k in ("errors", "mismatches", "studies_wrong")):
        return None
    for key in path:
        target = target.get(key) if isinstance(target, dict) else None
    return target if isinstance(target, int | float) else None


summary: dict = {}
names = list(reports[0])
for label, (path, _) in FIGURES.items():
    per_target = {n: [lookup(r[n], path) for r in reports] for n in names}
    if all(v is None for vals in per_target.values() for v in vals):
        continue
    entry = summary.setdefault(label, {})
    for n, vals in per_target.items():
        got = [v for v in vals if v is not None]
        entry[n] = {"rounds": vals, "median": statistics.median(got) if got else None}
    for other in names:
        if other == "medvault":
            continue
        ratios = [a / b for a, b in zip(per_target["medvault"], per_target[other]) if a and b]
        if ratios:
            entry[f"medvault/{other}"] = {"rounds": [round(x, 3) for x in ratios],
                                          "median": round(statistics.median(ratios), 3)}
(results / "summary.json").write_text(json.dumps(summary, indent=2))
for label, entry in summary.items():
    print(label)
    for name, e in entry.items():
        vals = " ".join("-" if v is None else f"{v:.3g}" for v in e["rounds"])
        print(f"  {name:24} median {e['median']:.3g}   rounds: {vals}")
PY
