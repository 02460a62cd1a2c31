"""C-STORE intake benchmark: dcmtk's /usr/bin/storescu into medvault (mutual TLS) and into Orthanc.

    .venv/bin/python bench/dimse_bench.py [--data bench/data/ct200] [--runs 3] [--only both|medvault|orthanc]

medvault: a fresh home per run (``init_home``), a node registered with a certificate from the
home's CA, the DIMSE listener started in this process (its own threads), then one storescu
association sending every file of the data set over TLS 1.3 with the node certificate.
Orthanc (Debian /usr/sbin/Orthanc): a fresh storage folder per run, its plain DICOM port, the same
storescu command without TLS.

FAIRNESS NOTE: medvault receives over mutual TLS, checks the node's certificate and permissions,
encrypts every object (AES-256-GCM, per-object key), fsyncs it and commits an encrypted index entry
before it answers each C-STORE; Orthanc receives in plain TCP and writes plain files with its
default settings (``StorageCompression`` off). Debian's Orthanc 1.10 DICOM TLS is not used (see
bench/run_side_by_side.sh on its TLS problems), so the ratio includes medvault's TLS cost.
Both run on the same machine, one association, files in the same order.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STORESCU = "/usr/bin/storescu"  # not the venv's pynetdicom script of the same name
ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def timed_storescu(args: list[str], files: list[Path]) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        [STORESCU, *args, *map(str, files)], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed ({result.returncode}): {result.stdout}\n{result.stderr}")
    return elapsed


def run_medvault(files: list[Path], work: Path) -> float:
    from medvault.crypto.keyring import TEST_SCRYPT
    from medvault.dimse import (
        IssuedNode,
        ca_material,
        dimse_tls_for_home,
        node_store,
        start_dimse_server,
        write_node_credentials,
    )
    from medvault.home import init_home, open_home

    passphrase = "bench passphrase, not for production"
    init_home(work / "home", passphrase, scrypt=TEST_SCRYPT)  # scrypt cost only affects opening
    home = open_home(work / "home", passphrase)
    try:
        nodes = node_store(home)
        issued = nodes.add(
            "bench", ae_title="BENCH", host="127.0.0.1", port=104, permissions={"store"}, ca=ca_material(home)
        )
        assert isinstance(issued, IssuedNode)
        cert, key = write_node_credentials(issued, work / "creds")
        events: list[Any] = []
        server = start_dimse_server(
            archive=home.archive,
            nodes=nodes,
            tls=dimse_tls_for_home(home),
            audit=events.append,
            host="127.0.0.1",
            port=0,
        )
        try:
            ca = work / "home" / "tls" / "ca.crt"
            args = ["+tls", str(key), str(cert), "+cf", str(ca), "-aet", "BENCH", "-aec", "MEDVAULT"]
            elapsed = timed_storescu([*args, "127.0.0.1", str(server.port)], files)
        finally:
            server.shutdown()
        stored = len(home.archive.search("instance", []))
        if stored != len(files):
            raise RuntimeError(f"medvault stored {stored} of {len(files)} instances")
        return elapsed
    finally:
        home.close()


def run_orthanc(files: list[Path], work: Path) -> float:
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
    log = (work / "orthanc.log").open("w")
    proc = subprocess.Popen([ORTHANC, str(work / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(dicom_port)
        return timed_storescu(["-aet", "BENCH", "-aec", "ORTHANC", "127.0.0.1", str(dicom_port)], files)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=ROOT / "bench" / "data" / "ct200")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=("both", "medvault", "orthanc"), default="both")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dimse_side_by_side.json")
    a = parser.parse_args()
    files = sorted(a.data.rglob("*.dcm"))
    if not files:
        print(f"no .dcm files under {a.data}; generate them with: python bench/generate.py {a.data}")
        return 2
    total_bytes = sum(f.stat().st_size for f in files)
    results: dict[str, Any] = {"data": str(a.data), "files": len(files), "bytes": total_bytes, "runs": {}}
    targets = ["medvault", "orthanc"] if a.only == "both" else [a.only]
    for target in targets:
        times = []
        for _ in range(a.runs):
            work = Path(tempfile.mkdtemp(prefix=f"dimse-bench-{target}-"))
            try:
                times.append(run_medvault(files, work) if target == "medvault" else run_orthanc(files, work))
            finally:
                shutil.rmtree(work, ignore_errors=True)
        best = min(times)
        results["runs"][target] = {
            "seconds": times,
            "best_instances_per_s": len(files) / best,
            "best_mb_per_s": total_bytes / best / 1e6,
            "median_instances_per_s": len(files) / sorted(times)[len(times) // 2],
        }
    print(f"C-STORE intake, {len(files)} files ({total_bytes / 1e6:.1f} MB), one storescu association, "
          f"best / median of {a.runs}")  # fmt: skip
    for target, r in results["runs"].items():
        transport = "mutual TLS + encryption at rest" if target == "medvault" else "plain TCP, plain files"
        print(f"  {target:9s} {r['best_instances_per_s']:8.1f} inst/s  {r['best_mb_per_s']:7.1f} MB/s  "
              f"(median {r['median_instances_per_s']:.1f} inst/s)  [{transport}]")  # fmt: skip
    if len(results["runs"]) == 2:
        ratio = (
            results["runs"]["medvault"]["best_instances_per_s"]
            / results["runs"]["orthanc"]["best_instances_per_s"]
        )
        results["ratio_medvault_over_orthanc"] = ratio
        print(f"  ratio medvault/orthanc: {ratio:.2f}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {os.path.relpath(a.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
