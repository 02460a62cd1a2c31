"""The synthetic CT generator (medvault.sample, bench/generate.py) writes valid, deterministic CT."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pydicom
import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"


def _load(name: str, file: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCH / file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dataset() -> ModuleType:
    import medvault.sample

    return medvault.sample


def _study(ds_mod: ModuleType, out: Path, seed: int = 7) -> list[Path]:
    return ds_mod.generate_study(
        out, seed=seed, series=1, instances=2, rows=64, cols=64, patient_name="DOE^JANE", patient_id="P1"
    )


def test_generate_study_is_valid_ct(dataset: ModuleType, tmp_path: Path) -> None:
    paths = _study(dataset, tmp_path / "a")
    assert len(paths) == 2
    sops, studies, series = set(), set(), set()
    for p in paths:
        ds = pydicom.dcmread(p)  # raises if not Part 10 (preamble + DICM + meta)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == "CT"
        assert ds.PatientName == "DOE^JANE" and ds.PatientID == "P1"
        for kw in ("StudyDate", "StudyTime", "AccessionNumber", "PatientBirthDate", "PatientSex",
                   "ReferringPhysicianName", "InstitutionName", "StudyDescription", "SeriesDescription",
                   "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                   "RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):  # fmt: skip
            assert kw in ds, kw
        assert (ds.BitsAllocated, ds.PixelRepresentation) == (16, 1)
        arr = ds.pixel_array
        assert arr.shape == (64, 64) and arr.dtype == np.int16
        assert len(np.unique(arr)) > 50  # noise + anatomy, not a flat image
        for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID):
            assert uid.startswith("2.25.") and len(uid) <= 64 and uid.is_valid
        sops.add(ds.SOPInstanceUID)
        studies.add(ds.StudyInstanceUID)
        series.add(ds.SeriesInstanceUID)
    assert len(sops) == 2 and len(studies) == 1 and len(series) == 1
    assert sops.isdisjoint(studies | series) and studies.isdisjoint(series)


def test_generate_study_is_deterministic(dataset: ModuleType, tmp_path: Path) -> None:
    a = _study(dataset, tmp_path / "a", seed=7)
    b = _study(dataset, tmp_path / "b", seed=7)
    c = _study(dataset, tmp_path / "c", seed=8)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    uids_a = {pydicom.dcmread(p).SOPInstanceUID for p in a}
    uids_c = {pydicom.dcmread(p).SOPInstanceUID for p in c}
    assert uids_a.isdisjoint(uids_c)


def test_cli_writes_manifest(tmp_path: Path) -> None:
    generate = _load("medvault_bench_generate", "generate.py")
    out = tmp_path / "set"
    argv = [str(out), "--studies", "3", "--series-per-study", "2", "--instances-per-series", "2",
            "--rows", "32", "--cols", "32", "--jobs", "1", "--quiet"]  # fmt: skip
    assert generate.main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"] == 12
    files = sorted(out.rglob("*.dcm"))
    assert len(files) == 12
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    assert len({h.SOPInstanceUID for h in headers}) == 12
    assert {h.StudyInstanceUID for h in headers} == {s["study_uid"] for s in manifest["studies"]}
    # two studies per patient by default
    assert len({h.PatientID for h in headers}) == 2
