#!/usr/bin/env python3
"""The disk's floor under one C-STORE: what the durable writes of one instance cost here, alone.

    .venv/bin/python bench/fsync_floor.py [--dir bench/data] [--size 525000] [--count 100]

An instance is acknowledged only after its object is fsynced, its directory entry is fsynced, the
index commit is fsynced and the ledger append is fsynced, one after the other. This times each
kind of write on the given folder's file system (use the archive's), so that the C-STORE figures
in docs/benchmarks.md can be read against what no software on this disk can avoid.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def timed(count: int, step: Callable[[int], None]) -> float:
    """Median milliseconds of ``step`` over ``count`` calls."""
    times = []
    for i in range(count):
        start = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--dir", type=Path, default=Path("bench/data"), help="a folder on the archive's file system"
    )
    p.add_argument("--size", type=int, default=525_000, help="object size (a 512x512 CT slice: ~525 kB)")
    p.add_argument("--count", type=int, default=100)
    args = p.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fsync-floor-", dir=args.dir))
    data = os.urandom(args.size)
    try:

        def write(path: Path, *, sync: bool) -> None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)

        def sync_dir() -> None:
            fd = os.open(work, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        rows = [
            ("object write, no fsync", timed(args.count, lambda i: write(work / f"a{i}", sync=False))),
            ("object write + fsync", timed(args.count, lambda i: write(work / f"b{i}", sync=True))),
            ("directory fsync after a new entry", 0.0),
            ("small append + fdatasync (a commit)", 0.0),
        ]

        def entry_then_sync(i: int) -> None:
            write(work / f"c{i}", sync=True)
            start = time.perf_counter()
            sync_dir()
            dir_times.append(time.perf_counter() - start)

        dir_times: list[float] = []
        timed(args.count, entry_then_sync)
        rows[2] = (rows[2][0], 1000 * statistics.median(dir_times))
        log = os.open(work / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            rows[3] = (
                rows[3][0],
                timed(args.count, lambda i: (os.write(log, b"x" * 300), os.fdatasync(log))),
            )
        finally:
            os.close(log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.size:,}-byte objects, median of {args.count} on {args.dir}:")
    for name, ms in rows:
        print(f"  {name:38s} {ms:6.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
