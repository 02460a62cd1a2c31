#!/usr/bin/env python3
"""Where the CPU goes in study retrieval: server and client CPU seconds per GB served.

Retrieves every study of a generated data set (``bench/data/ct2000/manifest.json``) from one
running DICOMweb server, ``--rounds`` times with ``--concurrency`` client threads, and reads the
CPU time of the server's whole process tree from /proc (Linux) before and after:

    .venv/bin/python bench/wado_cpu.py https://127.0.0.1:19044/dicomweb --pid SERVER_PID \\
        --auth bearer-env:MEDVAULT_BENCH_KEY --ca HOME/tls/ca.crt
    .venv/bin/python bench/wado_cpu.py http://127.0.0.1:19042/dicom-web --pid ORTHANC_PID \\
        --auth basic:USER:PASSWORD

On a machine whose cores the client shares with the server, throughput is capped by the sum of
both figures; this separates what the server costs from what the client pays (e.g. for TLS).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in children:
            pids += process_tree(int(child))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


def authorization(spec: str) -> str:
    kind, _, value = spec.partition(":")
    if kind == "bearer-env":
        return f"Bearer {os.environ[value]}"
    if kind == "basic":
        return "Basic " + base64.b64encode(value.encode()).decode()
    raise SystemExit("--auth is bearer-env:VAR or basic:USER:PASSWORD")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url", help="DICOMweb root URL")
    parser.add_argument("--pid", type=int, required=True, help="the server's (parent) process id")
    parser.add_argument("--auth", required=True)
    parser.add_argument("--ca", default=None, help="CA bundle for HTTPS")
    parser.add_argument("--data", type=Path, default=Path("bench/data/ct2000"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

    studies = [s["study_uid"] for s in json.loads((args.data / "manifest.json").read_text())["studies"]]
    headers = {"Authorization": authorization(args.auth), "Accept": ACCEPT}
    local = threading.local()

    def fetch(uid: str) -> int:
        if not hasattr(local, "client"):
            local.client = httpx.Client(verify=args.ca or True, headers=headers, timeout=300)
        response = local.client.get(f"{args.url}/studies/{uid}")
        response.raise_for_status()
        return len(response.content)

    pids = process_tree(args.pid)
    with ThreadPoolExecutor(args.concurrency) as pool:
        list(pool.map(fetch, studies[: args.concurrency]))  # connections up, caches warm
    server0, client0, start = cpu_seconds(pids), resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        total = sum(pool.map(fetch, studies * args.rounds))
    wall = time.perf_counter() - start
    server, client1 = cpu_seconds(pids) - server0, resource.getrusage(resource.RUSAGE_SELF)
    client = (client1.ru_utime - client0.ru_utime) + (client1.ru_stime - client0.ru_stime)
    gb = total / 1e9
    print(
        f"{total / 1e6 / wall:.0f} MB/s over {wall:.2f} s; CPU per GB: server {server / gb:.2f} s, "
        f"client {client / gb:.2f} s"
    )


if __name__ == "__main__":
    main()
