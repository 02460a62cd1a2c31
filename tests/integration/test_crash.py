"""kill -9 under concurrent STOW (issue #12, "A fuzz suite that stays") and concurrent C-STORE
(issue #19): every acknowledged instance comes back byte-identical, `ledger verify` passes, and
`fsck` clears what the crash left."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import threading
import time
import tomllib
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from medvault.sample import generate_study
from tests.conftest import Home, Server, make_home, start_server
from tests.integration.test_access_routes import AS_STORED, STOW_TYPE, make_instance, stow_body
from tests.seaweed import use_s3

pytestmark = pytest.mark.integration

CLIENTS, PER_REQUEST, ROUNDS = 4, 4, 2


def _load(server: Server, stop: threading.Event, acknowledged: dict[str, tuple[str, str, bytes]]) -> None:
    """Send STOW requests until stopped; record every instance the server acknowledged."""
    lock = threading.Lock()

    def client() -> None:
        with server.client() as http:
            while not stop.is_set():
                study = generate_uid()
                made = [
                    make_instance(patient_id="CRASH-1", study_uid=study, instance_number=n)
                    for n in range(PER_REQUEST)
                ]
                try:
                    answer = http.post(
                        "/dicomweb/studies",
                        content=stow_body(*(d for d, _ in made)),
                        headers={"Content-Type": STOW_TYPE},
                    )
                except httpx.HTTPError:
                    return  # the server died: what was acknowledged before counts
                if answer.status_code not in (200, 202):
                    continue
                ok = {i["00081155"]["Value"][0] for i in answer.json().get("00081199", {}).get("Value", [])}
                with lock:
                    for data, ds in made:
                        if ds.SOPInstanceUID in ok:
                            acknowledged[ds.SOPInstanceUID] = (
                                ds.StudyInstanceUID,
                                ds.SeriesInstanceUID,
                                data,
                            )

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)


@pytest.mark.parametrize("backend", ["filesystem", "s3"])
def test_kill_9_during_concurrent_stow_loses_nothing_acknowledged(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    home: Home = make_home(tmp_path / "home")
    home.set_config("server", "workers", "2")
    if backend == "s3":  # objects in a real S3 (SeaweedFS): acknowledged only once the PUT is
        weed = request.getfixturevalue("seaweed")
        use_s3(home, weed, weed.make_bucket(f"crash-{os.getpid()}"))
    acknowledged: dict[str, tuple[str, str, bytes]] = {}
    for _ in range(ROUNDS):
        server = start_server(home, own_session=True)
        stop = threading.Event()
        load = threading.Thread(target=_load, args=(server, stop, acknowledged))
        before = len(acknowledged)
        load.start()
        deadline = time.monotonic() + 30
        while len(acknowledged) < before + 24 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(server.process.pid, signal.SIGKILL)  # supervisor, HTTP workers, DIMSE worker at once
        stop.set()
        load.join(60)
        server.process.wait(10)
        if server.process.stderr is not None:
            server.process.stderr.close()
        assert len(acknowledged) > before, "no STOW was acknowledged before the kill"

    server = start_server(home)
    try:
        with server.client() as http:
            for sop, (study, series, data) in acknowledged.items():
                got = http.get(
                    f"/dicomweb/studies/{study}/series/{series}/instances/{sop}",
                    headers={"Accept": AS_STORED},
                )
                assert got.status_code == 200, (sop, got.status_code)
                assert data in got.content, sop  # the very bytes that were acknowledged
        swept = home.cli("fsck", "--repair", "--grace-seconds", "0")  # the server is idle now
        assert "indexed but missing" in swept.stdout and " 0 indexed but missing" in swept.stdout
        verified = home.cli("ledger", "verify")
        assert "0 without an index row" in verified.stdout and "0 unfinished writes" in verified.stdout
    finally:
        server.stop()


def _c_store_load(
    port: int, ssl_context: ssl.SSLContext, files: list[Path], acknowledged: dict[str, Path]
) -> None:
    """Four associations sending until the server dies; records every instance answered 0x0000."""
    lock = threading.Lock()

    def association(part: list[Path]) -> None:
        scu = AE(ae_title="CT1")
        scu.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        assoc = scu.associate("127.0.0.1", port, ae_title="MEDVAULT", tls_args=(ssl_context, "localhost"))
        try:
            for path in part:
                if not assoc.is_established:
                    return
                status = assoc.send_c_store(dcmread(path))
                if status and int(status.Status) == 0:
                    with lock:
                        acknowledged[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
        except Exception:  # the server died mid-send: what was acknowledged before counts
            pass
        finally:
            assoc.abort()  # closes the socket whatever state the association is in
            sock = getattr(assoc.dul.socket, "socket", None)
            if sock is not None:
                sock.close()

    threads = [threading.Thread(target=association, args=(files[i::CLIENTS],)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)


def test_kill_9_during_concurrent_c_store_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """Issue #19: four associations C-STOREing over mutual TLS, the whole server killed -9; every
    instance that got a success status comes back with its pixel data byte-identical, and the
    ledger verifies."""
    home: Home = make_home(tmp_path / "home")
    home.cli(
        "nodes", "add", "ct1", "--ae-title", "CT1", "--host", "127.0.0.1", "--port", "104",
        "--permissions", "store", "--out", str(tmp_path / "creds"),
    )  # fmt: skip
    port = tomllib.loads((home.root / "medvault.toml").read_text())["dimse"]["port"]
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(home.ca))
    context.load_cert_chain(tmp_path / "creds" / "ct1.crt", tmp_path / "creds" / "ct1.key")
    files = generate_study(tmp_path / "scan", seed=19, series=2, instances=60, rows=128, cols=128,
                           patient_name="CRASH^DIMSE", patient_id="CRASH-2")  # fmt: skip
    acknowledged: dict[str, Path] = {}
    server = start_server(home, own_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the DIMSE worker may still be starting
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    load = threading.Thread(target=_c_store_load, args=(port, context, files, acknowledged))
    load.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 30 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(server.process.pid, signal.SIGKILL)  # supervisor, HTTP workers, DIMSE worker at once
    load.join(120)
    server.process.wait(10)
    if server.process.stderr is not None:
        server.process.stderr.close()
    assert 30 <= len(acknowledged) < len(files), "the kill must fall in the middle of the send"

    server = start_server(home)
    try:
        with server.client() as http:
            for sop, path in acknowledged.items():
                sent = dcmread(path)
                got = http.get(
                    f"/dicomweb/studies/{sent.StudyInstanceUID}/series/{sent.SeriesInstanceUID}"
                    f"/instances/{sop}",
                    headers={"Accept": AS_STORED},
                )
                assert got.status_code == 200, (sop, got.status_code)
                assert sent.PixelData in got.content, sop  # the very pixels that were acknowledged
        verified = home.cli("ledger", "verify")
        assert "0 without an index row" in verified.stdout and "0 unfinished writes" in verified.stdout
    finally:
        server.stop()
