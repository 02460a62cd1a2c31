"""Shared fixtures: medvault homes and a real `medvault serve` process over HTTPS.

`init_home` is called with the scrypt test parameters (``TEST_SCRYPT``) so each home takes
milliseconds instead of ~0.3 s; everything else is the production path.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from medvault.crypto.keyring import TEST_SCRYPT
from medvault.home import init_home, open_home

PASSPHRASE = "test passphrase, not for production"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Home:
    root: Path
    admin_key: str  # an API key with the archivist role (store, read, delete) for image work
    admin_password: str = ""  # the first administrator's one-time password (users, keys, nodes)
    admin_totp_secret: str = ""
    passphrase: str = PASSPHRASE

    @property
    def ca(self) -> Path:
        return self.root / "tls" / "ca.crt"

    def env(self) -> dict[str, str]:
        return {**os.environ, "MEDVAULT_PASSPHRASE": self.passphrase}

    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run `medvault ARGS --home HOME` as a user would."""
        result = subprocess.run(
            [sys.executable, "-m", "medvault.cli", *args, "--home", str(self.root)],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"medvault {args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    def set_config(self, section: str, key: str, value: str) -> None:
        """Replace one `key = value` line of a section in medvault.toml."""
        path = self.root / "medvault.toml"
        lines = path.read_text().splitlines()
        current = None
        for i, line in enumerate(lines):
            if line.startswith("["):
                current = line.split("]")[0].strip("[ ")
            elif current == section and line.split("=")[0].strip() == key:
                lines[i] = f"{key} = {value}"
                break
        else:
            raise KeyError(f"[{section}] {key}")
        path.write_text("\n".join(lines) + "\n")


def make_home(root: Path) -> Home:
    created = init_home(root, PASSPHRASE, scrypt=TEST_SCRYPT)
    opened = open_home(root, PASSPHRASE)
    try:
        key = opened.api_keys.create("tests", role="archivist")
    finally:
        opened.close()
    assert created.password is not None and created.enrolment is not None
    home = Home(root, key, created.password, created.enrolment.secret)
    home.set_config("dimse", "port", str(free_port()))  # servers of parallel tests must not share 2762
    return home


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return make_home(tmp_path / "home")


@dataclass
class Server:
    home: Home
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return self.url + "/dicomweb"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.home.ca))

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.home.admin_key}"}
        return httpx.Client(base_url=self.url, verify=self.ssl_context(), headers=headers, timeout=60)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()


def start_server(home: Home, *, own_session: bool = False) -> Server:
    """``own_session``: the server and its workers form their own process group (killpg)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "medvault.cli", "serve", "--home", str(home.root), "--port", str(port)],
        env=home.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=own_session,
    )
    server = Server(home, port, process)
    context = server.ssl_context()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = process.stderr.read().decode() if process.stderr else ""
            raise RuntimeError(f"medvault serve exited with {process.returncode}: {stderr}")
        try:
            if httpx.get(f"{server.url}/healthz", verify=context, timeout=1).status_code == 200:
                return server  # every enabled listener (HTTPS, DIMSE) accepts
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    server.stop()
    raise RuntimeError("medvault serve did not become ready in 30 s")


@pytest.fixture
def server_factory() -> Iterator[Callable[[Home], Server]]:
    started: list[Server] = []

    def factory(home: Home) -> Server:
        server = start_server(home)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def server(home: Home, server_factory: Callable[[Home], Server]) -> Server:
    """A fresh home served over HTTPS on a free port (one per test: tests stay independent)."""
    return server_factory(home)


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for read-mostly protocol tests that do not depend on archive contents elsewhere."""
    home = make_home(tmp_path_factory.mktemp("shared") / "home")
    server = start_server(home)
    yield server
    server.stop()


# CI runs the same hypothesis examples every time (a landing must not hinge on a random draw);
# local runs keep exploring new ones.
if os.environ.get("CI"):
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ci", derandomize=True, deadline=None)
    _hypothesis_settings.load_profile("ci")


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One SeaweedFS S3 (HTTPS, static keys) for the session; tests make their own buckets."""
    from tests.seaweed import start_seaweed

    weed = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    yield weed
    weed.stop()
