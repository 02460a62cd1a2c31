"""deidentify_tree: folders, parallel workers, odd inputs, collisions, re-export idempotence."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filewriter import dcmwrite

from medvault.dicom.deid import DeidConfig, FileOutcome, deidentify_tree
from medvault.errors import InvalidInput
from medvault.sample import generate_study

from .deid_kit import KEY, OTHER_KEY, PHI, SOP_UID, leaks, make_ct, make_sr, with_meta


def make_sr_file(path: Path) -> None:
    sr = make_sr()
    sr.SOPInstanceUID = "1.2.826.0.1.3680043.99.3.1"
    dcmwrite(path, with_meta(sr), enforce_file_format=True)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    generate_study(src / "a", seed=1, series=1, instances=3, rows=16, cols=16,
                   patient_name="DOE^JOHNATHAN", patient_id="PID12345")  # fmt: skip
    (src / "deep" / "er").mkdir(parents=True)
    dcmwrite(src / "deep" / "er" / "ct.dcm", with_meta(make_ct()), enforce_file_format=True)
    make_sr_file(src / "deep" / "sr.dcm")
    return src


def run(src: Path, dst: Path, **kw: object) -> dict[str, list[FileOutcome]]:
    seen: list[FileOutcome] = []
    summary = deidentify_tree(src, dst, config=kw.pop("config", DeidConfig()), project_key=KEY,  # type: ignore[arg-type]
                              progress=seen.append, **kw)  # type: ignore[arg-type]  # fmt: skip
    assert list(summary.outcomes) == seen
    by: dict[str, list[FileOutcome]] = {}
    for o in summary.outcomes:
        by.setdefault(o.status, []).append(o)
    return by


def test_tree_parallel_and_rerun_is_identical(tree: Path, tmp_path: Path) -> None:
    by = run(tree, tmp_path / "out1", workers=2)
    assert len(by["written"]) == 5 and set(by) == {"written"}
    by2 = run(tree, tmp_path / "out2", workers=1)
    files1 = {p.name: p.read_bytes() for p in (tmp_path / "out1").iterdir()}
    files2 = {p.name: p.read_bytes() for p in (tmp_path / "out2").iterdir()}
    assert files1 == files2 and len(files1) == 5  # re-export: byte-identical files, same names
    assert len(by2["written"]) == 5
    for name, data in files1.items():
        assert name.startswith("2.25.") and name.endswith(".dcm")
        assert leaks(data, [*PHI, SOP_UID]) == []
        ds = dcmread(io.BytesIO(data))
        assert f"{ds.SOPInstanceUID}.dcm" == name and ds.PatientIdentityRemoved == "YES"
    # again into the same destination: nothing overwritten, reported as duplicates
    by3 = run(tree, tmp_path / "out1", workers=2)
    assert len(by3["duplicate"]) == 5
    assert not [p for p in (tmp_path / "out1").iterdir() if p.suffix == ".partial"]


def test_other_project_gives_other_names(tree: Path, tmp_path: Path) -> None:
    deidentify_tree(tree, tmp_path / "p1", config=DeidConfig(), project_key=KEY)
    deidentify_tree(tree, tmp_path / "p2", config=DeidConfig(), project_key=OTHER_KEY)
    names1 = {p.name for p in (tmp_path / "p1").iterdir()}
    names2 = {p.name for p in (tmp_path / "p2").iterdir()}
    assert not names1 & names2


def test_odd_inputs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.txt").write_text("hello, not DICOM at all\n" * 20)
    (src / "empty.dcm").write_bytes(b"")
    good = io.BytesIO()
    dcmwrite(good, with_meta(make_ct()), enforce_file_format=True)
    (src / "truncated.dcm").write_bytes(good.getvalue()[: len(good.getvalue()) - 20])
    raw = io.BytesIO()  # no preamble, no file meta: a bare implicit VR data set
    ds = make_ct(SOPInstanceUID="1.2.826.0.1.3680043.99.7.1")
    dcmwrite(raw, ds, implicit_vr=True, little_endian=True)
    (src / "bare.raw").write_bytes(raw.getvalue())
    nouid = make_ct()
    del nouid.SOPInstanceUID
    buf = io.BytesIO()
    dcmwrite(buf, nouid, implicit_vr=True, little_endian=True)
    (src / "nouid.raw").write_bytes(buf.getvalue())
    by = run(src, tmp_path / "out")
    status = {o.source.name: (o.status, o.reason) for v in by.values() for o in v}
    assert status["notes.txt"][0] == "skipped"
    assert status["empty.dcm"][0] in ("skipped", "failed")
    assert status["truncated.dcm"][0] == "failed" and "truncated" in str(status["truncated.dcm"][1])
    assert status["bare.raw"][0] == "written"
    assert status["nouid.raw"] == ("written", "no SOPInstanceUID: one was derived from the content")
    for o in by["written"]:
        assert o.output is not None and dcmread(o.output).file_meta.TransferSyntaxUID
    # the derived UID is stable across runs
    again = run(src, tmp_path / "out2")
    assert sorted(o.output.name for o in again["written"] if o.output) == sorted(
        o.output.name for o in by["written"] if o.output
    )


def test_collision_never_overwrites(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    dcmwrite(src / "a.dcm", with_meta(make_ct(SeriesDescription="ONE")), enforce_file_format=True)
    dcmwrite(src / "b.dcm", with_meta(make_ct(Rows=2, Columns=8)), enforce_file_format=True)  # same SOP UID
    dcmwrite(
        src / "c.dcm", with_meta(make_ct(SeriesDescription="ONE")), enforce_file_format=True
    )  # duplicate
    by = run(src, tmp_path / "out")
    assert len(by["written"]) == 1 and len(by["collision"]) == 1 and len(by["duplicate"]) == 1
    assert len(list((tmp_path / "out").iterdir())) == 1


def test_excluded_and_mapping_only_when_asked(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    dcmwrite(src / "us.dcm", with_meta(make_ct(BurnedInAnnotation="YES")), enforce_file_format=True)
    dcmwrite(src / "ct.dcm", with_meta(make_ct(SOPInstanceUID="1.2.3.4.5.6")), enforce_file_format=True)
    plain = deidentify_tree(src, tmp_path / "o1", config=DeidConfig(), project_key=KEY)
    assert plain.mapping is None and plain.excluded == 1 and plain.written == 1
    mapped = deidentify_tree(src, tmp_path / "o2", config=DeidConfig(record_mapping=True), project_key=KEY)
    assert mapped.mapping is not None and "1.2.3.4.5.6" in mapped.mapping.uids
    assert "PID12345" in mapped.mapping.patients


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        deidentify_tree(tmp_path / "missing", tmp_path / "o", config=DeidConfig(), project_key=KEY)
    (tmp_path / "s").mkdir()
    with pytest.raises(InvalidInput):
        deidentify_tree(tmp_path / "s", tmp_path / "s" / "o", config=DeidConfig(), project_key=KEY)
