"""`medvault report compliance` on a real home (issue #15, "Safeguards report"): every format
carries the SHA-256 of the body that the ledger recorded, the evidence is measured (a person whose
training expired, a tampered ledger and a plaintext object each turn their control), nothing of a
patient appears in it, and bad options get a clear error."""

from __future__ import annotations

import io
import json
import sqlite3
import stat
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from pypdf import PdfReader

from medvault.compliance.report import body_hash
from medvault.home import open_home
from medvault.ledger.events import EventKind, parse_event
from medvault.sample import generate_study
from tests.conftest import PASSPHRASE, Home

pytestmark = pytest.mark.integration

PATIENT_NAME, PATIENT_ID = "Compliance^Cora", "CC-4711"


@pytest.fixture
def stocked(home: Home, tmp_path: Path) -> Home:
    """A home with a stored study and a radiologist whose training expired yesterday."""
    paths = generate_study(
        tmp_path / "in",
        seed=4,
        series=1,
        instances=3,
        rows=8,
        cols=8,
        patient_name=PATIENT_NAME,
        patient_id=PATIENT_ID,
    )
    opened = open_home(home.root, PASSPHRASE)
    try:
        assert all(o.status == "stored" for o in opened.archive.store_batch([p.read_bytes() for p in paths]))
        opened.users.add_user(
            "dr-lapsed",
            roles=["radiologist"],
            now=datetime.now(UTC),
            training_expires=date.today() - timedelta(days=1),
        )
    finally:
        opened.close()
    return home


def controls(doc: dict[str, object]) -> dict[str, dict[str, object]]:
    body = doc["body"]
    assert isinstance(body, dict)
    return {c["id"]: c for c in body["controls"]}


def report_json(home: Home, out: Path) -> dict[str, object]:
    home.cli("report", "compliance", "--format", "json", "--out", str(out))
    doc: dict[str, object] = json.loads(out.read_text())
    return doc


def test_the_json_report_is_hashed_ledgered_and_measured(stocked: Home, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    doc = report_json(stocked, out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    body = doc["body"]
    assert isinstance(body, dict)
    assert doc["sha256"] == body_hash(body)
    opened = open_home(stocked.root, PASSPHRASE)
    try:
        event = parse_event(opened.ledger.entry(int(str(doc["ledger_index"]))))
    finally:
        opened.close()
    assert event.kind is EventKind.EXPORT and event.action == "compliance.report"
    assert event.object is not None and event.object.id == doc["sha256"]
    found = controls(doc)
    training = found["hipaa-164.308-a-5-i"]
    assert training["status"] == "not_met" and "dr-lapsed" in " ".join(training["evidence"])  # type: ignore[arg-type]
    encryption = found["hipaa-164.312-a-2-iv"]
    assert encryption["status"] == "met" and "3 of 3 sampled" in encryption["evidence"][0]  # type: ignore[index]
    assert found["hipaa-164.312-b"]["status"] in ("met", "attention")  # no checkpoint signed yet: attention
    assert found["hipaa-164.308-a-7-ii-a"]["status"] == "not_met"  # no backup verified yet
    assert body["overall"] == "not_met"
    text = out.read_text()
    assert PATIENT_NAME not in text and PATIENT_ID not in text and "Cora" not in text


def test_html_and_pdf_carry_the_hash_the_ledger_holds(stocked: Home, tmp_path: Path) -> None:
    page = stocked.cli("report", "compliance")  # HTML on standard output, the default
    assert page.stdout.startswith("<!doctype html>")
    digest = page.stderr.split("SHA-256 ")[1].split(",")[0]
    assert len(digest) == 64 and digest in page.stdout
    assert "Security awareness and training" in page.stdout and "not met" in page.stdout
    pdf_path = tmp_path / "report.pdf"
    made = stocked.cli("report", "compliance", "--format", "pdf", "--out", str(pdf_path))
    pdf_digest = made.stderr.split("SHA-256 ")[1].split(",")[0]
    reader = PdfReader(io.BytesIO(pdf_path.read_bytes()))
    text = " ".join((page.extract_text() or "") for page in reader.pages).replace("\n", " ")
    assert pdf_digest in text and "164.312(a)(2)(iv)" in text and "dr-lapsed" in text
    assert PATIENT_ID not in text
    opened = open_home(stocked.root, PASSPHRASE)
    try:
        ledgered = [
            e.object.id
            for e in (parse_event(opened.ledger.entry(i)) for i in range(opened.ledger.size))
            if e.action == "compliance.report" and e.object is not None
        ]
    finally:
        opened.close()
    assert ledgered == [digest, pdf_digest]


def test_a_tampered_ledger_and_a_plaintext_object_are_not_met(stocked: Home, tmp_path: Path) -> None:
    opened = open_home(stocked.root, PASSPHRASE)
    try:
        (first, *_) = list(opened.archive.blobs.list_objects())
        path = stocked.root / opened.settings.storage.objects
        ledger_file = stocked.root / opened.settings.ledger.database
    finally:
        opened.close()
    (blob,) = [p for p in path.rglob("*") if p.is_file() and p.name == Path(first.key).name]
    blob.write_bytes(b"plain" + blob.read_bytes()[5:])
    with sqlite3.connect(ledger_file) as conn:
        (data,) = conn.execute("SELECT data FROM entries WHERE idx = 1").fetchone()
        conn.execute("UPDATE entries SET data = ? WHERE idx = 1", (bytes(data).replace(b'"v":1', b'"v":2'),))
    found = controls(report_json(stocked, tmp_path / "r.json"))
    assert found["hipaa-164.312-b"]["status"] == "not_met"
    assert "FAILED" in found["hipaa-164.312-b"]["evidence"][0]  # type: ignore[index]
    assert found["hipaa-164.312-a-2-iv"]["status"] == "not_met"
    assert found["gdpr-art-30"]["status"] == "not_met"


def test_bad_options_say_what_to_do(stocked: Home) -> None:
    wrong = stocked.cli("report", "compliance", "--format", "docx", check=False)
    assert wrong.returncode == 1 and "--format must be one of html, json, pdf" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    zero = stocked.cli("report", "compliance", "--dormant-days", "0", check=False)
    assert zero.returncode == 1 and "--dormant-days" in zero.stderr
