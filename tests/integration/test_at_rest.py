"""Acceptance: a copy of the home folder reveals no PHI and no pixels; corrupt bytes are never
served; deleted instances are crypto-shredded; keys rotate while the server runs."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from medvault.sample import generate_study
from tests.conftest import Home, Server

# Distinctive values, so a hit can only mean a leak (generic words like CHEST would match anything).
PHI = {
    "PatientName": "ZEBRAFINCH^ALOYSIUS",
    "PatientID": "PID-QX7781",
    "OtherPatientIDs": "OPID-ZX5512",
    "OtherPatientNames": "WOMBATSON^KLARA",
    "PatientBirthDate": "19380517",
    "AccessionNumber": "ACC-VV90412",
    "ReferringPhysicianName": "MARMOSET^DOROTHEA",
    "PerformingPhysicianName": "OCELOT^PERCIVAL",
    "InstitutionName": "QUOKKA MEMORIAL INFIRMARY",
    "StudyDescription": "KESTREL PROTOCOL",
    "SeriesDescription": "PANGOLIN SERIES",
    "StudyID": "STU8831",
}


def phi_needles() -> list[bytes]:
    texts: set[str] = set()
    for value in PHI.values():
        texts.add(value)
        texts.update(part for part in value.replace("^", " ").split() if len(part) >= 6)
    needles: list[bytes] = []
    for text in texts:
        for encoding in ("utf-8", "utf-16-le", "utf-16-be", "latin-1"):
            needles.append(text.encode(encoding))
    return needles


def make_phi_study(folder: Path, *, seed: int = 11, series: int = 2, instances: int = 5) -> list[Path]:
    files = generate_study(
        folder,
        seed=seed,
        series=series,
        instances=instances,
        rows=96,
        cols=96,
        patient_name=PHI["PatientName"],
        patient_id=PHI["PatientID"],
    )
    for path in files:
        ds = dcmread(path)
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)
    return files


def pixel_chunks(files: Iterable[Path], size: int = 32) -> set[bytes]:
    """Every `size`-byte chunk of pixel data at offsets that are multiples of `size`.

    Any 64-byte run of pixel data contains one whole such chunk, so looking for these chunks at
    every offset of a file finds every 64-byte run. Chunks with few distinct bytes (padding,
    air) are left out: such bytes occur naturally in any file and prove nothing.
    """
    chunks: set[bytes] = set()
    for path in files:
        pixels = dcmread(path).PixelData
        for start in range(0, len(pixels) - size + 1, size):
            chunk = pixels[start : start + size]
            if len(set(chunk)) >= 12:
                chunks.add(chunk)
    return chunks


def scan_home(root: Path, needles: list[bytes], chunks: set[bytes], size: int = 32) -> list[str]:
    leaks: list[str] = []
    scanned = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        scanned += 1
        for needle in needles:
            if needle in data:
                leaks.append(f"{path.relative_to(root)} contains PHI {needle!r}")
        for offset in range(max(len(data) - size + 1, 0)):
            if data[offset : offset + size] in chunks:
                leaks.append(f"{path.relative_to(root)} contains pixel data at offset {offset}")
                break
    assert scanned >= 5, "the scan must cover the index, its WAL, objects, TLS files and logs"
    return leaks


def test_home_folder_holds_no_phi_and_no_pixels(
    home: Home, tmp_path: Path, server_factory: Callable[[Home], Server]
) -> None:
    files = make_phi_study(tmp_path / "incoming")
    stow_file = make_phi_study(tmp_path / "stow", seed=12, series=1, instances=1)[0]
    result = home.cli("import", str(tmp_path / "incoming"))
    assert "stored" in result.stdout

    server = server_factory(home)
    with server.client() as client:
        body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + stow_file.read_bytes() + b"\r\n--b--\r\n"
        stored = client.post(
            "/dicomweb/studies",
            content=body,
            headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
        )
        assert stored.status_code == 200, stored.text
        # Queries carry PHI in the query string: it must not reach the access log.
        for params in (
            {"PatientName": "ZEBRAFINCH*"},
            {"PatientID": PHI["PatientID"]},
            {"AccessionNumber": PHI["AccessionNumber"]},
            {"PatientBirthDate": PHI["PatientBirthDate"]},
            {"StudyDescription": "KESTREL*"},
            {"ReferringPhysicianName": PHI["ReferringPhysicianName"]},
        ):
            found = client.get("/dicomweb/studies", params=params).json()
            assert len(found) == 2, params
        study_uid = dcmread(files[0]).StudyInstanceUID
        retrieved = client.get(
            f"/dicomweb/studies/{study_uid}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        assert retrieved.status_code == 200
        assert PHI["PatientID"].encode() in retrieved.content  # served in clear over TLS, as it must be

    needles = phi_needles()
    chunks = pixel_chunks([*files, stow_file])
    assert len(chunks) > 1000
    # Make sure the scanner can see a leak: the plaintext input folder is full of both.
    assert scan_home(tmp_path / "incoming", needles, chunks)

    assert (home.root / "index.db-wal").exists()
    assert scan_home(home.root, needles, chunks) == []  # while running: DB, WAL, objects, logs
    assert_owner_only(home.root)
    server.stop()
    assert scan_home(home.root, needles, chunks) == []  # and after shutdown


def assert_owner_only(root: Path) -> None:
    """Issue #12, item 11: every file of a home is 0600 (the ledger and the logs name users and
    their addresses) and every folder 0700; only certificates and the settings file are public."""
    assert (root.stat().st_mode & 0o777) == 0o700
    for path in root.rglob("*"):
        mode = path.stat().st_mode & 0o777
        if path.is_dir():
            assert mode == 0o700, (path, oct(mode))
        elif path.suffix != ".crt" and path.name != "medvault.toml":
            assert mode == 0o600, (path, oct(mode))
    for name in ("ledger.db", "ledger.db-wal", "index.db", "logs/access.log", "logs/audit.log"):
        assert (root / name).exists(), name


def _stow(client: httpx.Client, files: Iterable[Path]) -> httpx.Response:
    body = (
        b"".join(b"--b\r\nContent-Type: application/dicom\r\n\r\n" + p.read_bytes() + b"\r\n" for p in files)
        + b"--b--\r\n"
    )
    return client.post(
        "/dicomweb/studies",
        content=body,
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
    )


def _objects(home: Home) -> list[Path]:
    return sorted(p for p in (home.root / "objects").rglob("*") if p.is_file())


@pytest.mark.parametrize("where", ["header", "middle", "last-byte"])
def test_a_flipped_byte_is_never_served(
    home: Home, tmp_path: Path, server_factory: Callable[[Home], Server], where: str
) -> None:
    files = make_phi_study(tmp_path / "in", series=1, instances=1)
    server = server_factory(home)
    with server.client() as client:
        assert _stow(client, files).status_code == 200
        (obj,) = _objects(home)
        data = bytearray(obj.read_bytes())
        pos = {"header": 10, "middle": len(data) // 2, "last-byte": len(data) - 1}[where]
        data[pos] ^= 0x01
        obj.write_bytes(bytes(data))
        ds = dcmread(files[0])
        study = f"/dicomweb/studies/{ds.StudyInstanceUID}"
        base = f"{study}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
        for url, headers in (
            (base, accept),
            (study, accept),
            (
                base + "/frames/1",
                {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'},
            ),
        ):
            response = client.get(url, headers=headers)
            assert response.status_code == 500, (url, response.status_code)
            assert "integrity" in response.json()["error"]
            assert ds.PixelData[:64] not in response.content
        assert client.get("/healthz").status_code == 200


def test_a_corrupt_instance_midway_through_a_study_cuts_the_response_off(
    home: Home, tmp_path: Path, server_factory: Callable[[Home], Server]
) -> None:
    """The first part is read before answering (a clean 500); parts already sent cannot be taken
    back, so a corrupt later one cuts the connection: the client sees an incomplete body, never the
    corrupt bytes, and the log holds the error type only."""
    files = make_phi_study(tmp_path / "in", series=1, instances=3)
    study = f"/dicomweb/studies/{dcmread(files[0]).StudyInstanceUID}"
    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    server = server_factory(home)
    outcomes: list[str] = []
    with server.client() as client:
        assert _stow(client, files).status_code == 200
        for obj in _objects(home):  # corrupt one object at a time
            original = obj.read_bytes()
            obj.write_bytes(original[:100] + bytes([original[100] ^ 1]) + original[101:])
            try:
                response = client.get(study, headers=accept)
                outcomes.append(str(response.status_code))
            except httpx.RemoteProtocolError:
                outcomes.append("cut")
            obj.write_bytes(original)
        assert client.get(study, headers=accept).status_code == 200
    assert sorted(outcomes) == ["500", "cut", "cut"]
    log = (home.root / "logs" / "access.log").read_text()
    # Starlette reports a handled error after the response started as a RuntimeError
    assert log.count("medvault.errors unhandled") == 2 and "Traceback" not in log


def test_delete_crypto_shreds_even_an_earlier_copy(
    home: Home, tmp_path: Path, server_factory: Callable[[Home], Server]
) -> None:
    files = make_phi_study(tmp_path / "in", series=1, instances=2)
    server = server_factory(home)
    with server.client() as client:
        assert _stow(client, files).status_code == 200
        backup = tmp_path / "objects-backup"
        shutil.copytree(home.root / "objects", backup)
        with sqlite3.connect(home.root / "index.db") as db:
            wrapped = [bytes(row[0]) for row in db.execute("SELECT wrapped_key FROM instances")]
        assert len(wrapped) == 2
        ds = dcmread(files[0])
        assert client.delete(f"/dicomweb/studies/{ds.StudyInstanceUID}").status_code == 204
        assert client.get(f"/dicomweb/studies/{ds.StudyInstanceUID}/metadata").status_code == 404
        assert client.get("/dicomweb/studies", params={"PatientID": PHI["PatientID"]}).json() == []
    server.stop()
    # The objects are gone from storage, and the only thing that could open the earlier copy —
    # the wrapped data keys — is nowhere under the home folder any more (DB, WAL, anything).
    assert _objects(home) == []
    assert len([p for p in backup.rglob("*") if p.is_file()]) == 2
    for path in (p for p in home.root.rglob("*") if p.is_file()):
        content = path.read_bytes()
        for blob in wrapped:
            assert blob not in content, f"wrapped data key still in {path.name}"
            assert blob[12:28] not in content, f"part of a wrapped data key still in {path.name}"


def test_keys_rotate_while_serving(
    home: Home, tmp_path: Path, server_factory: Callable[[Home], Server]
) -> None:
    first = make_phi_study(tmp_path / "a", seed=21, series=1, instances=3)
    second = make_phi_study(tmp_path / "b", seed=22, series=1, instances=2)
    server = server_factory(home)
    with server.client() as client:
        assert _stow(client, first).status_code == 200
        rotated = home.cli("keys", "rotate")
        assert "local-2" in rotated.stdout and "3 data keys rewrapped" in rotated.stdout
        # The running server reads objects whose keys were rewrapped by another process...
        for path in first:
            ds = dcmread(path)
            got = client.get(
                f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
                headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
            )
            assert got.status_code == 200 and path.read_bytes() in got.content
        # ...and wraps new data keys under the new KEK at once.
        assert _stow(client, second).status_code == 200
    status = home.cli("keys", "status").stdout
    assert "local-2" in status
    lines = {line.split("│")[1].strip(): line for line in status.splitlines() if "local-" in line}
    assert lines["local-2"].split("│")[3].strip() == "5"
    assert lines["local-1"].split("│")[3].strip() == "0"


def test_wrong_passphrase_is_a_clear_error(home: Home) -> None:
    home.passphrase = "not the passphrase at all"
    result = home.cli("keys", "status", check=False)
    assert result.returncode == 1
    assert "passphrase does not open this keyring" in result.stderr
    assert "Traceback" not in result.stderr
