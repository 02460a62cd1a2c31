"""Synthetic CT data set: deterministic, valid DICOM Part 10 CT Image Storage files.

Used by ``medvault quickstart`` (the sample study), the tests and ``bench/generate.py``.
Dependency-light on purpose: pydicom + numpy, standard library otherwise.

Everything is derived from an integer seed:

* UIDs are ``2.25.<128-bit integer>`` built from a SHA-256 of the seed and the object's
  position (study / series / instance), so the same seed always gives the same UIDs and
  different seeds practically never collide;
* pixel data is a phantom (body outline, lungs, spine, ribs, organs that change with the
  slice position) plus Gaussian noise from ``numpy.random.default_rng(seed)``, so files do
  not compress trivially (roughly what a real CT slice does).

The pixel data is 16-bit signed (PixelRepresentation 1), stored value = HU + 1024 with
RescaleIntercept -1024 / RescaleSlope 1; pixels outside the circular reconstruction field
of view hold the padding value -2000.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
# 2.25 UID of the generator itself (fixed, derived from its name)
IMPLEMENTATION_CLASS_UID = UID("2.25." + str(int.from_bytes(hashlib.sha256(b"medvault-bench").digest()[:16])))
IMPLEMENTATION_VERSION_NAME = "MEDVAULT_BENCH"

PADDING_VALUE = -2000  # stored value outside the reconstruction circle
RESCALE_INTERCEPT = -1024

FIRST_NAMES = [
    "ALICE", "BRUNO", "CHLOE", "DAVID", "EMMA", "FELIX", "GRACE", "HUGO", "IRIS", "JONAS",
    "KATE", "LEON", "MARIA", "NOAH", "OLGA", "PAUL", "QUINN", "ROSA", "SAMI", "TINA",
]  # fmt: skip
LAST_NAMES = [
    "ANDERSEN", "BAKER", "COSTA", "DUBOIS", "EVANS", "FISCHER", "GARCIA", "HANSEN", "IVANOV",
    "JENSEN", "KOWALSKI", "LAMBERT", "MULLER", "NOVAK", "OLSEN", "PETERS", "QUINTERO", "ROSSI",
    "SMITH", "TANAKA",
]  # fmt: skip
STUDY_KINDS = [
    ("CT CHEST W/O CONTRAST", "CHEST"),
    ("CT ABDOMEN PELVIS W CONTRAST", "ABDOMEN"),
    ("CT THORAX LOW DOSE", "CHEST"),
    ("CT CHEST ANGIO", "CHEST"),
]
SERIES_KINDS = [
    # description, kernel, slice thickness (mm), window center, window width
    ("AXIAL 1.25mm STANDARD", "STANDARD", 1.25, 40, 400),
    ("AXIAL 1.25mm LUNG", "LUNG", 1.25, -600, 1500),
    ("AXIAL 5mm SOFT TISSUE", "SOFT", 5.0, 50, 350),
    ("AXIAL 2.5mm BONE", "BONE", 2.5, 500, 2000),
]
REFERRING = ["WELBY^MARCUS", "HOUSE^GREGORY", "GREY^MEREDITH", "QUINN^MICHAELA", "KILDARE^JAMES"]
INSTITUTIONS = ["MEDVAULT GENERAL HOSPITAL", "SYNTHETIC UNIVERSITY CLINIC", "BENCH REGIONAL MEDICAL CENTER"]


def uid_from(*parts: object) -> UID:
    """A deterministic ``2.25.<int>`` UID (at most 44 characters) from the given parts."""
    digest = hashlib.sha256(":".join(str(p) for p in ("medvault-bench", *parts)).encode()).digest()
    value = int.from_bytes(digest[:16], "big") | 1  # never 0; 2.25 needs no leading zero
    return UID(f"2.25.{value}")


def derive_seed(*parts: object) -> int:
    """A 63-bit seed derived from ``parts`` (used to give each study of a run its own seed)."""
    digest = hashlib.sha256(":".join(str(p) for p in ("medvault-seed", *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def patient_for(index: int) -> tuple[str, str]:
    """(PatientName, PatientID) of synthetic patient ``index`` (deterministic, unique up to 400)."""
    first = FIRST_NAMES[index % len(FIRST_NAMES)]
    last = LAST_NAMES[(index // len(FIRST_NAMES) + index) % len(LAST_NAMES)]
    suffix = "" if index < len(FIRST_NAMES) * len(LAST_NAMES) else f"{index}"
    return f"{last}{suffix}^{first}", f"MV{index + 1:06d}"


@dataclass(frozen=True)
class _Ellipse:
    cx: float  # centre, fraction of the half-width (-1..1)
    cy: float
    ax: float  # semi-axes, fraction of the half-width
    ay: float
    hu: float  # value added inside the ellipse (Shepp-Logan style: ellipses add up)
    angle: float = 0.0


class _Phantom:
    """Precomputed coordinate grid; renders one slice (HU, float32) at a relative z in 0..1."""

    def __init__(self, rows: int, cols: int, rng: np.random.Generator) -> None:
        self.rows, self.cols = rows, cols
        half = max(rows, cols) / 2.0
        y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
        self.x = (x - (cols - 1) / 2.0) / half
        self.y = (y - (rows - 1) / 2.0) / half
        self.fov = (self.x**2 + self.y**2) > 1.0  # outside the reconstruction circle
        # per-study anatomy jitter, so studies do not look identical
        self.jx, self.jy = (float(v) for v in rng.uniform(-0.03, 0.03, 2))
        self.scale = float(rng.uniform(0.9, 1.05))
        self.lesions = [
            (float(rng.uniform(-0.5, 0.5)), float(rng.uniform(-0.4, 0.3)), float(rng.uniform(0.03, 0.08)),
             float(rng.uniform(0.2, 0.8)), float(rng.uniform(20, 80)))
            for _ in range(int(rng.integers(1, 4)))
        ]  # fmt: skip

    def _add(self, img: np.ndarray, e: _Ellipse) -> None:
        s = self.scale
        cx, cy, ax, ay = (e.cx + self.jx) * s, (e.cy + self.jy) * s, e.ax * s, e.ay * s
        if ax <= 0 or ay <= 0:
            return
        # bounding box, so small ellipses cost little
        half_r, half_c = (self.rows - 1) / 2.0, (self.cols - 1) / 2.0
        half = max(self.rows, self.cols) / 2.0
        r = max(ax, ay)
        r0 = max(int((cy - r) * half + half_r) - 1, 0)
        r1 = min(int((cy + r) * half + half_r) + 2, self.rows)
        c0 = max(int((cx - r) * half + half_c) - 1, 0)
        c1 = min(int((cx + r) * half + half_c) + 2, self.cols)
        if r0 >= r1 or c0 >= c1:
            return
        xs = self.x[r0:r1, c0:c1] - cx
        ys = self.y[r0:r1, c0:c1] - cy
        if e.angle:
            ca, sa = np.cos(e.angle), np.sin(e.angle)
            xs, ys = xs * ca + ys * sa, -xs * sa + ys * ca
        mask = (xs / ax) ** 2 + (ys / ay) ** 2 <= 1.0
        img[r0:r1, c0:c1][mask] += e.hu

    def render(self, z: float) -> np.ndarray:
        """HU image of the slice at relative position ``z`` (0 = top, 1 = bottom)."""
        img = np.full((self.rows, self.cols), -1000.0, dtype=np.float32)  # air
        w = 0.85 + 0.08 * np.sin(np.pi * z)  # body widens towards the middle
        self._add(img, _Ellipse(0.0, 0.05, w, 0.62, 1040.0))  # body, soft tissue ~ +40 HU
        self._add(img, _Ellipse(0.0, 0.05, w - 0.05, 0.57, -60.0))  # subcutaneous fat ring
        lung = max(0.0, np.sin(np.pi * min(z * 1.4, 1.0)))  # lungs in the upper part
        if lung > 0.05:
            self._add(img, _Ellipse(-0.36, -0.02, 0.25 * lung, 0.38 * lung, -840.0, 0.15))
            self._add(img, _Ellipse(0.36, -0.02, 0.25 * lung, 0.38 * lung, -840.0, -0.15))
        if 0.2 < z < 0.6:  # heart
            self._add(img, _Ellipse(0.08, 0.05, 0.2, 0.17, 20.0, 0.4))
        if z > 0.45:  # liver, kidneys
            self._add(img, _Ellipse(-0.3, 0.0, 0.32, 0.28 * min(1.0, (z - 0.45) * 4), 20.0, 0.3))
            self._add(img, _Ellipse(-0.28, 0.3, 0.08, 0.12, 150.0 * (z > 0.7)))
            self._add(img, _Ellipse(0.28, 0.3, 0.08, 0.12, 150.0 * (z > 0.7)))
        self._add(img, _Ellipse(0.0, 0.42, 0.07, 0.07, 700.0))  # vertebral body
        self._add(img, _Ellipse(0.0, 0.52, 0.025, 0.05, 900.0))  # spinous process
        self._add(img, _Ellipse(0.0, 0.25, 0.035, 0.035, 250.0))  # aorta (contrast)
        if z < 0.8:  # ribs around the chest wall, positions drift with z
            for k in range(12):
                a = 2.0 * np.pi * (k + 0.5) / 12 + 0.15 * z
                if np.sin(a) > 0.9:  # no rib over the spine
                    continue
                self._add(
                    img, _Ellipse((w - 0.09) * np.cos(a), 0.05 + 0.5 * np.sin(a), 0.035, 0.02, 1100.0, a)
                )
        for lx, ly, lr, zc, hu in self.lesions:  # small nodules present over a few slices
            rz = lr * max(0.0, 1.0 - ((z - zc) / 0.08) ** 2)
            self._add(img, _Ellipse(lx, ly, rz, rz, hu))
        return img


def _base_dataset(
    *,
    seed: int,
    patient_name: str,
    patient_id: str,
    rows: int,
    cols: int,
) -> tuple[Dataset, np.random.Generator]:
    rng = np.random.default_rng(seed)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    study_day = dt.date(2019, 1, 1) + dt.timedelta(days=int(rng.integers(0, 6 * 365)))
    hh, mm, ss = (int(v) for v in rng.integers([7, 0, 0], [19, 60, 60]))
    # birth date and sex belong to the patient, not the study
    pid_hash = hashlib.sha256(patient_id.encode()).digest()
    birth = dt.date(1935, 1, 1) + dt.timedelta(days=int.from_bytes(pid_hash[1:4], "big") % (65 * 365))
    age = max(0, study_day.year - birth.year - ((study_day.month, study_day.day) < (birth.month, birth.day)))
    study_desc, body_part = STUDY_KINDS[int(rng.integers(len(STUDY_KINDS)))]
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_day.strftime("%Y%m%d")
    ds.StudyTime = f"{hh:02d}{mm:02d}{ss:02d}"
    ds.AccessionNumber = f"A{seed % 10**12:012d}"
    ds.Modality = "CT"
    ds.Manufacturer = "MEDVAULT SYNTHETIC"
    ds.ManufacturerModelName = "PHANTOM CT 64"
    ds.InstitutionName = INSTITUTIONS[int(rng.integers(len(INSTITUTIONS)))]
    ds.ReferringPhysicianName = REFERRING[int(rng.integers(len(REFERRING)))]
    ds.StationName = "CTSIM01"
    ds.StudyDescription = study_desc
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = "F" if pid_hash[0] % 2 else "M"
    ds.PatientAge = f"{age:03d}Y"
    ds.BodyPartExamined = body_part
    ds.KVP = "120"
    ds.XRayTubeCurrent = int(rng.integers(80, 400))
    ds.ExposureTime = 500
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = uid_from("study", seed)
    ds.StudyID = f"{seed % 100000:05d}"
    ds.FrameOfReferenceUID = uid_from("for", seed)
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    fov_mm = float(rng.uniform(320.0, 400.0))
    spacing = round(fov_mm / max(rows, cols), 6)
    ds.PixelSpacing = [spacing, spacing]
    ds.ReconstructionDiameter = f"{fov_mm:.1f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.add_new(0x00280120, "SS", PADDING_VALUE)  # PixelPaddingValue
    ds.RescaleIntercept = RESCALE_INTERCEPT
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    return ds, rng


def generate_study(
    out_dir: Path,
    *,
    seed: int,
    series: int,
    instances: int,
    rows: int = 512,
    cols: int = 512,
    patient_name: str,
    patient_id: str,
    progress: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Write one CT study (``series`` x ``instances`` files) under ``out_dir``; return the paths.

    Layout: ``out_dir/S<nn>/I<nnnn>.dcm``. The study's UIDs, dates, descriptions and pixels
    depend only on ``seed`` (and the sizes); ``progress`` is called after each file.
    """
    if series < 1 or instances < 1 or rows < 8 or cols < 8:
        raise ValueError("need series >= 1, instances >= 1, rows/cols >= 8")
    ds, rng = _base_dataset(seed=seed, patient_name=patient_name, patient_id=patient_id, rows=rows, cols=cols)
    phantom = _Phantom(rows, cols, rng)
    spacing = float(ds.PixelSpacing[0])
    x0 = -spacing * (cols - 1) / 2.0
    y0 = -spacing * (rows - 1) / 2.0
    study_seconds = int(ds.StudyTime[:2]) * 3600 + int(ds.StudyTime[2:4]) * 60 + int(ds.StudyTime[4:6])
    written: list[Path] = []
    for s in range(series):
        desc, kernel, thickness, wc, ww = SERIES_KINDS[s % len(SERIES_KINDS)]
        ds.SeriesInstanceUID = uid_from("series", seed, s)
        ds.SeriesNumber = s + 1
        ds.SeriesDescription = desc
        ds.ConvolutionKernel = kernel
        ds.SliceThickness = thickness
        ds.SpacingBetweenSlices = thickness
        ds.WindowCenter = wc
        ds.WindowWidth = ww
        ds.AcquisitionNumber = s + 1
        t = study_seconds + 60 + 90 * s
        ds.SeriesTime = ds.AcquisitionTime = f"{t // 3600 % 24:02d}{t // 60 % 60:02d}{t % 60:02d}"
        series_dir = out_dir / f"S{s + 1:02d}"
        series_dir.mkdir(parents=True, exist_ok=True)
        noise_sigma = {"LUNG": 28.0, "BONE": 35.0}.get(kernel, 12.0)
        z_top = 0.0
        for i in range(instances):
            z_rel = i / max(instances - 1, 1)
            z_mm = z_top - i * thickness
            hu = phantom.render(z_rel)
            hu += rng.standard_normal(hu.shape, dtype=np.float32) * noise_sigma
            stored = np.rint(hu - RESCALE_INTERCEPT)
            np.clip(stored, -1024, 4095, out=stored)
            pixels = stored.astype("<i2")
            pixels[phantom.fov] = PADDING_VALUE
            sop_uid = uid_from("instance", seed, s, i)
            ds.SOPInstanceUID = sop_uid
            ds.InstanceNumber = i + 1
            ds.ImagePositionPatient = [round(x0, 4), round(y0, 4), round(z_mm, 4)]
            ds.SliceLocation = round(z_mm, 4)
            ct = t + 5 + i // 10
            ds.ContentTime = f"{ct // 3600 % 24:02d}{ct // 60 % 60:02d}{ct % 60:02d}"
            # WindowCenter/Width stay per series; SmallestImagePixelValue etc. are left out on purpose
            ds.PixelData = pixels.tobytes()
            ds["PixelData"].VR = "OW"
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
            meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
            ds.file_meta = meta
            path = series_dir / f"I{i + 1:04d}.dcm"
            dcmwrite(path, ds, enforce_file_format=True)
            written.append(path)
            if progress is not None:
                progress(path)
    return written


@dataclass(frozen=True)
class StudyPlan:
    """One study of a generated data set (what ``generate.py`` writes for study ``index``)."""

    index: int
    seed: int
    patient_name: str
    patient_id: str
    folder: str


def plan_dataset(studies: int, *, seed: int = 1, studies_per_patient: int = 2) -> list[StudyPlan]:
    """The studies of a data set: each patient gets ``studies_per_patient`` studies."""
    plans = []
    for k in range(studies):
        name, pid = patient_for(k // studies_per_patient)
        plans.append(StudyPlan(k, derive_seed(seed, "study", k), name, pid, f"study{k + 1:04d}"))
    return plans
