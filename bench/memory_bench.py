"""Peak memory a request makes a worker hold (issue #12, items 1-3), per request kind.

    .venv/bin/python bench/memory_bench.py [--part-mb 160] [--clients 4]

One `medvault serve` with one worker (one process: its VmHWM, reset through /proc/PID/clear_refs
before each scenario, is what the scenario cost). Scenarios: a 256 MB chunked body to /auth/token
without credentials; one STOW part of N MB; CLIENTS concurrent STOW requests of one N/CLIENTS MB
part each; a 200-frame list (52 MB answer); 8,000 repeated frames. Run as the owner of the server
process (clear_refs needs it). Prints one line per scenario: growth of the peak in MB and as a
multiple of the largest instance involved.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

MB = 1024 * 1024
PASSPHRASE = "bench passphrase, not for production"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def measure(pid: int, scenario: object) -> int:
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    start = status(pid, "VmRSS")
    scenario()  # type: ignore[operator]
    return status(pid, "VmHWM") - start


def instance(size: int, frames: int = 1) -> tuple[bytes, Dataset]:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = "BENCH-MEM", "OT"
    ds.Columns = 512 if frames > 1 else 4096
    ds.Rows = size // (ds.Columns * frames)
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes(ds.Rows * ds.Columns * frames)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), ds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part-mb", type=int, default=160)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    from medvault.crypto.keyring import TEST_SCRYPT
    from medvault.home import init_home, open_home

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "home"
        init_home(root, PASSPHRASE, scrypt=TEST_SCRYPT)
        opened = open_home(root, PASSPHRASE)
        key = opened.api_keys.create("bench", role="archivist")
        opened.close()
        text = (root / "medvault.toml").read_text()
        text = text.replace("workers = 0 ", "workers = 1 ").replace("port = 2762", f"port = {free_port()}")
        (root / "medvault.toml").write_text(text)
        port = free_port()
        env = {**os.environ, "MEDVAULT_PASSPHRASE": PASSPHRASE}
        server = subprocess.Popen(
            [sys.executable, "-m", "medvault.cli", "serve", "--home", str(root), "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        context = ssl.create_default_context(cafile=str(root / "tls" / "ca.crt"))
        base = f"https://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(base + "/healthz", verify=context).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        client = httpx.Client(
            base_url=base, verify=context, headers={"Authorization": f"Bearer {key}"}, timeout=600
        )
        client.get("/dicomweb/studies")
        boundary = "bench"
        kind = f'multipart/related; type="application/dicom"; boundary={boundary}'

        def stow(data: bytes) -> None:
            def body():  # type: ignore[no-untyped-def]
                yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                for start in range(0, len(data), MB):
                    yield data[start : start + MB]
                yield f"\r\n--{boundary}--\r\n".encode()

            answer = client.post("/dicomweb/studies", content=body(), headers={"Content-Type": kind})
            assert answer.status_code == 200, answer.text

        def unauthenticated() -> None:
            raw = socket.create_connection(("127.0.0.1", port))
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                sock.sendall(b"POST /auth/token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
                try:
                    for _ in range(256):
                        sock.sendall(b"100000\r\n" + b"a" * MB + b"\r\n")
                except OSError:
                    pass

        rows: list[tuple[str, int, int]] = []
        rows.append(
            ("256 MB chunked to /auth/token, no credentials", measure(server.pid, unauthenticated), 0)
        )
        big = instance(args.part_mb * MB)[0]
        rows.append((f"STOW, one {args.part_mb} MB part", measure(server.pid, lambda: stow(big)), len(big)))
        big = b""
        parts = [instance(args.part_mb * MB // args.clients)[0] for _ in range(args.clients)]
        sizes = len(parts[0])

        def concurrent() -> None:
            threads = [threading.Thread(target=stow, args=(p,)) for p in parts]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        rows.append(
            (f"STOW, {args.clients} clients at once, one {args.part_mb // args.clients} MB part each",
             measure(server.pid, concurrent), sizes)
        )  # fmt: skip
        parts = []
        multi, ds = instance(200 * 512 * 512, frames=200)
        stow(multi)
        path = f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        path += f"/instances/{ds.SOPInstanceUID}"

        def frames() -> None:
            with client.stream("GET", path + "/frames/" + ",".join(map(str, range(1, 201)))) as answer:
                for _ in answer.iter_bytes():
                    pass

        rows.append(("WADO, 200 frames (52 MB answer)", measure(server.pid, frames), len(multi)))
        rows.append(
            ("WADO, 8,000 repeated frames (refused)",
             measure(server.pid, lambda: client.get(path + "/frames/" + ",".join(["1"] * 8000))), len(multi))
        )  # fmt: skip
        client.close()
        server.terminate()
        server.wait(30)
    print(f"{'scenario':<62} {'peak growth':>12} {'x instance':>11}")
    for name, growth, size in rows:
        ratio = f"{growth / size:.2f}" if size else "-"
        print(f"{name:<62} {growth / MB:>9.0f} MB {ratio:>11}")


if __name__ == "__main__":
    main()
