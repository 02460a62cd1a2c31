#!/usr/bin/env python3
"""What the online monitor costs the archive: STOW-RS and WADO-RS with the monitor on and off.

    .venv/bin/python bench/monitor_overhead.py [--rounds 3] [--data bench/data/ct400]

Each round starts two fresh archives (same data set, same settings, ``[monitor] enabled`` true in
one and false in the other) on free ports, and runs bench/dicomweb_bench.py against both in one
run, the order alternating between rounds (the first target of a run does slightly better). The
figures are throughput ratios on/off: 1.00 means no cost, 0.95 a 5 % cost. Every stored
instance is a ledger event the monitor scores, so the STOW phase is where it works hardest.

On a shared, noisy machine throughput ratios swing by ±20 % between rounds whatever is measured;
so the bench also reads the CPU time of every process of the "on" archive (/proc) during the run:
the monitor process's share of it is the cost that noise cannot hide.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
err = Console(stderr=True)
PASSPHRASE = "monitor overhead bench, not a secret"
FIGURES = {
    "STOW instances/s": ("stow", "instances_per_s"),
    "WADO study MB/s": ("wado", "retrieve_study", "mb_per_s"),
    "WADO frame p50 ms": ("wado", "frame", "p50_ms"),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def medvault(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [PY, "-m", "medvault.cli", *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"medvault {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def set_monitor(home: Path, enabled: bool) -> None:
    path = home / "medvault.toml"
    lines, section = path.read_text().splitlines(), ""
    for i, line in enumerate(lines):
        if line.startswith("["):
            section = line.split("]")[0].strip("[ ")
        elif section == "monitor" and line.split("=")[0].strip() == "enabled":
            lines[i] = f"enabled = {'true' if enabled else 'false'}"
        elif section == "dimse" and line.split("=")[0].strip() == "port":
            lines[i] = f"port = {free_port()}"
    path.write_text("\n".join(lines) + "\n")


class Archive:
    """A fresh home and its `medvault serve` on a free port; ``storage``: [storage] settings
    (bench/s3_side_by_side.py points it at a bucket)."""

    def __init__(
        self,
        parent: Path,
        name: str,
        *,
        monitor: bool,
        workers: int,
        storage: dict[str, bool | int | str] | None = None,
    ) -> None:
        self.name, self.home, self.port = name, parent / name, free_port()
        self.env = {**os.environ, "MEDVAULT_PASSPHRASE": PASSPHRASE}
        medvault("init", "--home", str(self.home), env=self.env)
        set_monitor(self.home, monitor)
        if storage:
            from medvault.config import write_settings

            write_settings(self.home, "storage", storage)
        self.key = medvault("apikeys", "create", "bench", "--role", "archivist", "--home", str(self.home),
                            env=self.env).strip().splitlines()[-1]  # fmt: skip
        self.process = subprocess.Popen(
            [PY, "-m", "medvault.cli", "serve", "--home", str(self.home), "--port", str(self.port),
             "--workers", str(workers)],
            env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        ca = str(self.home / "tls" / "ca.crt")
        while time.monotonic() < deadline:
            try:
                if (
                    httpx.get(f"https://127.0.0.1:{self.port}/healthz", verify=ca, timeout=1).status_code
                    == 200
                ):
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop()
        raise SystemExit(f"{name}: medvault serve did not start")

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return sorted(int(p) for p in path.read_text().split())

    def cpu_seconds(self) -> dict[int, float]:
        """CPU time (user + system) of the server and each of its workers, by pid."""
        ticks = os.sysconf("SC_CLK_TCK")
        out = {}
        for pid in [self.process.pid, *self.children()]:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / ticks
        return out

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def lookup(doc: dict, path: tuple[str, ...]) -> float:
    value: object = doc
    for key in path:
        value = value[key]  # type: ignore[index]
    return float(value)  # type: ignore[arg-type]


def bench_command(
    archives: dict[str, Archive], order: list[str], data: Path, out: Path, args: argparse.Namespace
) -> tuple[list[str], dict[str, str]]:
    """The bench/dicomweb_bench.py command (STOW then WADO) against ``archives`` in ``order``,
    and its environment (each archive's API key in a variable)."""
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
    return cmd, env


def one_round(data: Path, order: list[str], work: Path, args: argparse.Namespace) -> dict[str, dict]:
    archives: dict[str, Archive] = {}
    out = work / "round.json"
    try:
        for name in order:
            archives[name] = Archive(work, name, monitor=name == "on", workers=args.workers)
        cmd, env = bench_command(archives, order, data, out, args)
        on = archives["on"]
        monitor_pid = on.children()[-1]  # serve forks the HTTP workers, DIMSE, then the monitor
        before = on.cpu_seconds()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        after = on.cpu_seconds()
        results = json.loads(out.read_text())["targets"]
        spent = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
        results["on"]["cpu"] = {"monitor": spent.get(monitor_pid, 0.0), "archive": sum(spent.values())}
    finally:
        for a in archives.values():
            a.stop()
    return results


def arguments(description: str, *, workers: int) -> argparse.Namespace:
    """The options of a side-by-side bench (this one, bench/s3_side_by_side.py)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT / "bench" / "data" / "ct400")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--workers", type=int, default=workers, help=f"HTTP workers of each server (default {workers})"
    )
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--json", type=Path, help="write every round's figures here")
    args = p.parse_args()
    if not (args.data / "manifest.json").exists():
        err.print(f"generating {args.data} (4 studies x 2 series x 50 CT images, ~210 MB)")
        subprocess.run([PY, str(ROOT / "bench" / "generate.py"), str(args.data), "--studies", "4", "--quiet"],
                       check=True)  # fmt: skip
    return args


def side_by_side(
    args: argparse.Namespace,
    pair: tuple[str, str],
    run: Callable[[Path, list[str], Path, argparse.Namespace], dict[str, dict]],
    extra: Callable[[dict[str, dict]], dict[str, float]],
    title: str,
) -> None:
    """``args.rounds`` rounds of ``run`` (fresh archives each, the order alternating), each
    figure of FIGURES for both and their ratio, ``extra``'s figures, then medians in a table."""
    a, b = pair
    rounds: list[dict[str, float]] = []
    for i in range(args.rounds):
        order = [a, b] if i % 2 == 0 else [b, a]
        err.print(f"round {i + 1} of {args.rounds}: {order[0]} first")
        with tempfile.TemporaryDirectory(prefix="mv-bench-") as tmp:
            results = run(args.data, order, Path(tmp), args)
        row = {}
        for label, path in FIGURES.items():
            x, y = lookup(results[a], path), lookup(results[b], path)
            row[f"{label} {a}"], row[f"{label} {b}"] = x, y
            row[f"{label} {a}/{b}"] = x / y if y else float("nan")
        row[f"stored {a}"] = lookup(results[a], ("stow", "stored"))
        row[f"stored {b}"] = lookup(results[b], ("stow", "stored"))
        row.update(extra(results))
        rounds.append(row)
    table = Table(title=f"{title} ({args.rounds} rounds, order alternating)")
    table.add_column("figure")
    for i in range(len(rounds)):
        table.add_column(f"round {i + 1}", justify="right")
    table.add_column("median", justify="right")
    for key in rounds[0]:
        values = [r[key] for r in rounds]
        exact = "/" in key or "share" in key or "CPU" in key
        table.add_row(key, *(f"{v:,.3f}" if exact else f"{v:,.1f}" for v in values),
                      f"{statistics.median(values):,.3f}")  # fmt: skip
    Console(width=160).print(table)
    if args.json:
        args.json.write_text(json.dumps(rounds, indent=2))


def _monitor_cpu(results: dict[str, dict]) -> dict[str, float]:
    cpu = results["on"]["cpu"]
    return {
        "monitor CPU s": cpu["monitor"],
        "archive CPU s (all processes)": cpu["archive"],
        "monitor share of archive CPU": cpu["monitor"] / cpu["archive"] if cpu["archive"] else 0.0,
    }


def main() -> int:
    args = arguments(__doc__ or "", workers=2)
    side_by_side(args, ("on", "off"), one_round, _monitor_cpu, "online monitor on vs off")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
