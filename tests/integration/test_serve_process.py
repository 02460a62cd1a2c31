"""`medvault serve` as a process supervisor: clear errors at start, workers restarted with a
back-off and a logged reason, and a SIGTERM that always ends every process."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import Home, Server, free_port

pytestmark = pytest.mark.integration


def _serve(home: Home, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "medvault.cli", "serve", "--home", str(home.root), "--port", str(port)],
        env=home.env(),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def _occupy(port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen(1)
    return sock


def test_a_taken_https_port_fails_at_start_with_what_to_do(home: Home) -> None:
    port = free_port()
    with _occupy(port):
        result = _serve(home, port)
    assert result.returncode == 1
    assert f"cannot listen for HTTPS on 127.0.0.1:{port}" in result.stderr
    assert "--port" in result.stderr and "Traceback" not in result.stderr


def test_a_taken_dimse_port_fails_at_start_with_what_to_do(home: Home) -> None:
    """The DIMSE listener runs in a worker of its own; a taken port used to make that worker die
    and restart every second, unnoticed, while the rest served on."""
    dimse_port = free_port()
    home.set_config("dimse", "host", '"127.0.0.1"')
    home.set_config("dimse", "port", str(dimse_port))
    with _occupy(dimse_port):
        result = _serve(home, free_port())
    assert result.returncode == 1
    assert f"cannot listen for DIMSE on 127.0.0.1:{dimse_port}" in result.stderr
    assert "[dimse] port" in result.stderr and "Traceback" not in result.stderr


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A = LISTEN
                inodes.add(fields[9])
    return inodes


def _holds_socket(pid: int, inodes: set[str]) -> bool:
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if re.fullmatch(r"socket:\[(\d+)\]", target) and target[8:-1] in inodes:
            return True
    return False


def _gone(pid: int) -> bool:
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def test_a_worker_that_cannot_start_is_logged_backed_off_and_sigterm_still_stops_all(
    home: Home, server_factory: Callable[[Home], Server]
) -> None:
    dimse_port = free_port()
    home.set_config("dimse", "host", '"127.0.0.1"')
    home.set_config("dimse", "port", str(dimse_port))
    server = server_factory(home)
    main = server.process.pid
    deadline = time.monotonic() + 30
    dimse_worker = None
    while dimse_worker is None and time.monotonic() < deadline:
        listening = _listening_inodes(dimse_port)
        dimse_worker = next((c for c in _children(main) if listening and _holds_socket(c, listening)), None)
        time.sleep(0.1)
    assert dimse_worker is not None, "no worker listens on the DIMSE port"

    os.kill(dimse_worker, signal.SIGKILL)
    blocker = socket.socket()
    while True:  # take the port as soon as the killed worker has let go of it
        try:
            blocker.bind(("127.0.0.1", dimse_port))
            break
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    blocker.listen(1)
    log = home.root / "logs" / "access.log"
    backing_off = re.compile(r"dimse worker \d+ exited \(status \d+\); starting another in [24] s")
    try:
        while not backing_off.search(log.read_text()):
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.05)
        workers = _children(main)
        server.process.send_signal(signal.SIGTERM)  # during the back-off wait
    finally:
        blocker.close()  # a worker started after the SIGTERM would now listen, and never be stopped
    assert server.process.wait(timeout=15) == 0
    assert all(_gone(pid) for pid in workers)
    text = log.read_text()
    assert re.search(r"dimse worker \d+ stopped: OSError: .*Address already in use", text), text[-2000:]
    assert "starting another in 1 s" in text


# `serve` with scrypt instrumented: each derivation appends the deriving process's id to a file.
_COUNT_SCRYPT_THEN_SERVE = """
import os, sys
from medvault.crypto import keyring
derive = keyring._derive
def counted(*args, **kwargs):
    with open(os.environ["SCRYPT_LOG"], "a") as log:
        log.write(f"{os.getpid()}\\n")
    return derive(*args, **kwargs)
keyring._derive = counted
from medvault.cli import main
sys.argv = ["medvault", *sys.argv[1:]]
main()
"""


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no thread count for process {pid}")


def test_the_passphrase_is_stretched_once_for_every_worker_and_restart(home: Home, tmp_path: Path) -> None:
    """scrypt (128 MiB, ~0.4 s) ran once in the supervisor and again in every worker and every
    restarted worker; now the workers inherit the unlocked keyring and open the home from it."""
    scrypt_log = tmp_path / "scrypt.log"
    dimse_port = free_port()
    home.set_config("dimse", "host", '"127.0.0.1"')
    home.set_config("dimse", "port", str(dimse_port))
    port = free_port()
    serve = ["serve", "--home", str(home.root), "--port", str(port), "--workers", "2"]
    process = subprocess.Popen(
        [sys.executable, "-c", _COUNT_SCRYPT_THEN_SERVE, *serve],
        env={**home.env(), "SCRYPT_LOG": str(scrypt_log)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        https, dimse = set(), set()
        while not (https and dimse and len(_children(process.pid)) == 5):  # 2 HTTP, DIMSE, monitor, retention
            assert process.poll() is None and time.monotonic() < deadline
            https, dimse = _listening_inodes(port), _listening_inodes(dimse_port)
            time.sleep(0.1)
        workers = _children(process.pid)
        http_worker = next(c for c in workers if _holds_socket(c, https) and not _holds_socket(c, dimse))
        os.kill(http_worker, signal.SIGKILL)
        while True:  # the replacement is forked, opens the home, starts its checkpoint thread
            assert time.monotonic() < deadline
            new = [c for c in _children(process.pid) if c not in workers]
            if new and _threads(new[0]) > 1:
                break
            time.sleep(0.1)
        ssl_context = ssl.create_default_context(cafile=str(home.ca))
        assert httpx.get(f"https://127.0.0.1:{port}/healthz", verify=ssl_context).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    assert scrypt_log.read_text().split() == [str(process.pid)]
