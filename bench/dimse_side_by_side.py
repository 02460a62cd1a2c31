#!/usr/bin/env python3
"""C-STORE intake side by side, at 1 and 4 concurrent associations: medvault (`medvault serve`,
mutual TLS with a node certificate) against Orthanc on its plain DICOM port, with
``TCP_NODELAY=1`` (dcmtk then disables Nagle's algorithm on its sockets) and as shipped.

    .venv/bin/python bench/dimse_side_by_side.py [--data bench/data/ct400] [--rounds 3]
        [--associations 1,4] [--targets medvault,orthanc-nodelay,orthanc]

Every run starts a fresh server (its own home or storage folder, free ports) and sends the whole
data set with dcmtk's ``storescu`` (TCP_NODELAY set on the client too): N associations are N
storescu processes started together, each with every N-th file; the time runs from their start to
the last one's exit. The target order rotates between rounds. Ratios are medvault / Orthanc.

FAIRNESS NOTE: medvault receives over mutual TLS 1.3, checks the node's certificate and
permission, encrypts every object, fsyncs it, indexes it and ledgers it before each C-STORE
response; Orthanc receives plain TCP and writes plain files with its default settings
(``StorageCompression`` off).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
STORESCU = "/usr/bin/storescu"  # dcmtk's, not pynetdicom's script of the same name
ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PY = sys.executable
PASSPHRASE = "dimse bench passphrase, not a secret"
err = Console(stderr=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and all its descendants still running."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
        todo += [int(c) for c in children]
    return total


def send(args: list[str], files: list[Path], associations: int) -> float:
    """Seconds for ``associations`` storescu processes to send ``files`` between them."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    slices = [files[i::associations] for i in range(associations)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [STORESCU, *args, *map(str, part)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for part in slices
    ]
    outputs = [p.communicate() for p in procs]
    elapsed = time.perf_counter() - start
    for p, (out, error) in zip(procs, outputs, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed ({p.returncode}): {out}\n{error[-2000:]}")
    return elapsed


@contextmanager
def medvault(work: Path) -> Any:
    """A served home with a store node; yields its pid and the storescu arguments."""
    from medvault.crypto.keyring import TEST_SCRYPT
    from medvault.dimse import IssuedNode, ca_material, node_store, write_node_credentials
    from medvault.home import init_home, open_home

    home = work / "home"
    init_home(home, PASSPHRASE, scrypt=TEST_SCRYPT)  # the scrypt cost only affects opening
    dimse_port, https_port = free_port(), free_port()
    text = (home / "medvault.toml").read_text().splitlines()
    section = ""
    for i, line in enumerate(text):
        if line.startswith("["):
            section = line.split("]")[0].strip("[ ")
        elif section == "dimse" and line.split("=")[0].strip() == "port":
            text[i] = f"port = {dimse_port}"
    (home / "medvault.toml").write_text("\n".join(text) + "\n")
    opened = open_home(home, PASSPHRASE)
    try:
        issued = node_store(opened).add(
            "bench",
            ae_title="BENCH",
            host="127.0.0.1",
            port=104,
            permissions={"store"},
            ca=ca_material(opened),
        )
        assert isinstance(issued, IssuedNode)
        cert, key = write_node_credentials(issued, work / "creds")
    finally:
        opened.close()
    env = {**os.environ, "MEDVAULT_PASSPHRASE": PASSPHRASE}
    serve = [PY, "-m", "medvault.cli", "serve", "--home", str(home), "--port", str(https_port)]
    log = (work / "serve.log").open("w")
    proc = subprocess.Popen(serve, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_port(dimse_port)
        ca = home / "tls" / "ca.crt"
        yield proc.pid, ["+tls", str(key), str(cert), "+cf", str(ca), "-aet", "BENCH", "-aec", "MEDVAULT",
                         "127.0.0.1", str(dimse_port)]  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextmanager
def orthanc(work: Path, *, nodelay: bool) -> Any:
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "bench-orthanc",
        "StorageDirectory": str(work / "db"),
        "IndexDirectory": str(work / "db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "DicomCheckCalledAet": True,
        "DicomAlwaysAllowStore": True,
        "StorageCompression": False,
    }
    (work / "orthanc.json").write_text(json.dumps(config))
    env = dict(os.environ)
    if nodelay:
        env["TCP_NODELAY"] = "1"
    else:
        env.pop("TCP_NODELAY", None)
    with (work / "orthanc.log").open("w") as log:
        proc = subprocess.Popen(
            [ORTHANC, str(work / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        try:
            wait_port(dicom_port)
            yield proc.pid, ["-aet", "BENCH", "-aec", "ORTHANC", "127.0.0.1", str(dicom_port)]
        finally:
            proc.terminate()
            proc.wait(timeout=30)


TARGETS: dict[str, Callable[[Path], AbstractContextManager[tuple[int, list[str]]]]] = {
    "medvault": medvault,
    "orthanc-nodelay": lambda work: orthanc(work, nodelay=True),
    "orthanc": lambda work: orthanc(work, nodelay=False),
}


def _spread(values: list[float], fmt: str) -> str:
    low, high, mid = (fmt.format(v) for v in (min(values), max(values), statistics.median(values)))
    return f"{low}-{high} ({mid})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT / "bench" / "data" / "ct400")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--associations", default="1,4")
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    files = sorted(a.data.rglob("*.dcm"))
    if not files:
        err.print(
            f"no .dcm files under {a.data}; generate them: python bench/generate.py {a.data} --studies 4"
        )
        return 2
    counts = [int(x) for x in a.associations.split(",")]
    names = [t for t in a.targets.split(",") if t]
    rates: dict[tuple[str, int], list[float]] = {(t, n): [] for t in names for n in counts}
    cpu_ms: dict[tuple[str, int], list[float]] = {(t, n): [] for t in names for n in counts}
    for r in range(a.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in counts:
            for target in order:
                work = Path(tempfile.mkdtemp(prefix=f"dimse-{target}-"))
                try:
                    with TARGETS[target](work) as (pid, args):
                        before = cpu_seconds(pid)
                        seconds = send(args, files, n)
                        spent = cpu_seconds(pid) - before
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                rates[(target, n)].append(len(files) / seconds)
                cpu_ms[(target, n)].append(spent * 1000 / len(files))
                err.print(f"round {r + 1}: {target:16s} {n} assoc  {len(files) / seconds:7.1f} inst/s  "
                          f"server CPU {spent * 1000 / len(files):.2f} ms/inst")  # fmt: skip
    table = Table(
        title=f"C-STORE intake, {len(files)} files, {a.rounds} rounds (instances/s, min-max, median)"
    )
    table.add_column("target")
    for n in counts:
        table.add_column(f"{n} assoc", justify="right")
    for target in names:
        table.add_row(target, *(_spread(rates[(target, n)], "{:.0f}") for n in counts))
    if "medvault" in names:
        for other in (t for t in names if t != "medvault"):
            cells = []
            for n in counts:
                # per-round ratios: both measured in the same round, close in time
                ratio = [m / o for m, o in zip(rates[("medvault", n)], rates[(other, n)], strict=True)]
                cells.append(_spread(ratio, "{:.2f}"))
            table.add_row(f"medvault / {other}", *cells)
    Console().print(table)
    cpu = Table(title="server CPU per instance (ms, all its processes: what a shared machine distorts least)")
    cpu.add_column("target")
    for n in counts:
        cpu.add_column(f"{n} assoc", justify="right")
    for target in names:
        cpu.add_row(target, *(_spread(cpu_ms[(target, n)], "{:.2f}") for n in counts))
    Console().print(cpu)
    if a.json:
        doc = {
            f"{t} {n}": {"inst_per_s": rates[(t, n)], "server_cpu_ms_per_inst": cpu_ms[(t, n)]}
            for t, n in rates
        }
        a.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
