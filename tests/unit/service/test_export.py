"""De-identified exports from a real home (SQLite index, filesystem objects, ledger): issue #5.

Consistency of the new UIDs per project, the ledger's EXPORT events, burned-in exclusions, the
re-identification map (only when asked, encrypted in the index), scope filtering, never
overwriting, and the size bound.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from tests.conftest import PASSPHRASE, make_home

from medvault.access.policy import Grant, Principal
from medvault.api.research import export_filter
from medvault.errors import InvalidInput, NotFound, TooLarge
from medvault.export import ExportSource, check_project, export_studies, project_key, read_reid_map
from medvault.home import OpenHome, open_home
from medvault.ledger.events import Actor, ActorKind, AuditEvent, EventKind, Outcome, parse_event
from medvault.sample import generate_study

OPERATOR = Actor(kind=ActorKind.USER, id="cli:tester", auth="home-passphrase")
PATIENTS = [("QUIMBLY^ZENOBIA", "MRN-4471-ZQ"), ("FROBISHER^OCTAVIAN", "MRN-9032-FX")]
PHI = ["QUIMBLY", "ZENOBIA", "MRN-4471-ZQ", "FROBISHER", "OCTAVIAN", "MRN-9032-FX"]
KNOWN_PHI: list[str] = []  # PHI above + accession, institution, referring, birth date, original UIDs


def _phi_of(path: Path) -> list[str]:
    ds = dcmread(path)
    return [
        str(ds.AccessionNumber),
        str(ds.InstitutionName),
        str(ds.ReferringPhysicianName).split("^")[0],
        str(ds.PatientBirthDate),
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
        str(ds.SOPInstanceUID),
        str(ds.FrameOfReferenceUID),
    ]


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[OpenHome]:
    """A home with two patients' studies (2 instances each), one instance marked burned-in."""
    home = make_home(tmp_path / "home")
    opened = open_home(home.root, PASSPHRASE)
    files: list[Path] = []
    for seed, (name, pid) in enumerate(PATIENTS, start=11):
        files += generate_study(
            tmp_path / f"in{seed}", seed=seed, series=1, instances=2, rows=32, cols=32,
            patient_name=name, patient_id=pid,
        )  # fmt: skip
    burned = dcmread(files[0])
    burned.SOPInstanceUID = burned.SOPInstanceUID + ".9"
    burned.file_meta.MediaStorageSOPInstanceUID = burned.SOPInstanceUID
    burned.BurnedInAnnotation = "YES"
    burned.save_as(tmp_path / "burned.dcm", enforce_file_format=True)
    files.append(tmp_path / "burned.dcm")
    outcomes = opened.archive.store_batch([f.read_bytes() for f in files])
    assert [o.status for o in outcomes] == ["stored"] * 5
    KNOWN_PHI[:] = PHI + [v for f in files for v in _phi_of(f)]
    yield opened
    opened.close()


def events(opened: OpenHome, *kinds: EventKind) -> list[AuditEvent]:
    ledger = opened.ledger
    ledger.flush()
    parsed = [parse_event(leaf) for leaf in ledger.entries(0, ledger.size)]
    return [e for e in parsed if e.kind in kinds]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.dcm"))}


def test_project_key_is_consistent_per_project_and_differs_across(opened: OpenHome) -> None:
    one = project_key(opened, "trial-a")
    assert len(one) >= 32
    assert project_key(ExportSource.of(opened), "trial-a") == one
    assert project_key(opened, "trial-b") != one
    for bad in ("", "-x", "a/b", "x" * 65, "DOE^JOHN"):
        with pytest.raises(InvalidInput):
            check_project(bad)


def test_export_to_a_folder_is_consistent_per_project_and_carries_no_phi(
    opened: OpenHome, tmp_path: Path
) -> None:
    seen: list[int] = []
    first = export_studies(
        opened, query_params=[], project="trial-a", options=["retain-patient-characteristics"],
        to_dir=tmp_path / "a1", actor=OPERATOR, progress=lambda p: seen.append(p.done),
    )  # fmt: skip
    assert (first.instances, first.exported, first.excluded, first.failed) == (5, 4, 1, 0)
    assert len(first.studies) == 2 and seen == [1, 2, 3, 4, 5]
    (excluded,) = [o for s in first.studies for o in s.outcomes if o.status == "excluded"]
    assert excluded.reason and "burned" in excluded.reason.lower()

    again = export_studies(
        opened, query_params=[], project="trial-a", options=["retain-patient-characteristics"],
        to_dir=tmp_path / "a2", actor=OPERATOR,
    )  # fmt: skip
    assert again.exported == 4
    files_a1, files_a2 = tree(tmp_path / "a1"), tree(tmp_path / "a2")
    assert len(files_a1) == 4
    assert files_a1 == files_a2  # same names (new UIDs) and byte-identical content

    other = export_studies(opened, query_params=[], project="trial-b", to_dir=tmp_path / "b", actor=OPERATOR)
    assert other.exported == 4
    new_a = {o.new_sop_uid for s in first.studies for o in s.outcomes} - {None}
    new_b = {o.new_sop_uid for s in other.studies for o in s.outcomes} - {None}
    assert len(new_a) == 4 and not new_a & new_b
    assert {s.new_study_uid for s in first.studies}.isdisjoint({s.new_study_uid for s in other.studies})

    phi = KNOWN_PHI
    assert len(phi) > 20
    for root in ("a1", "b"):
        for name, data in tree(tmp_path / root).items():
            leaked = [v for v in phi if v.encode() in data or v in name]
            assert leaked == [], (root, name, leaked)
            ds = dcmread(tmp_path / root / name)
            assert ds.PatientIdentityRemoved == "YES"
            assert str(ds.PatientName).startswith("ANON")
    assert not list((tmp_path / "a1").rglob("*.partial"))


def test_each_study_export_is_in_the_ledger(opened: OpenHome, tmp_path: Path) -> None:
    summary = export_studies(
        opened, query_params=[("PatientID", "MRN-4471-ZQ")], project="trial-a",
        options=["clean-descriptors"], to_dir=tmp_path / "out", actor=OPERATOR,
    )  # fmt: skip
    assert len(summary.studies) == 1 and summary.exported == 2 and summary.excluded == 1
    (study,) = summary.studies
    facts = opened.archive.index.study_facts(study_uid=study.study_uid)
    (fact,) = facts.values()
    exports = events(opened, EventKind.EXPORT)
    assert len(exports) == 1
    event = exports[0]
    assert event.object is not None and event.object.id == study.study_uid
    assert event.patient == fact.patient and event.patient is not None
    assert event.actor == OPERATOR and event.outcome is Outcome.SUCCESS
    assert dict(event.details) == {
        "project": "trial-a",
        "export_id": summary.export_id,
        "destination": "dir",
        "instances": 3,
        "exported": 2,
        "excluded": 1,
        "failed": 0,
        "options": "clean-descriptors",
        "reid_map_kept": False,
    }
    leaf = json.dumps(event.to_json())
    assert not [v for v in PHI if v in leaf]


def test_reid_map_is_kept_only_when_asked_and_encrypted(opened: OpenHome, tmp_path: Path) -> None:
    source = ExportSource.of(opened)
    export_studies(opened, query_params=[], project="trial-a", to_dir=tmp_path / "plain", actor=OPERATOR)
    assert source.reid.kept() == []
    with pytest.raises(NotFound):
        read_reid_map(opened, "trial-a", actor=OPERATOR)

    kept = export_studies(
        opened, query_params=[], project="trial-a", to_dir=tmp_path / "kept", actor=OPERATOR, keep_map=True
    )
    assert kept.reid_map_kept
    assert [i.export_id for i in source.reid.kept("trial-a")] == [kept.export_id]
    mapping = read_reid_map(opened, "trial-a", actor=OPERATOR)
    for study in kept.studies:
        assert mapping.uids[study.study_uid] == study.new_study_uid
        for outcome in study.outcomes:
            if outcome.new_sop_uid:
                assert mapping.uids[outcome.sop_uid] == outcome.new_sop_uid
    assert set(mapping.patients) == {pid for _, pid in PATIENTS}
    pseudonyms = [e.pseudonym_id for e in mapping.patients.values()]

    # Nothing of the map is in clear in the database files: not the new UIDs, not the pseudonyms.
    opened.archive.index.checkpoint()
    db = b"".join(p.read_bytes() for p in (opened.root).glob("index.db*"))
    secrets_in_clear = [v for v in [*mapping.uids.values(), *pseudonyms] if v.encode() in db]
    assert secrets_in_clear == []
    # The map is bound to its project: another project has none, and the rows do not cross over.
    with pytest.raises(NotFound):
        read_reid_map(opened, "trial-b", actor=OPERATOR)

    actions = [(e.action, e.outcome) for e in events(opened, EventKind.DEIDENTIFY)]
    assert actions == [
        ("deid.reid-map.read", Outcome.FAILURE),
        ("deid.reid-map.store", Outcome.SUCCESS),
        ("deid.reid-map.read", Outcome.SUCCESS),
        ("deid.reid-map.read", Outcome.FAILURE),
    ]
    flags = [e.details["reid_map_kept"] for e in events(opened, EventKind.EXPORT)]
    assert flags == [False, False, True, True]


def test_scope_filter_limits_the_studies(opened: OpenHome, tmp_path: Path) -> None:
    pseudonym = opened.archive.index.pseudonym("00100020", "MRN-9032-FX")
    researcher = Principal(
        name="r-scoped", role="researcher", method="token", human=True,
        grants=(Grant(kind="patient", value=pseudonym),),
    )  # fmt: skip
    summary = export_studies(
        opened, query_params=[], project="trial-a", to_dir=tmp_path / "out", actor=OPERATOR,
        study_filter=export_filter(opened.guard, researcher, None),
    )  # fmt: skip
    assert [s.patient for s in summary.studies] == [pseudonym]
    nobody = Principal(name="r-none", role="researcher", method="token", human=True)
    empty = export_studies(
        opened, query_params=[], project="trial-a", to_dir=tmp_path / "none", actor=OPERATOR,
        study_filter=export_filter(opened.guard, nobody, None),
    )  # fmt: skip
    assert empty.studies == [] and events(opened, EventKind.EXPORT)[-1].patient == pseudonym


def test_existing_files_are_never_overwritten(opened: OpenHome, tmp_path: Path) -> None:
    first = export_studies(opened, query_params=[], project="p", to_dir=tmp_path / "out", actor=OPERATOR)
    victim = Path(next(o.location for s in first.studies for o in s.outcomes if o.location))
    victim.write_bytes(b"someone else's file")
    again = export_studies(opened, query_params=[], project="p", to_dir=tmp_path / "out", actor=OPERATOR)
    statuses = sorted(o.status for s in again.studies for o in s.outcomes)
    assert statuses == ["collision", "duplicate", "duplicate", "duplicate", "excluded"]
    assert victim.read_bytes() == b"someone else's file"
    assert again.failed == 1


def test_bad_requests_are_refused_before_any_work(opened: OpenHome, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        export_studies(opened, query_params=[], project="p", options=["bad-option"], to_dir=tmp_path / "x")
    with pytest.raises(InvalidInput):
        export_studies(opened, query_params=[], project="p")  # no destination
    with pytest.raises(InvalidInput):
        export_studies(
            opened, query_params=[], project="p", to_dir=tmp_path / "x", to_stow="https://h/dicomweb"
        )
    with pytest.raises(InvalidInput):
        export_studies(opened, query_params=[("NoSuchAttribute", "1")], project="p", to_dir=tmp_path / "x")
    with pytest.raises(InvalidInput):
        export_studies(opened, query_params=[], project="p", to_stow="http://plain.example/dicomweb")
    with pytest.raises(TooLarge):
        export_studies(opened, query_params=[], project="p", to_dir=tmp_path / "x", max_bytes=1000)
    assert not (tmp_path / "x").exists()
    assert events(opened, EventKind.EXPORT) == []


def test_fast_path_outputs_are_held_to_the_marker_obligation(tmp_path: Path) -> None:
    """What the fast path writes carries PatientIdentityRemoved = YES in the form the export's
    byte check looks for; bytes without it stop the export (a bug, never a data problem)."""
    from medvault.dicom.deid import DeidConfig, Deidentifier
    from medvault.errors import IntegrityError
    from medvault.export import _require_deidentified_bytes

    (path,) = generate_study(tmp_path / "s", seed=2, series=1, instances=1, rows=8, cols=8,
                             patient_name="MARK^ER", patient_id="M-1")  # fmt: skip
    fast = Deidentifier(config=DeidConfig(), project_key=b"k" * 32).deidentify_bytes(path.read_bytes())
    assert fast is not None
    _require_deidentified_bytes(fast.data)
    assert dcmread(io.BytesIO(fast.data)).PatientIdentityRemoved == "YES"
    with pytest.raises(IntegrityError):
        _require_deidentified_bytes(path.read_bytes())
