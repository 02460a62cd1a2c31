"""`medvault patient access` (issue #15, "Patient rights", right of access): the bundle holds
exactly this patient's images, byte for byte, and the accounting of their disclosures; each study
handed over is ledgered; refusals leave nothing behind."""

from __future__ import annotations

import hashlib
import json
import stat
import zipfile
from pathlib import Path

import pytest

from medvault.home import open_home
from medvault.ledger.events import EventKind, parse_event
from medvault.sample import generate_study
from tests.conftest import PASSPHRASE, Home

pytestmark = pytest.mark.integration


@pytest.fixture
def two_patients(home: Home, tmp_path: Path) -> tuple[Home, dict[str, bytes], list[bytes]]:
    mine = generate_study(
        tmp_path / "a",
        seed=1,
        series=2,
        instances=2,
        rows=8,
        cols=8,
        patient_name="Right^Ana",
        patient_id="RA-1",
    )
    other = generate_study(
        tmp_path / "b",
        seed=2,
        series=1,
        instances=2,
        rows=8,
        cols=8,
        patient_name="Other^Bo",
        patient_id="OB-2",
    )
    opened = open_home(home.root, PASSPHRASE)
    try:
        stored = opened.archive.store_batch([p.read_bytes() for p in [*mine, *other]])
        assert all(o.status == "stored" for o in stored)
    finally:
        opened.close()
    originals = {
        o.sop_instance_uid or "": p.read_bytes() for o, p in zip(stored, [*mine, *other], strict=True)
    }
    return home, originals, [p.read_bytes() for p in other]


def test_the_bundle_is_the_patients_own_images_and_disclosures(
    two_patients: tuple[Home, dict[str, bytes], list[bytes]], tmp_path: Path
) -> None:
    home, originals, other = two_patients
    bundle = tmp_path / "ana.zip"
    done = home.cli(
        "patient", "access", "--patient-id", "RA-1", "--out", str(bundle), "--reference", "DSAR-2026/17"
    )
    assert "4 images" in done.stdout and "1 studies" in done.stdout
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    with zipfile.ZipFile(bundle) as zf:
        names = zf.namelist()
        images = {n: zf.read(n) for n in names if n.endswith(".dcm")}
        manifest = json.loads(zf.read("manifest.json"))
        rows = json.loads(zf.read("disclosures.json"))
        csv_text = zf.read("disclosures.csv").decode()
        readme = zf.read("README.txt").decode()
        assert all(hashlib.sha256(zf.read(n)).hexdigest() == h for n, h in manifest["files"].items())
    assert len(images) == 4
    for name, data in images.items():
        assert data == originals[name.rsplit("/", 1)[1].removesuffix(".dcm")]  # byte-identical
    assert not any(data in images.values() for data in other)  # nobody else's images
    assert {r["kind"] for r in rows} >= {"store"} and len(rows) >= 4
    assert csv_text.splitlines()[0].startswith("time,actor") and "DSAR-2026/17" in readme
    assert set(names) == {*images, "manifest.json", "disclosures.json", "disclosures.csv", "README.txt"}
    assert not list(tmp_path.glob(".ana.zip.partial-*"))
    opened = open_home(home.root, PASSPHRASE)
    try:
        events = [parse_event(opened.ledger.entry(i)) for i in range(opened.ledger.size)]
        pseudonym = opened.archive.index.pseudonym("00100020", "RA-1")
    finally:
        opened.close()
    (handed,) = [e for e in events if e.action == "patient.access"]
    assert handed.kind is EventKind.EXPORT and handed.patient == pseudonym
    assert handed.reason == "right of access, request DSAR-2026/17"
    assert handed.details["instances"] == 4
    ledger_text = b"".join(opened_entry for opened_entry in _entries(home))
    assert b"RA-1" not in ledger_text and b"Right^Ana" not in ledger_text
    again = home.cli(
        "patient", "access", "--patient-id", "RA-1", "--out", str(bundle), "--reference", "R2", check=False
    )
    assert again.returncode == 1 and "exists" in again.stderr


def _entries(home: Home) -> list[bytes]:
    opened = open_home(home.root, PASSPHRASE)
    try:
        return opened.ledger.entries(0, opened.ledger.size)
    finally:
        opened.close()


def test_refusals_name_the_problem_and_write_nothing(
    two_patients: tuple[Home, dict[str, bytes], list[bytes]], tmp_path: Path
) -> None:
    home, _, _ = two_patients
    target = tmp_path / "x.zip"
    unknown = home.cli(
        "patient", "access", "--patient-id", "NOBODY", "--out", str(target), "--reference", "R1", check=False
    )
    assert unknown.returncode == 1 and "no study of this patient" in unknown.stderr
    named = home.cli(
        "patient",
        "access",
        "--patient-id",
        "RA-1",
        "--out",
        str(target),
        "--reference",
        "Ana Right",
        check=False,
    )
    assert (
        named.returncode == 1
        and "ticket or letter number" in named.stderr
        and "Ana Right" not in named.stderr
    )
    assert not target.exists() and not list(tmp_path.glob(".x.zip.partial-*"))
    assert "Traceback" not in unknown.stderr + named.stderr
