"""Retention and legal hold against a real `medvault serve` (issue #15): rules expire exactly the
right studies (crypto-shredded, ledgered), the rest stays byte-identical; a held study survives
its expiry and a manual DELETE until the hold is lifted; a dry run changes nothing; the API's
authentication and validation; malformed rules in medvault.toml; the scheduled job of serve."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset

from medvault.home import open_home
from medvault.ledger.events import AuditEvent, EventKind, parse_event
from tests.conftest import PASSPHRASE, Home, Server
from tests.integration.test_stow import make_dataset, retrieve_as_stored, stow, to_bytes

pytestmark = pytest.mark.integration

RULES = [
    {"name": "ct-10y", "modality": "CT", "keep_years": 10},
    {"name": "paediatric", "max_age_years": 17, "keep_until_patient_age": 25},
]


def study(
    study_date: str | None, *, modality: str = "CT", birth: str = "19500601", patient: str | None = None
) -> tuple[bytes, Dataset]:
    ds = make_dataset()
    ds.Modality = modality
    if study_date is None:
        del ds.StudyDate
    else:
        ds.StudyDate = study_date
    ds.PatientBirthDate = birth
    if patient is not None:
        ds.PatientID = patient
    return to_bytes(ds), ds


def url_of(ds: Dataset) -> str:
    return (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    )


def store(client: httpx.Client, *items: tuple[bytes, Dataset]) -> None:
    response = stow(client, [data for data, _ in items])
    assert response.status_code == 200, response.text


def objects(home: Home) -> dict[str, int]:
    root = home.root / "objects"
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def ledger_events(home: Home, start: int = 0) -> list[AuditEvent]:
    opened = open_home(home.root, PASSPHRASE)
    try:
        ledger = opened.ledger
        return [parse_event(leaf) for leaf in ledger.entries(start, ledger.size)]
    finally:
        opened.close()


def ledger_size(home: Home) -> int:
    opened = open_home(home.root, PASSPHRASE)
    try:
        return opened.ledger.size
    finally:
        opened.close()


def changes(events: list[AuditEvent]) -> list[AuditEvent]:
    """The events that record changes (not the reads and decisions around requests)."""
    return [e for e in events if not e.kind.is_read]


def wait_for(check: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.fixture
def server(home: Home, server_factory: Callable[[Home], Server]) -> Server:
    """A server without the scheduled job (it would expire studies while a test looks at them)."""
    home.set_config("retention", "enabled", "false")
    return server_factory(home)


def test_rules_expire_exactly_the_right_studies_and_a_dry_run_changes_nothing(server: Server) -> None:
    old_ct = study("20000101")  # kept until 2010-01-01: expires
    recent_ct = study("20200101")  # until 2030
    old_mr = study("20000101", modality="MR")  # no rule matches
    child_ct = study("20120101", birth="20100101")  # CT says 2022, paediatric says 2035
    undated_ct = study(None)  # the CT rule cannot tell: kept
    everything = [old_ct, recent_ct, old_mr, child_ct, undated_ct]
    with server.client() as client:
        store(client, *everything)
        put = client.put("/api/retention", json={"rules": RULES})
        assert put.status_code == 200, put.text
        assert client.get("/api/retention").json()["rules"] == RULES

        before_objects, before_size = objects(server.home), ledger_size(server.home)
        dry = client.post("/api/retention/run", json={"dry_run": True})
        assert dry.status_code == 200, dry.text
        report = dry.json()
        assert report["dry_run"] is True and report["examined"] == 5
        assert [s["study_uid"] for s in report["expired"]] == [old_ct[1].StudyInstanceUID]
        assert [s["study_uid"] for s in report["undetermined"]] == [undated_ct[1].StudyInstanceUID]
        assert report["kept"] == 3 and report["instances_deleted"] == 0
        # The dry run changed nothing: objects, index (all retrievable), and the ledger holds one
        # change more, the dry run's own event.
        assert objects(server.home) == before_objects
        for data, ds in everything:
            assert retrieve_as_stored(client, url_of(ds)) == data
        added = changes(ledger_events(server.home, before_size))
        assert [(e.action, e.details["dry_run"], e.details["expired"]) for e in added] == [
            ("retention.run", 1, 1)
        ]

        run = client.post("/api/retention/run", json={"dry_run": False})
        assert run.status_code == 200, run.text
        assert [s["study_uid"] for s in run.json()["expired"]] == [old_ct[1].StudyInstanceUID]
        assert run.json()["instances_deleted"] == 1
        assert client.get(url_of(old_ct[1])).status_code == 404
        found = client.get("/dicomweb/studies", params={"StudyInstanceUID": old_ct[1].StudyInstanceUID})
        assert found.json() == []
        for data, ds in everything[1:]:
            assert retrieve_as_stored(client, url_of(ds)) == data  # byte-identical
        assert len(objects(server.home)) == len(before_objects) - 1

        again = client.post("/api/retention/run", json={"dry_run": False}).json()
        assert again["expired"] == [] and again["examined"] == 4  # idempotent

    expiries = [e for e in ledger_events(server.home) if e.action == "retention.expire"]
    assert len(expiries) == 1
    expiry = expiries[0]
    assert expiry.kind is EventKind.DELETE and expiry.object is not None
    assert expiry.object.id == old_ct[1].SOPInstanceUID
    assert expiry.details["rule"] == "ct-10y" and expiry.details["crypto_shredded"] == 1
    assert expiry.actor.id == "tests"  # the API key that ran it
    changed = [e for e in ledger_events(server.home) if e.action == "retention.rules.change"]
    assert len(changed) == 1 and changed[0].details["rules"] == 2
    opened = open_home(server.home.root, PASSPHRASE)
    try:
        tombstones = opened.archive.legal_holds.tombstones()
    finally:
        opened.close()
    assert [(t["study_uid"], t["cause"], t["rule"]) for t in tombstones] == [
        (old_ct[1].StudyInstanceUID, "retention", "ct-10y")
    ]
    verify = server.home.cli("ledger", "verify")
    assert "ok" in verify.stdout.lower() or verify.returncode == 0


def test_a_held_study_survives_expiry_and_a_manual_delete_until_lifted(server: Server) -> None:
    by_study = study("20000101")
    by_patient = study("20000101", patient="HOLD-PATIENT-7")
    by_query = study("19990505")  # stored after its query hold was placed
    free = study("20000101")
    with server.client() as client:
        store(client, by_study, by_patient, free)
        assert client.put("/api/retention", json={"rules": RULES}).status_code == 200
        placed = client.post(
            "/api/legal-holds",
            json={"study_uid": by_study[1].StudyInstanceUID, "reason": "litigation 2026-044, counsel asked"},
        )
        assert placed.status_code == 201, placed.text
        study_hold = placed.json()
        assert study_hold["studies_covered"] == 1 and study_hold["reason"].startswith("litigation")
        cli = server.home.cli(
            "legal-hold", "place", "--patient", "HOLD-PATIENT-7", "--reason", "complaint 12, ombudsman"
        )
        assert "covers 1 stored study" in cli.stdout
        query_hold = client.post(
            "/api/legal-holds",
            json={
                "query": "Modality=CT&StudyDate=19990101-19991231",
                "reason": "audit of 1999 CT, regulator",
            },
        ).json()
        assert query_hold["studies_covered"] == 0
        store(client, by_query)
        listed = {h["id"]: h for h in client.get("/api/legal-holds").json()}
        assert listed[query_hold["id"]]["studies_covered"] == 1  # a study stored later is covered too
        assert "HOLD-PATIENT-7" not in json.dumps(listed)  # the patient by pseudonym only

        refused = client.delete(f"/dicomweb/studies/{by_study[1].StudyInstanceUID}")
        assert refused.status_code == 403
        assert f"legal hold #{study_hold['id']} (study)" in refused.json()["error"]
        refused = client.delete(
            f"/dicomweb/studies/{by_query[1].StudyInstanceUID}/series/{by_query[1].SeriesInstanceUID}"
        )
        assert refused.status_code == 403 and "(query)" in refused.json()["error"]

        run = client.post("/api/retention/run", json={"dry_run": False}).json()
        assert [s["study_uid"] for s in run["expired"]] == [free[1].StudyInstanceUID]
        held = {s["study_uid"] for s in run["held"]}
        assert held == {ds.StudyInstanceUID for _, ds in (by_study, by_patient, by_query)}
        for data, ds in (by_study, by_patient, by_query):
            assert retrieve_as_stored(client, url_of(ds)) == data

        bad_lift = client.post(f"/api/legal-holds/{study_hold['id']}/lift", json={"reason": "short"})
        assert bad_lift.status_code == 400 and "reason" in bad_lift.json()["error"]
        lifted = client.post(
            f"/api/legal-holds/{study_hold['id']}/lift", json={"reason": "case settled 2026-11"}
        )
        assert lifted.status_code == 200 and lifted.json()["active"] is False
        twice = client.post(
            f"/api/legal-holds/{study_hold['id']}/lift", json={"reason": "case settled 2026-11"}
        )
        assert twice.status_code == 409

        run = client.post("/api/retention/run", json={"dry_run": False}).json()
        assert [s["study_uid"] for s in run["expired"]] == [by_study[1].StudyInstanceUID]
        assert client.get(url_of(by_study[1])).status_code == 404
        assert retrieve_as_stored(client, url_of(by_patient[1])) == by_patient[0]

    events = ledger_events(server.home)
    places = [e for e in events if e.action == "legalhold.place"]
    assert len(places) == 3 and all(len(str(e.details["reason_sha256"])) == 64 for e in places)
    assert places[1].patient is not None and places[1].actor.id.startswith("cli:")
    assert [e.actor.id for e in events if e.action == "legalhold.lift"] == ["tests"]
    denied = [e for e in events if e.kind is EventKind.DELETE and e.outcome.value == "denied"]
    assert {e.object.id for e in denied if e.object} == {
        by_study[1].StudyInstanceUID,
        by_query[1].StudyInstanceUID,
    }
    texts = b"".join(leaf for leaf in (json.dumps(e.to_json()).encode() for e in events))
    for secret in (b"HOLD-PATIENT-7", b"litigation", b"ombudsman", b"Secret^Person"):
        assert secret not in texts
    server.home.cli("ledger", "verify")
    listed_cli = server.home.cli("legal-hold", "list", "--all", "--json")
    assert len(json.loads(listed_cli.stdout)) == 3


def test_api_authentication_roles_and_validation(server: Server) -> None:
    opened = open_home(server.home.root, PASSPHRASE)
    try:
        viewer = opened.api_keys.create("viewer-key", role="viewer")
        auditor = opened.api_keys.create("auditor-key", role="auditor")
    finally:
        opened.close()
    routes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/api/retention", None),
        ("PUT", "/api/retention", {"rules": []}),
        ("POST", "/api/retention/run", {"dry_run": True}),
        ("GET", "/api/legal-holds", None),
        ("POST", "/api/legal-holds", {"study_uid": "1.2.3", "reason": "a reason of length"}),
        ("POST", "/api/legal-holds/1/lift", {"reason": "a reason of length"}),
    ]
    anonymous = httpx.Client(base_url=server.url, verify=server.ssl_context())
    with anonymous, server.client(viewer) as as_viewer, server.client(auditor) as as_auditor:
        for method, path, body in routes:
            assert anonymous.request(method, path, json=body).status_code == 401, path
            assert as_viewer.request(method, path, json=body).status_code == 403, path
            answer = as_auditor.request(method, path, json=body)  # legalhold.manage, not retention
            expected = {403} if "retention" in path else {200, 201}
            assert answer.status_code in expected, (path, answer.text)
    with server.client() as client:
        bad = client.put(
            "/api/retention", json={"rules": [{"name": "ct", "modality": "CT", "keep_yeras": 3}]}
        )
        assert bad.status_code == 400
        assert 'rules[0] ("ct"): unknown key keep_yeras' in bad.json()["error"]
        assert client.get("/api/retention").json()["rules"] == []  # nothing was written
        assert client.put("/api/retention", json={"rules": "ct=10"}).status_code == 400
        assert client.put("/api/retention", json={"rules": [], "x": 1}).status_code == 400
        assert client.post("/api/retention/run", json={"dry_run": "maybe"}).status_code == 400
        two = client.post(
            "/api/legal-holds", json={"study_uid": "1.2", "patient_id": "P", "reason": "x" * 20}
        )
        assert two.status_code == 400 and "exactly one" in two.json()["error"]
        bad_query = client.post("/api/legal-holds", json={"query": "NoSuchKey=1", "reason": "x" * 20})
        assert bad_query.status_code == 400
        no_reason = client.post("/api/legal-holds", json={"study_uid": "1.2.3"})
        assert no_reason.status_code == 400 and "reason" in no_reason.json()["error"]
        assert client.post("/api/legal-holds/999/lift", json={"reason": "x" * 20}).status_code == 404
        # An empty body runs dry: deleting needs "dry_run": false, said out loud.
        assert client.post("/api/retention/run").json()["dry_run"] is True


def test_malformed_rules_in_medvault_toml_are_an_error_naming_the_key(home: Home) -> None:
    config = home.root / "medvault.toml"
    text = config.read_text().replace("rules = []                  # e.g. [{", "# e.g. [{", 1)
    assert "[retention]" in text
    config.write_text(text + '\n[[retention.rules]]\nname = "ct"\nmodality = "CT"\nkeep_yeras = 10\n')
    shown = home.cli("retention", "rules", check=False)
    assert shown.returncode == 1
    assert 'rules[0] ("ct"): unknown key keep_yeras' in shown.stderr.replace("\n", "")
    served = home.cli("serve", "--port", "1", check=False, timeout=60)
    assert served.returncode == 1 and "keep_yeras" in served.stderr


def _store_directly(home: Home, *items: tuple[bytes, Dataset]) -> None:
    opened = open_home(home.root, PASSPHRASE)
    try:
        for data, _ in items:
            assert opened.archive.store(data).status == "stored"
    finally:
        opened.close()


def test_the_cli_run_and_the_scheduled_job_of_serve(
    home: Home, server_factory: Callable[[Home], Server]
) -> None:
    old_ct, recent_ct, held_ct = study("20000101"), study("20240101"), study("20000101")
    _store_directly(home, old_ct, recent_ct, held_ct)
    config = home.root / "medvault.toml"
    text = config.read_text().replace("rules = []                  # e.g. [{", "# e.g. [{", 1)
    config.write_text(text + '\n[[retention.rules]]\nname = "ct-10y"\nmodality = "CT"\nkeep_years = 10\n')
    shown = home.cli("retention", "rules", "--json")
    assert json.loads(shown.stdout)["rules"] == [RULES[0]]
    home.cli("legal-hold", "place", "--study", held_ct[1].StudyInstanceUID, "--reason", "records request 31")
    dry = json.loads(home.cli("retention", "run", "--dry-run", "--json").stdout)
    assert dry["dry_run"] is True and len(dry["expired"]) == 1 and len(dry["held"]) == 1
    table = home.cli("retention", "run", "--dry-run")
    assert "would expire" in table.stdout and "1 held" in table.stdout

    server = server_factory(home)  # the job's first look comes 5 s after the start
    with server.client() as client:
        wait_for(
            lambda: client.get(url_of(old_ct[1])).status_code == 404, "the scheduled job did not expire it"
        )
        assert retrieve_as_stored(client, url_of(recent_ct[1])) == recent_ct[0]
        assert retrieve_as_stored(client, url_of(held_ct[1])) == held_ct[0]
    assert (home.root / "run" / "retention-last").is_file()
    runs = [e for e in ledger_events(home) if e.action == "retention.run"]
    assert [(e.actor.id, e.details["dry_run"]) for e in runs] == [
        (runs[0].actor.id, 1),
        (runs[1].actor.id, 1),
        ("medvault-retention", 0),
    ]
    assert runs[0].actor.id.startswith("cli:")
