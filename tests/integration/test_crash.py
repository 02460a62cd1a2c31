"""kill -9 under concurrent STOW (issue #12, "A fuzz suite that stays"): every acknowledged
instance comes back byte-identical, `ledger verify` passes, and `fsck` clears what the crash left."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid

from tests.conftest import Home, Server, make_home, start_server
from tests.integration.test_access_routes import AS_STORED, STOW_TYPE, make_instance, stow_body

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


def test_kill_9_during_concurrent_stow_loses_nothing_acknowledged(tmp_path: Path) -> None:
    home: Home = make_home(tmp_path / "home")
    home.set_config("server", "workers", "2")
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
