"""The command line as an administrator uses it: init, import, apikeys, quickstart."""

from __future__ import annotations

import os
import re
import shlex
import ssl
import stat
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx
from cryptography import x509
from pydicom import dcmread

from medvault.sample import generate_study
from tests.conftest import Home, free_port


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "medvault.cli", *args],
        capture_output=True,
        text=True,
        env=env or dict(os.environ),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def test_init_shows_the_first_admin_once_and_locks_down_the_home(tmp_path: Path) -> None:
    env = {**os.environ, "MEDVAULT_PASSPHRASE": "a long enough test passphrase"}
    home = tmp_path / "h"
    result = run("init", "--home", str(home), "--hostname", "pacs.example.org", env=env)
    assert result.returncode == 0, result.stderr
    password = re.search(r"one-time password \(must be changed at first sign-in\): (\S+)", result.stdout)
    assert password is not None
    assert "otpauth://totp/" in result.stdout
    codes = re.findall(r"^    (\S+)$", result.stdout, flags=re.M)
    assert len(codes) >= 8  # recovery codes
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for secret in ("keyring.sealed", "tls/ca.key", "tls/server.key", "index.db", "logs/totp-admin.png"):
        assert stat.S_IMODE((home / secret).stat().st_mode) == 0o600, secret
    assert b"ENCRYPTED PRIVATE KEY" in (home / "tls/server.key").read_bytes()
    stored = b"".join(p.read_bytes() for p in home.glob("index.db*"))
    assert password.group(1).encode() not in stored and codes[0].encode() not in stored  # hashes only
    listed = run("users", "list", "--home", str(home), env=env)
    assert "admin" in listed.stdout and "enrolled" in listed.stdout
    again = run("init", "--home", str(home), env=env)
    assert again.returncode == 1 and "already holds a medvault home" in again.stderr


def test_init_without_a_passphrase_says_what_to_do(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MEDVAULT_PASSPHRASE"}
    result = run("init", "--home", str(tmp_path / "h"), env=env)
    assert result.returncode == 1
    assert "MEDVAULT_PASSPHRASE" in result.stderr and "Traceback" not in result.stderr


def test_import_is_idempotent_and_reports_refusals(home: Home, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    files = generate_study(
        folder, seed=5, series=1, instances=4, rows=32, cols=32, patient_name="DOE^J", patient_id="P5"
    )
    (folder / "notes.txt").write_text("not an image")
    (folder / "cut.dcm").write_bytes(files[0].read_bytes()[:-100])
    first = home.cli("import", str(folder), check=False)
    assert first.returncode == 2  # a damaged file was refused
    assert re.search(r"stored\s*│\s*4", first.stdout)
    assert re.search(r"refused\s*│\s*1", first.stdout)
    assert re.search(r"skipped \(not DICOM\)\s*│\s*1", first.stdout)  # notes.txt
    assert "cut.dcm: truncated" in first.stdout
    second = home.cli("import", *map(str, files))
    assert re.search(r"already present\s*│\s*4", second.stdout)
    assert re.search(r"stored\s*│\s*0", second.stdout)


def test_apikeys_lifecycle(home: Home) -> None:
    created = home.cli("apikeys", "create", "ohif", "--role", "viewer", "--expires", "30")
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("mvk_")
    listed = home.cli("apikeys", "list").stdout
    assert "ohif" in listed and "viewer" in listed and key not in listed
    assert home.cli("apikeys", "create", "ohif", check=False).returncode == 1
    home.cli("apikeys", "revoke", "ohif")
    assert home.cli("apikeys", "revoke", "ohif", check=False).returncode == 1
    bad_role = home.cli("apikeys", "create", "x", "--role", "superuser", check=False)
    assert bad_role.returncode == 1 and "unknown role" in bad_role.stderr


def test_every_command_has_help() -> None:
    commands = ["", "init", "serve", "import", "keys rotate", "keys status", "apikeys create", "apikeys list",
                "apikeys revoke", "quickstart"]  # fmt: skip
    for command in (c.split() for c in commands):
        result = run(*command, "--help")
        assert result.returncode == 0 and "Usage" in result.stdout, command


def test_quickstart_prints_a_query_that_works(tmp_path: Path) -> None:
    """README command 1: a demo home, a sample study, and a ready-to-paste query against it."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "medvault.cli",
            "quickstart",
            "--port",
            str(port),
            "--dimse-port",
            str(free_port()),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "MEDVAULT_PASSPHRASE"},
    )
    try:
        ca = tmp_path / "medvault-demo" / "tls" / "ca.crt"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                context = ssl.create_default_context(cafile=str(ca))
                if (
                    httpx.get(f"https://127.0.0.1:{port}/healthz", verify=context, timeout=1).status_code
                    == 200
                ):
                    break
            except (httpx.TransportError, OSError):
                time.sleep(0.2)
        assert process.stdout is not None
        lines = []
        while not any(line.strip().startswith("curl ") for line in lines):
            lines.append(process.stdout.readline())
        assert any("Sample study: 8 stored" in line for line in lines), lines
        curl = next(line for line in lines if line.strip().startswith("curl "))
        answer = subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=30, check=True)
        assert '"DEMO-0001"' in answer.stdout and '"00201208":{"vr":"IS","Value":[8]}' in answer.stdout
    finally:
        process.terminate()
        process.wait(timeout=20)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    assert (tmp_path / "medvault-demo.passphrase").stat().st_mode & 0o077 == 0


def test_deid_and_export_commands(home: Home, tmp_path: Path) -> None:
    """`medvault deid` on files and `medvault export` from the archive: de-identified output with no
    PHI and no original UIDs, the same new UIDs for the same project, different for another."""
    files = generate_study(tmp_path / "in", seed=51, series=1, instances=2, rows=32, cols=32,
                           patient_name="QUETZAL^ORLANDO", patient_id="QZ-778")  # fmt: skip
    originals = [dcmread(p) for p in files]
    result = home.cli("deid", str(tmp_path / "in"), str(tmp_path / "out1"), "--project", "p1",
                      "--option", "retain-uids", "--workers", "1")  # fmt: skip
    assert re.search(r"written\s*│\s*2", result.stdout), result.stdout
    outputs = sorted((tmp_path / "out1").rglob("*.dcm"))
    assert len(outputs) == 2
    for out in outputs:
        data = out.read_bytes()
        assert b"QUETZAL" not in data and b"QZ-778" not in data
        assert dcmread(out).PatientIdentityRemoved == "YES"

    home.cli("import", str(tmp_path / "in"))
    for project, folder in (("p1", "exp1"), ("p1", "exp2"), ("p2", "exp3")):
        exported = home.cli(
            "export", "--query", "PatientID=QZ-778", "--project", project, "--to", str(tmp_path / folder)
        )
        assert "2 instances exported" in exported.stdout, exported.stdout
    uids = {
        folder: sorted(str(dcmread(p).SOPInstanceUID) for p in (tmp_path / folder).rglob("*.dcm"))
        for folder in ("exp1", "exp2", "exp3")
    }
    assert uids["exp1"] == uids["exp2"] and uids["exp1"] != uids["exp3"]
    assert not {str(o.SOPInstanceUID) for o in originals} & set(uids["exp1"])
    for p in (tmp_path / "exp1").rglob("*.dcm"):
        assert b"QUETZAL" not in p.read_bytes() and b"QZ-778" not in p.read_bytes()


def test_tls_status_and_renew(home: Home) -> None:
    """A new server certificate for the same names, valid 365 days, trusted through the same CA."""
    cert_path = home.root / "tls" / "server.crt"
    before = x509.load_pem_x509_certificate(cert_path.read_bytes())
    status = home.cli("tls", "status")
    assert "server" in status.stdout and "localhost" in status.stdout
    renewed = home.cli("tls", "renew")
    assert "valid until" in renewed.stdout
    after = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert after.serial_number != before.serial_number
    assert after.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == (
        before.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    )
    assert after.not_valid_after_utc - after.not_valid_before_utc <= timedelta(days=366)
    ca = x509.load_pem_x509_certificate((home.root / "tls" / "ca.crt").read_bytes())
    after.verify_directly_issued_by(ca)
    assert (cert_path.stat().st_mode & 0o777) == 0o600
    assert "tls.renew" in home.cli("ledger", "export", "--to", "-").stdout
