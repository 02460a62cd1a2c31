"""Legal holds in the archive's one delete path, rule writes and the scheduled job, on a real home
(SQLite index, filesystem objects, ledger) without a server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from tests.conftest import PASSPHRASE, make_home
from tests.integration.test_stow import make_dataset, to_bytes

from medvault.audit import SYSTEM
from medvault.compliance.holds import lift_legal_hold, place_legal_hold
from medvault.compliance.retention import write_rules
from medvault.compliance.scheduler import RetentionJob
from medvault.config import load_settings, parse_rules
from medvault.errors import Conflict, InvalidInput, NotFound
from medvault.home import OpenHome, open_home
from medvault.index.legal_holds import LegalHoldActive
from medvault.ledger.events import AuditEvent, Outcome, parse_event


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[OpenHome]:
    home = make_home(tmp_path / "home")
    opened = open_home(home.root, PASSPHRASE)
    yield opened
    opened.close()


def put(opened: OpenHome, *, study_date: str = "20000101", patient: str | None = None) -> Dataset:
    ds = make_dataset()
    ds.Modality = "CT"
    ds.StudyDate = study_date
    if patient is not None:
        ds.PatientID = patient
    assert opened.archive.store(to_bytes(ds)).status == "stored"
    return ds


def events(opened: OpenHome) -> list[AuditEvent]:
    ledger = opened.ledger
    ledger.flush()
    return [parse_event(leaf) for leaf in ledger.entries(0, ledger.size)]


def objects(opened: OpenHome) -> int:
    return sum(1 for p in (opened.root / "objects").rglob("*") if p.is_file())


REASON = "litigation 2026-044, counsel"


@pytest.mark.parametrize("kind", ["study", "patient", "query"])
def test_every_kind_of_hold_refuses_the_one_delete_path(opened: OpenHome, kind: str) -> None:
    archive = opened.archive
    ds = put(opened, patient="P-HELD-1", study_date="20190505")
    other = put(opened, study_date="20180101")
    target = {
        "study": {"study_uid": ds.StudyInstanceUID},
        "patient": {"patient_id": "P-HELD-1"},
        "query": {"query": "Modality=CT&StudyDate=20190101-20191231"},
    }[kind]
    hold, covered = place_legal_hold(archive, actor=SYSTEM, reason=REASON, **target)
    assert covered == 1
    before = objects(opened)
    for where in ((ds.StudyInstanceUID,), (ds.StudyInstanceUID, ds.SeriesInstanceUID)):
        with pytest.raises(LegalHoldActive) as info:
            archive.delete(*where)
        assert f"legal hold #{hold.id} ({kind})" in info.value.message
        assert info.value.http_status == 403
    assert objects(opened) == before and archive.instances(ds.StudyInstanceUID)
    assert archive.delete(other.StudyInstanceUID) == 1  # not covered
    denied = [e for e in events(opened) if e.outcome is Outcome.DENIED and e.action == "study.delete"]
    assert len(denied) == 2 and denied[0].details["legal_holds"] == str(hold.id)
    lift_legal_hold(archive, hold.id, actor=SYSTEM, reason="case settled, counsel")
    assert archive.delete(ds.StudyInstanceUID) == 1
    assert [t["cause"] for t in archive.legal_holds.tombstones()] == ["delete", "delete"]


def test_a_query_hold_covers_studies_stored_after_it(opened: OpenHome) -> None:
    hold, covered = place_legal_hold(
        opened.archive, actor=SYSTEM, reason=REASON, query="StudyDate=19990101-19991231"
    )
    assert covered == 0
    later = put(opened, study_date="19990606")
    put(opened, study_date="20010101")
    assert opened.archive.legal_holds.held_studies() == {later.StudyInstanceUID: [hold.id]}
    with pytest.raises(LegalHoldActive):
        opened.archive.delete(later.StudyInstanceUID)


def test_placing_and_lifting_validate_and_ledger_no_phi(opened: OpenHome) -> None:
    archive = opened.archive
    with pytest.raises(InvalidInput, match="exactly one"):
        place_legal_hold(archive, actor=SYSTEM, reason=REASON, study_uid="1.2", patient_id="P")
    with pytest.raises(InvalidInput, match="exactly one"):
        place_legal_hold(archive, actor=SYSTEM, reason=REASON)
    with pytest.raises(InvalidInput, match="reason"):
        place_legal_hold(archive, actor=SYSTEM, reason="short", study_uid="1.2")
    with pytest.raises(InvalidInput, match="digits and dots"):
        place_legal_hold(archive, actor=SYSTEM, reason=REASON, study_uid="1.2.x")
    with pytest.raises(InvalidInput):
        place_legal_hold(archive, actor=SYSTEM, reason=REASON, query="NoSuchAttribute=1")
    with pytest.raises(InvalidInput, match="matching keys only"):
        place_legal_hold(archive, actor=SYSTEM, reason=REASON, query="Modality=CT&limit=5")
    hold, _ = place_legal_hold(
        archive, actor=SYSTEM, reason="Smith v. Hospital, counsel", patient_id="MRN-77"
    )
    assert archive.legal_holds.get(hold.id).reason == "Smith v. Hospital, counsel"
    with pytest.raises(NotFound):
        lift_legal_hold(archive, 999, actor=SYSTEM, reason=REASON)
    lift_legal_hold(archive, hold.id, actor=SYSTEM, reason="settled with Smith")
    with pytest.raises(Conflict):
        lift_legal_hold(archive, hold.id, actor=SYSTEM, reason="settled with Smith")
    leaves = b"".join(opened.ledger.entries(0, opened.ledger.size))
    for secret in (b"Smith", b"MRN-77"):
        assert secret not in leaves
    index_file = (opened.root / "index.db").read_bytes() + (opened.root / "index.db-wal").read_bytes()
    assert b"Smith" not in index_file and b"MRN-77" not in index_file  # sealed


def test_a_delete_that_lost_a_race_deletes_and_ledgers_nothing(opened: OpenHome) -> None:
    ds = put(opened)
    records = opened.archive.instances(ds.StudyInstanceUID)
    opened.archive.delete(ds.StudyInstanceUID)
    size = opened.ledger.size
    with pytest.raises(NotFound):
        opened.archive.index.delete_instances(records)
    assert opened.ledger.size == size


def test_rules_written_replace_the_section_only_and_are_ledgered(opened: OpenHome) -> None:
    config = opened.root / "medvault.toml"
    before = config.read_text()
    rules = parse_rules([{"name": "ct-10y", "modality": "CT", "keep_years": 10}])
    write_rules(opened.root, rules, actor=SYSTEM, archive=opened.archive)
    after = config.read_text()
    assert load_settings(opened.root).retention.rules == rules
    assert after.split("[retention]")[0] == before.split("[retention]")[0]  # the rest untouched
    assert [e.details["rules"] for e in events(opened) if e.action == "retention.rules.change"] == [1]
    write_rules(opened.root, (), actor=SYSTEM, archive=opened.archive)
    assert load_settings(opened.root).retention.rules == ()


def test_the_scheduled_job_runs_when_due_and_never_without_rules(opened: OpenHome) -> None:
    now = [1_000_000.0]
    job = RetentionJob(opened, clock=lambda: now[0])
    old = put(opened)
    assert job.run_once() is None  # no rules: nothing, not even a ledger event
    assert not [e for e in events(opened) if e.action == "retention.run"]
    rules = parse_rules([{"name": "ct-10y", "modality": "CT", "keep_years": 10}])
    write_rules(opened.root, rules, actor=SYSTEM, archive=opened.archive)
    report = job.run_once()
    assert report is not None and [v.study_uid for v in report.expired] == [old.StudyInstanceUID]
    assert job.run_once() is None  # not due again before schedule_seconds
    now[0] += 86400
    assert job.run_once() is not None
    runs = [e for e in events(opened) if e.action == "retention.run"]
    assert [(e.actor.id, e.details["expired"]) for e in runs] == [
        ("medvault-retention", 1),
        ("medvault-retention", 0),
    ]
