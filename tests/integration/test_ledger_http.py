"""The ledger end to end: real DICOMweb traffic lands in it, its checkpoints and proofs verify
independently, `medvault ledger verify` catches a tampered log or image, and the accounting of
disclosures names who saw a patient's studies."""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from pydicom import dcmread

from medvault.ledger.merkle import leaf_hash, verify_consistency, verify_inclusion
from medvault.ledger.note import parse_and_verify
from medvault.sample import generate_study
from tests.conftest import Home, Server

ACCEPT_DICOM = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}


def stow(server: Server, files: list[Path]) -> None:
    body = b"".join(
        b"--b\r\nContent-Type: application/dicom\r\n\r\n" + p.read_bytes() + b"\r\n" for p in files
    )
    with server.client() as client:
        response = client.post(
            "/dicomweb/studies",
            content=body + b"--b--\r\n",
            headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
        )
    assert response.status_code == 200, response.text


def auditor_key(home: Home) -> str:
    return home.cli("apikeys", "create", "audit", "--role", "auditor").stdout.strip().splitlines()[-1]


def entries(server: Server, key: str) -> list[dict[str, object]]:
    with server.client(key) as client:
        size = parse_and_verify(
            client.get("/ledger/checkpoint").content, client.get("/ledger/key").text.strip()
        ).size
        return [json.loads(client.get(f"/ledger/entries/{i}").content) for i in range(size)]


def test_traffic_is_ledgered_and_proofs_verify(
    home: Home, tmp_path: Path, server_factory: Callable[[Home], Server]
) -> None:
    files = generate_study(tmp_path / "in", seed=31, series=1, instances=3, rows=32, cols=32,
                           patient_name="LEDGER^PAT", patient_id="LEDG-1")  # fmt: skip
    key = auditor_key(home)
    server = server_factory(home)
    stow(server, files)
    ds = dcmread(files[0])
    with server.client() as client:
        assert len(client.get("/dicomweb/studies", params={"PatientID": "LEDG-1"}).json()) == 1
        assert client.get(f"/dicomweb/studies/{ds.StudyInstanceUID}", headers=ACCEPT_DICOM).status_code == 200
        assert client.get("/ledger/key").status_code == 403  # archivists do not read the ledger
    with server.client(key) as client:
        assert client.get("/dicomweb/studies").status_code == 403  # auditors see no images
    time.sleep(0.5)  # read events are group-committed
    with server.client(key) as client:
        key_text = client.get("/ledger/key").text.strip()
        first = client.get("/ledger/checkpoint").content
        cp1 = parse_and_verify(first, key_text)
        log = entries(server, key)
        kinds = [e["kind"] for e in log]
        assert (
            kinds.count("store") == 3
            and "query" in kinds
            and "retrieve" in kinds
            and "authz_decision" in kinds
        )
        stores = [e for e in log if e["kind"] == "store"]
        import hashlib

        assert {e["details"]["sha256"] for e in stores} == {
            hashlib.sha256(p.read_bytes()).hexdigest() for p in files
        }
        assert all(e["actor"]["id"] == "tests" for e in stores)
        raw = b"".join(client.get(f"/ledger/entries/{i}").content for i in range(cp1.size))
        assert b"LEDGER" not in raw and b"LEDG-1" not in raw  # patients only by pseudonym
        # An independent check of an inclusion proof against the signed root.
        index = kinds.index("store")
        proof = client.get("/ledger/proof/inclusion", params={"index": index, "tree_size": cp1.size}).json()
        leaf = client.get(f"/ledger/entries/{index}").content
        verify_inclusion(
            leaf_hash(leaf), index, cp1.size, [base64.b64decode(h) for h in proof["hashes"]], cp1.root_hash
        )
        # More traffic, a later checkpoint, and a consistency proof between the two.
        with server.client() as archivist:
            archivist.get("/dicomweb/studies")
        time.sleep(0.5)
        cp2 = parse_and_verify(client.get("/ledger/checkpoint").content, key_text)
        if cp2.size == cp1.size:  # the server signs every few seconds; ask for a fresh one
            home.cli("ledger", "checkpoint")
        time.sleep(11)
        cp2 = parse_and_verify(client.get("/ledger/checkpoint").content, key_text)
        assert cp2.size > cp1.size
        consistency = client.get(
            "/ledger/proof/consistency", params={"first": cp1.size, "second": cp2.size}
        ).json()
        verify_consistency(
            cp1.size,
            cp2.size,
            cp1.root_hash,
            cp2.root_hash,
            [base64.b64decode(h) for h in consistency["hashes"]],
        )
    server.stop()

    report = home.cli("report", "disclosures", "--patient-id", "LEDG-1", "--json").stdout.strip().splitlines()
    rows = [json.loads(line) for line in report]
    assert {r["kind"] for r in rows} >= {"store", "query", "retrieve"}
    assert all(r["study_uid"] == ds.StudyInstanceUID for r in rows)
    assert home.cli("report", "disclosures", "--patient-id", "SOMEONE-ELSE", "--json").stdout.strip() == ""

    verified = home.cli("ledger", "verify")
    assert "ledger OK" in verified.stdout and "3 of 3 match" in verified.stdout
    (home.root / "trusted.checkpoint").write_bytes(first)
    assert (
        home.cli("ledger", "verify", "--trusted-checkpoint", str(home.root / "trusted.checkpoint")).returncode
        == 0
    )


def test_verify_names_a_tampered_entry_and_a_tampered_image(
    home: Home, tmp_path: Path, server_factory: Callable[[Home], Server]
) -> None:
    files = generate_study(tmp_path / "in", seed=32, series=1, instances=2, rows=32, cols=32,
                           patient_name="TAMPER^PAT", patient_id="TAMP-1")  # fmt: skip
    server = server_factory(home)
    stow(server, files)
    server.stop()
    assert home.cli("ledger", "verify").returncode == 0

    # An image replaced on disk by another, validly encrypted one: GCM alone cannot tell, the store
    # event's SHA-256 can. Swap the two objects' files (each decrypts only with its own key, so
    # the read fails its integrity check) — verify must name the instance.
    objects = sorted(p for p in (home.root / "objects").rglob("*") if p.is_file())
    a, b = objects[0].read_bytes(), objects[1].read_bytes()
    objects[0].write_bytes(b)
    objects[1].write_bytes(a)
    result = home.cli("ledger", "verify", check=False)
    assert result.returncode == 1 and "fails its integrity check" in result.stdout
    objects[0].write_bytes(a)
    objects[1].write_bytes(b)

    # An edited entry in the ledger database: verify names the first altered index.
    with sqlite3.connect(home.root / "ledger.db") as db:
        rows = db.execute("SELECT idx, data FROM entries ORDER BY idx").fetchall()
        idx, data = next((i, bytes(d)) for i, d in rows if b'"kind":"store"' in bytes(d))
        db.execute(
            "UPDATE entries SET data = ? WHERE idx = ?", (bytes(data).replace(b"success", b"failure"), idx)
        )
    result = home.cli("ledger", "verify", check=False)
    assert result.returncode == 1 and f"first bad index: {idx}" in result.stdout
