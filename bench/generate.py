#!/usr/bin/env python3
"""Generate a synthetic CT data set for benchmarks (valid DICOM Part 10, deterministic from --seed).

Example (the default: 20 studies x 2 series x 50 instances = 2,000 512x512 CT images, ~1.05 GB):

    .venv/bin/python bench/generate.py bench/data/ct2000

Layout: OUTDIR/study0001/S01/I0001.dcm ... plus OUTDIR/manifest.json (parameters, UIDs, counts).
Two consecutive studies share a patient (so QIDO ?PatientID= finds 2 studies).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from medvault.sample import StudyPlan, generate_study, plan_dataset, uid_from

MANIFEST = "manifest.json"


def _one_study(out_dir: str, plan: StudyPlan, series: int, instances: int, rows: int, cols: int) -> dict:
    paths = generate_study(
        Path(out_dir) / plan.folder,
        seed=plan.seed,
        series=series,
        instances=instances,
        rows=rows,
        cols=cols,
        patient_name=plan.patient_name,
        patient_id=plan.patient_id,
    )
    return {
        "folder": plan.folder,
        "seed": plan.seed,
        "patient_name": plan.patient_name,
        "patient_id": plan.patient_id,
        "study_uid": str(uid_from("study", plan.seed)),
        "series_uids": [str(uid_from("series", plan.seed, s)) for s in range(series)],
        "files": len(paths),
        "bytes": sum(p.stat().st_size for p in paths),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="generate.py",
        description=(
            "Write a deterministic synthetic CT data set: DICOM Part 10 CT Image Storage, Explicit VR "
            "Little Endian, 16-bit signed phantom pixels with noise, 2.25 UIDs derived from --seed."
        ),
        epilog="Same arguments -> byte-identical files. The total is STUDIES x SERIES x INSTANCES files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("outdir", type=Path, help="output folder (created; existing files are overwritten)")
    p.add_argument("--studies", type=int, default=20, help="number of studies")
    p.add_argument("--series-per-study", type=int, default=2, help="series in each study")
    p.add_argument("--instances-per-series", type=int, default=50, help="images (slices) in each series")
    p.add_argument("--rows", type=int, default=512, help="image rows")
    p.add_argument("--cols", type=int, default=512, help="image columns")
    p.add_argument("--seed", type=int, default=1, help="seed: UIDs, names, dates and pixels derive from it")
    p.add_argument("--studies-per-patient", type=int, default=2, help="consecutive studies sharing a patient")
    p.add_argument(
        "--jobs",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="worker processes (one study at a time each)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("studies", "series_per_study", "instances_per_series", "jobs", "studies_per_patient"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    if args.rows < 8 or args.cols < 8:
        raise SystemExit("--rows/--cols must be >= 8")
    console = Console(stderr=True)
    out: Path = args.outdir
    out.mkdir(parents=True, exist_ok=True)
    plans = plan_dataset(args.studies, seed=args.seed, studies_per_patient=args.studies_per_patient)
    per_study = args.series_per_study * args.instances_per_series
    total = per_study * args.studies
    results: dict[int, dict] = {}
    t0 = time.perf_counter()
    with Progress(
        TextColumn("[bold]generating"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[rate]}"),
        console=console,
        disable=args.quiet,
    ) as progress:
        task = progress.add_task("files", total=total, rate="")
        job_args = (args.series_per_study, args.instances_per_series, args.rows, args.cols)
        if args.jobs == 1:
            for plan in plans:
                results[plan.index] = _one_study(str(out), plan, *job_args)
                done = per_study * len(results)
                progress.update(task, completed=done, rate=f"{done / (time.perf_counter() - t0):.0f} files/s")
        else:
            with ProcessPoolExecutor(max_workers=args.jobs) as pool:
                futures = {pool.submit(_one_study, str(out), plan, *job_args): plan.index for plan in plans}
                for fut in as_completed(futures):
                    results[futures[fut]] = fut.result()
                    done = per_study * len(results)
                    progress.update(
                        task, completed=done, rate=f"{done / (time.perf_counter() - t0):.0f} files/s"
                    )
    elapsed = time.perf_counter() - t0
    studies = [results[k] for k in sorted(results)]
    total_bytes = sum(s["bytes"] for s in studies)
    manifest = {
        "generator": "medvault bench/generate.py",
        "params": {
            "studies": args.studies,
            "series_per_study": args.series_per_study,
            "instances_per_series": args.instances_per_series,
            "rows": args.rows,
            "cols": args.cols,
            "seed": args.seed,
            "studies_per_patient": args.studies_per_patient,
        },
        "files": total,
        "bytes": total_bytes,
        "studies": studies,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    print(
        f"wrote {total} files, {total_bytes / 1e6:.1f} MB to {out} in {elapsed:.1f} s "
        f"({total / elapsed:.0f} files/s, {total_bytes / 1e6 / elapsed:.1f} MB/s, {args.jobs} jobs)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
