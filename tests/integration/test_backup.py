"""Backups of a serving archive (issue #15, "Backups that are evidence too"): taken while STOW
traffic is in flight, verified, tampered with, restored into a new home that serves every
instance acknowledged before the snapshot byte for byte, with a ledger that verifies."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import PASSPHRASE, Home, free_port, make_home, start_server
from tests.integration.test_access_routes import AS_STORED
from tests.integration.test_crash import _load

pytestmark = pytest.mark.integration


def medvault(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`medvault ARGS` with the passphrase in the environment and no MEDVAULT_HOME."""
    env = {k: v for k, v in os.environ.items() if k != "MEDVAULT_HOME"}
    return subprocess.run(
        [sys.executable, "-m", "medvault.cli", *args],
        env={**env, "MEDVAULT_PASSPHRASE": PASSPHRASE},
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
    )


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def test_backup_while_serving_verify_tamper_and_restore(tmp_path: Path) -> None:
    home: Home = make_home(tmp_path / "home")
    backup = tmp_path / "backup"
    acknowledged: dict[str, tuple[str, str, bytes]] = {}
    server = start_server(home)
    try:
        stop = threading.Event()
        load = threading.Thread(target=_load, args=(server, stop, acknowledged))
        load.start()
        try:
            deadline = time.monotonic() + 30
            while len(acknowledged) < 16 and time.monotonic() < deadline:
                time.sleep(0.02)
            before = dict(acknowledged)  # acknowledged before the snapshot started
            assert before, "no STOW was acknowledged"
            created = home.cli("backup", "create", str(backup))
            during = len(acknowledged)
        finally:
            stop.set()
            load.join(60)
        assert during > len(before), "STOW traffic was not in flight during the backup"
        assert "backup complete" in created.stdout and "manifest sha256" in created.stdout

        verified = home.cli("backup", "verify", str(backup))  # pinned to the live home
        assert "backup OK" in verified.stdout and "this archive's ledger key" in verified.stdout
        key = home.cli("ledger", "key").stdout.strip()
        assert "backup OK" in medvault("backup", "verify", str(backup), "--key", key).stdout
        unpinned = medvault("backup", "verify", str(backup))
        assert unpinned.returncode == 0 and "NOT pinned" in unpinned.stdout

        tampered = tmp_path / "tampered"
        shutil.copytree(backup, tampered)
        victim = sorted((tampered / "objects").rglob("*"))[-1]
        flip_byte(victim)
        failed = home.cli("backup", "verify", str(tampered), check=False)
        assert failed.returncode == 1
        relative = victim.relative_to(tampered).as_posix()
        assert f"tampered file: {relative}" in failed.stdout
        assert "Traceback" not in failed.stderr
        status = home.cli("backup", "status")
        assert "last verification:" in status.stdout and " failure by " in status.stdout
        assert "last verified backup:" in status.stdout and " success by " in status.stdout
    finally:
        server.stop()

    restored = Home(tmp_path / "restored", home.admin_key)
    done = restored.cli("backup", "restore", str(backup))
    assert "restored" in done.stdout
    restored.set_config("dimse", "port", str(free_port()))  # the original may still hold its port
    again = start_server(restored)
    try:
        with again.client() as http:
            for sop, (study, series, data) in before.items():
                got = http.get(
                    f"/dicomweb/studies/{study}/series/{series}/instances/{sop}",
                    headers={"Accept": AS_STORED},
                )
                assert got.status_code == 200, (sop, got.status_code)
                assert data in got.content, sop  # the very bytes that were acknowledged
    finally:
        again.stop()
    ledger = restored.cli("ledger", "verify")
    assert "ledger OK" in ledger.stdout and " 0 indexed but missing" in ledger.stdout
    status = restored.cli("backup", "status")
    assert "last restore:" in status.stdout and " success by cli:" in status.stdout


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something").write_text("x")
    refused = home.cli("backup", "create", str(tmp_path / "full"), check=False)
    assert refused.returncode == 1 and "exists and is not empty" in refused.stderr
    assert "Traceback" not in refused.stderr

    home.cli("backup", "create", str(tmp_path / "b"))
    (tmp_path / "b" / "manifest.json").unlink()  # as a kill -9 before the manifest leaves it
    incomplete = medvault("backup", "verify", str(tmp_path / "b"))
    assert incomplete.returncode == 1 and "incomplete backup" in incomplete.stdout
    cannot = medvault("backup", "restore", str(tmp_path / "b"), "--home", str(tmp_path / "new"))
    assert cannot.returncode == 1 and "incomplete backup" in cannot.stderr
    assert not (tmp_path / "new").exists()

    home.cli("backup", "create", str(tmp_path / "c"))
    over = medvault("backup", "restore", str(tmp_path / "c"), "--home", str(tmp_path / "full"))
    assert over.returncode == 1 and "exists and is not empty" in over.stderr
    nowhere = medvault("backup", "verify", str(tmp_path / "missing"))
    assert nowhere.returncode == 1 and "is not a folder" in nowhere.stdout
    for output in (refused, incomplete, cannot, over, nowhere):
        assert "Traceback" not in output.stderr
