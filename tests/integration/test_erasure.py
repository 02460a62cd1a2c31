# ruff: noqa: E501  (CLI calls and fixtures read best on one line)
"""The right to erasure (issue #15, "Patient rights"): requested, approved by a second person,
refused while a legal hold or a retention minimum applies, executed by crypto-shredding through
the one delete path, and proven by a certificate whose every entry checks against a signed
checkpoint offline. Another patient's studies stay byte-identical; the ledger still verifies."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from medvault.compliance.erasure import (
    ErasureRefused,
    approve_erasure,
    execute_erasure,
    request_erasure,
)
from medvault.compliance.holds import lift_legal_hold, place_legal_hold
from medvault.config import RetentionRule
from medvault.errors import Conflict, Forbidden, NotFound
from medvault.home import OpenHome, open_home
from medvault.ledger.events import Actor, ActorKind, EventKind, Outcome, parse_event
from medvault.ledger.merkle import leaf_hash, verify_inclusion
from medvault.ledger.note import parse_and_verify
from medvault.sample import generate_study
from tests.conftest import PASSPHRASE, Home, start_server
from tests.integration.test_access_routes import anonymous

pytestmark = pytest.mark.integration

OFFICER = Actor(kind=ActorKind.USER, id="dr-officer", auth="password+totp")
ARCHIVIST = Actor(kind=ActorKind.USER, id="ar-kim", auth="password+totp")
CT_TEN_YEARS = RetentionRule(name="ct-10y", modality="CT", keep_years=10)


@pytest.fixture
def world(home: Home, tmp_path: Path) -> tuple[Home, list[str], dict[str, bytes]]:
    """Patient EE-1 with two studies, patient KP-2 with one."""
    erased = [
        *generate_study(tmp_path / "e1", seed=11, series=1, instances=2, rows=8, cols=8, patient_name="Erase^Eva", patient_id="EE-1"),
        *generate_study(tmp_path / "e2", seed=12, series=1, instances=1, rows=8, cols=8, patient_name="Erase^Eva", patient_id="EE-1"),
    ]  # fmt: skip
    kept = generate_study(
        tmp_path / "k",
        seed=13,
        series=1,
        instances=2,
        rows=8,
        cols=8,
        patient_name="Keep^Kai",
        patient_id="KP-2",
    )
    opened = open_home(home.root, PASSPHRASE)
    try:
        outcomes = opened.archive.store_batch([p.read_bytes() for p in [*erased, *kept]])
        assert all(o.status == "stored" for o in outcomes)
    finally:
        opened.close()
    erased_studies = sorted({o.study_uid or "" for o in outcomes[: len(erased)]})
    kept_bytes = {
        o.sop_instance_uid or "": p.read_bytes() for o, p in zip(outcomes[len(erased) :], kept, strict=True)
    }
    return home, erased_studies, kept_bytes


def opened_home(home: Home) -> OpenHome:
    return open_home(home.root, PASSPHRASE)


def test_requested_approved_by_another_refused_while_held_executed_and_certified(
    world: tuple[Home, list[str], dict[str, bytes]], tmp_path: Path
) -> None:
    home, studies, _ = world
    made = home.cli(
        "patient",
        "erasure",
        "request",
        "--patient-id",
        "EE-1",
        "--reference",
        "ERA-7",
        "--grounds",
        "Art. 17(1)(b) consent withdrawn",
    )
    assert "erasure request 1 (ERA-7): requested" in made.stdout
    own = home.cli("patient", "erasure", "approve", "1", check=False)
    assert own.returncode == 1 and "second person" in own.stderr
    opened = opened_home(home)
    try:
        with pytest.raises(Conflict, match="already open"):
            request_erasure(opened.archive, "EE-1", reference="ERA-8", grounds="again", actor=OFFICER)
        assert approve_erasure(opened.archive, (), 1, actor=OFFICER).state == "approved"
        hold, covered = place_legal_hold(
            opened.archive, actor=ARCHIVIST, reason="litigation 2026-44", study_uid=studies[0]
        )
        assert covered == 1
        with pytest.raises(ErasureRefused, match=f"study {studies[0]} is under legal hold #{hold.id}"):
            execute_erasure(opened.archive, (), 1, actor=ARCHIVIST)
        assert sum(len(opened.archive.instances(uid)) for uid in studies) == 3  # nothing erased
        lift_legal_hold(opened.archive, hold.id, actor=ARCHIVIST, reason="case closed")
        keys = [r.blob_key for uid in studies for r in opened.archive.instances(uid)]
    finally:
        opened.close()

    cert_path = tmp_path / "certificate.json"
    done = home.cli("patient", "erasure", "execute", "1", "--certificate", str(cert_path))
    assert "executed by" in done.stdout and "2 studies, 3 images" in done.stdout
    listed = home.cli("patient", "erasure", "list")
    assert "ERA-7" in listed.stdout and "executed" in listed.stdout

    opened = opened_home(home)
    try:
        for uid in studies:
            with pytest.raises(NotFound):
                opened.archive.instances(uid)
        assert not any(opened.archive.blobs.exists(k) for k in keys)  # the objects are gone
        assert {t["cause"] for t in opened.archive.legal_holds.tombstones()} == {"erasure"}
        events = [parse_event(opened.ledger.entry(i)) for i in range(opened.ledger.size)]
    finally:
        opened.close()
    steps = [(e.action, e.outcome) for e in events if e.kind is EventKind.ERASURE]
    assert steps == [
        ("erasure.request", Outcome.SUCCESS),
        ("erasure.approve", Outcome.DENIED),  # the requester's own approval
        ("erasure.approve", Outcome.SUCCESS),
        ("erasure.execute", Outcome.DENIED),  # under legal hold
        ("erasure.execute", Outcome.SUCCESS),
    ]
    shredded = [e for e in events if e.action == "patient.erasure"]
    assert len(shredded) == 3 and all(e.details["erasure_request"] == 1 for e in shredded)

    cert = json.loads(cert_path.read_text())
    body = cert["body"]
    assert body["request"]["state"] == "executed" and body["erased_studies"] == studies
    checkpoint = parse_and_verify(body["ledger"]["checkpoint"].encode(), body["ledger"]["verifier_key"])
    actions = []
    for entry in body["ledger"]["entries"]:
        proof = entry["inclusion_proof"]
        hashes = [base64.b64decode(h) for h in proof["hashes"]]
        verify_inclusion(
            leaf_hash(entry["entry"].encode()), entry["index"], checkpoint.size, hashes, checkpoint.root_hash
        )
        actions.append(entry["action"])
    assert actions.count("patient.erasure") == 3 and "erasure.execute" in actions
    text = cert_path.read_text()
    assert "EE-1" not in text and "Eva" not in text and "consent withdrawn" not in text  # grounds stay sealed
    again = home.cli("patient", "erasure", "certificate", "1", "--out", str(tmp_path / "again.json"))
    assert "SHA-256" in again.stdout
    assert home.cli("ledger", "verify").returncode == 0


def test_the_other_patient_is_untouched(world: tuple[Home, list[str], dict[str, bytes]]) -> None:
    home, _, kept = world
    opened = opened_home(home)
    try:
        request_erasure(opened.archive, "EE-1", reference="ERA-9", grounds="Art. 17(1)(a)", actor=OFFICER)
        approve_erasure(opened.archive, (), 1, actor=ARCHIVIST)
        execute_erasure(opened.archive, (), 1, actor=OFFICER)
        (facts,) = opened.archive.index.study_facts(study_ids=[3]).values()
        stored = {r.sop_uid: opened.archive.read(r) for r in opened.archive.instances(facts.study_uid)}
    finally:
        opened.close()
    assert stored == kept


def test_a_retention_minimum_refuses_approval_and_execution(
    world: tuple[Home, list[str], dict[str, bytes]],
) -> None:
    home, studies, _ = world
    opened = opened_home(home)
    try:
        request_erasure(opened.archive, "EE-1", reference="ERA-10", grounds="Art. 17(1)(a)", actor=OFFICER)
        with pytest.raises(ErasureRefused, match="by rule ct-10y") as refused:
            approve_erasure(opened.archive, (CT_TEN_YEARS,), 1, actor=ARCHIVIST)
        assert len(refused.value.reasons) == 2 and "retention minimum" in refused.value.message
        approve_erasure(opened.archive, (), 1, actor=ARCHIVIST)  # the rule was dropped meanwhile ...
        with pytest.raises(ErasureRefused):  # ... and is back by execution time
            execute_erasure(opened.archive, (CT_TEN_YEARS,), 1, actor=OFFICER)
        assert all(opened.archive.instances(uid) for uid in studies)
    finally:
        opened.close()


def test_bad_requests_say_what_is_wrong(world: tuple[Home, list[str], dict[str, bytes]]) -> None:
    home, _, _ = world
    unknown = home.cli(
        "patient",
        "erasure",
        "request",
        "--patient-id",
        "NOBODY",
        "--reference",
        "R1",
        "--grounds",
        "x",
        check=False,
    )
    assert unknown.returncode == 1 and "no study of this patient" in unknown.stderr
    named = home.cli(
        "patient",
        "erasure",
        "request",
        "--patient-id",
        "EE-1",
        "--reference",
        "Eva Erase",
        "--grounds",
        "x",
        check=False,
    )
    assert named.returncode == 1 and "ticket or letter number" in named.stderr
    missing = home.cli("patient", "erasure", "approve", "42", check=False)
    assert missing.returncode == 1 and "no erasure request 42" in missing.stderr
    opened = opened_home(home)
    try:
        request_erasure(opened.archive, "EE-1", reference="R2", grounds="Art. 17(1)(a)", actor=OFFICER)
        with pytest.raises(Conflict, match="is requested, not approved"):
            execute_erasure(opened.archive, (), 1, actor=ARCHIVIST)
        with pytest.raises(Forbidden, match="second person"):
            approve_erasure(opened.archive, (), 1, actor=OFFICER)
    finally:
        opened.close()
    early = home.cli("patient", "erasure", "certificate", "1", "--out", "/dev/null", check=False)
    assert early.returncode == 1 and "needs it executed" in early.stderr


def test_the_same_flow_over_https_with_two_officers(world: tuple[Home, list[str], dict[str, bytes]]) -> None:
    """/api/patients/access and /api/erasure-requests: patient.rights only, the patient's ID in
    bodies only, four eyes by the signed-in subjects."""
    import io
    import zipfile

    home, studies, _ = world
    opened = opened_home(home)
    try:
        first = opened.api_keys.create("officer-a", role="auditor")
        second = opened.api_keys.create("officer-b", role="archivist")
        viewer = opened.api_keys.create("a-viewer", role="viewer")
    finally:
        opened.close()
    server = start_server(home)
    try:
        with server.client(first) as a, server.client(second) as b, server.client(viewer) as v:
            assert v.post("/api/erasure-requests", data={"patient_id": "EE-1"}).status_code == 403
            with anonymous(server) as anon:
                assert (
                    anon.post(
                        "/api/patients/access", data={"patient_id": "EE-1", "reference": "R"}
                    ).status_code
                    == 401
                )
            bundle = a.post("/api/patients/access", data={"patient_id": "EE-1", "reference": "DSAR-1"})
            assert bundle.status_code == 200, bundle.text
            assert bundle.headers["content-type"] == "application/zip"
            with zipfile.ZipFile(io.BytesIO(bundle.content)) as zf:
                assert sum(n.endswith(".dcm") for n in zf.namelist()) == 3
            for _ in range(50):  # removed by a background task once the answer is sent
                if not list((home.root / "run").glob("access-*")):
                    break
                time.sleep(0.1)
            assert not list((home.root / "run").glob("access-*"))
            missing = a.post("/api/erasure-requests", data={"patient_id": "EE-1", "reference": "E1"})
            assert missing.status_code == 400 and "grounds is required" in missing.text
            made = a.post(
                "/api/erasure-requests",
                data={"patient_id": "EE-1", "reference": "E1", "grounds": "Art. 17(1)(a)"},
            )
            assert made.status_code == 201, made.text
            number = made.json()["id"]
            own = a.post(f"/api/erasure-requests/{number}/approve")
            assert own.status_code == 403 and "second person" in own.text
            assert b.post(f"/api/erasure-requests/{number}/approve").json()["approved_by"] == "officer-b"
            assert a.get(f"/api/erasure-requests/{number}/certificate").status_code == 409
            done = a.post(f"/api/erasure-requests/{number}/execute")
            assert done.status_code == 200, done.text
            assert done.json()["body"]["erased_studies"] == studies
            listed = b.get("/api/erasure-requests").json()["erasure_requests"]
            assert [r["state"] for r in listed] == ["executed"]
            assert (
                a.get(f"/api/erasure-requests/{number}/certificate").json()["sha256"] == done.json()["sha256"]
            )
            gone = b.post("/api/patients/access", data={"patient_id": "EE-1", "reference": "DSAR-2"})
            assert gone.status_code == 404
    finally:
        server.stop()
