#!/usr/bin/env python3
"""De-identification benchmark: medvault vs dicognito, deid and dicom-anonymizer, side by side.

Same corpus for every tool (default 10 studies x 2 series x 50 instances = 1,000 CT files at
256x256, from ``medvault.sample.generate_study``), with extra PHI in nested places: Other
Patient IDs Sequence, Request Attributes Sequence, a code meaning naming the patient, Referenced
Image / Referenced Series Sequences with the original UIDs, an image comment quoting the study
UID, Operators' Name, and a private attribute holding the patient's name.

For each tool: files/s (wall clock, one process unless ``workers`` says otherwise) and a
completeness check: every output file's header (everything before Pixel Data) is searched for
the corpus's known PHI strings and original UIDs; the report counts the distinct leaked values
and the files with a leak.

The other tools are not medvault dependencies: install them into the venv for the bench only:

    .venv/bin/pip install dicognito deid dicom-anonymizer
    .venv/bin/python bench/deid_bench.py --workdir /tmp/deidbench
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medvault.dicom.deid import DeidConfig, deidentify_tree
from medvault.sample import generate_study, plan_dataset

PIXEL_TAG = b"\xe0\x7f\x10\x00"
UID_RE = re.compile(rb"[0-2](?:\.(?:0|[1-9][0-9]*)){3,}")


def _item(**kw: object) -> Dataset:
    ds = Dataset()
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def build_corpus(
    root: Path, studies: int, series: int, instances: int, size: int
) -> tuple[set[str], set[str]]:
    """Write the corpus; return (known PHI strings, original UIDs)."""
    phi: set[str] = set()
    uids: set[str] = set()
    for plan in plan_dataset(studies, seed=7):
        paths = generate_study(
            root / plan.folder,
            seed=plan.seed,
            series=series,
            instances=instances,
            rows=size,
            cols=size,
            patient_name=plan.patient_name,
            patient_id=plan.patient_id,
        )
        previous: str | None = None
        for path in paths:
            ds = dcmread(path)
            last, first = str(ds.PatientName).split("^")
            phi.update(
                {
                    str(ds.PatientName),
                    last,
                    first,
                    ds.PatientID,
                    ds.PatientBirthDate,
                    ds.AccessionNumber,
                    str(ds.ReferringPhysicianName).split("^")[0],
                    ds.InstitutionName,
                    ds.StudyDate,
                    f"OTHER-{ds.PatientID}",
                    "OPERATOR^OLIVIA",
                    "OPERATOR",
                }
            )
            uids.update(
                {ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID}
            )
            ds.OtherPatientIDsSequence = Sequence(
                [_item(PatientID=f"OTHER-{ds.PatientID}", TypeOfPatientID="TEXT")]
            )
            ds.RequestAttributesSequence = Sequence(
                [_item(RequestedProcedureID=ds.AccessionNumber, ScheduledProcedureStepID=ds.AccessionNumber)]
            )
            ds.ProcedureCodeSequence = Sequence(
                [
                    _item(
                        CodeValue="CTCH", CodingSchemeDesignator="99LOCAL", CodeMeaning=f"CT chest for {last}"
                    )
                ]
            )
            ds.OperatorsName = "OPERATOR^OLIVIA"
            ds.ImageComments = f"compare with study {ds.StudyInstanceUID}"
            if previous is not None:
                ref = _item(ReferencedSOPClassUID=ds.SOPClassUID, ReferencedSOPInstanceUID=previous)
                ds.ReferencedImageSequence = Sequence([ref])
                ds.ReferencedSeriesSequence = Sequence(
                    [_item(SeriesInstanceUID=ds.SeriesInstanceUID, ReferencedImageSequence=Sequence([ref]))]
                )
            ds.private_block(0x0011, "ACME PRIVATE", create=True).add_new(0x01, "LO", str(ds.PatientName))
            previous = ds.SOPInstanceUID
            ds.save_as(path, enforce_file_format=True)
    return phi, uids


def inputs(src: Path) -> list[Path]:
    return sorted(p for p in src.rglob("*.dcm"))


def run_medvault(src: Path, dst: Path, workers: int) -> None:
    summary = deidentify_tree(
        src, dst, config=DeidConfig(), project_key=b"bench-project-key-0123456789abcdef", workers=workers
    )
    if summary.written != len(inputs(src)):
        raise SystemExit(f"medvault wrote {summary.written} files")


def run_dicognito(src: Path, dst: Path, workers: int) -> None:
    from dicognito.anonymizer import Anonymizer

    anonymizer = Anonymizer()
    for i, path in enumerate(inputs(src)):
        ds = dcmread(path)
        anonymizer.anonymize(ds)
        ds.save_as(dst / f"{i:05d}.dcm")


def run_deid(src: Path, dst: Path, workers: int) -> None:
    from deid.dicom import replace_identifiers

    folders = sorted({p.parent for p in inputs(src)})
    for k, folder in enumerate(folders):  # deid names outputs by input file name: one folder per series
        out = dst / f"s{k:04d}"
        out.mkdir()
        files = [str(p) for p in inputs(folder)]
        replace_identifiers(
            dicom_files=files, save=True, output_folder=str(out), overwrite=True, remove_private=True
        )


def run_dicom_anonymizer(src: Path, dst: Path, workers: int) -> None:
    from dicomanonymizer import anonymize

    for i, path in enumerate(inputs(src)):
        anonymize(str(path), str(dst / f"{i:05d}.dcm"), {}, True)


TOOLS: dict[str, Callable[[Path, Path, int], None]] = {
    "medvault": run_medvault,
    "dicognito": run_dicognito,
    "deid": run_deid,
    "dicom-anonymizer": run_dicom_anonymizer,
}


def check(dst: Path, phi: set[str], uids: set[str]) -> dict[str, int]:
    leaked_phi: set[str] = set()
    leaked_uids: set[str] = set()
    files_with_leaks = 0
    outputs = [p for p in dst.rglob("*") if p.is_file()]
    needles = [(s, s.upper().encode()) for s in phi if s]
    for path in outputs:
        data = path.read_bytes()
        cut = data.rfind(PIXEL_TAG)
        header = data[:cut] if cut > 0 else data
        upper = header.upper()
        found = {s for s, b in needles if b in upper}
        found_uids = {u.decode() for u in UID_RE.findall(header)} & uids
        if found or found_uids:
            files_with_leaks += 1
        leaked_phi |= found
        leaked_uids |= found_uids
    return {
        "outputs": len(outputs),
        "leaked_phi_values": len(leaked_phi),
        "leaked_uids": len(leaked_uids),
        "files_with_leaks": files_with_leaks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path("bench/data/deid"))
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--series", type=int, default=2)
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument(
        "--workers", type=int, default=2, help="medvault is also run with this many processes"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()

    src = args.workdir / "corpus"
    if src.exists():
        shutil.rmtree(src)
    t0 = time.perf_counter()
    phi, uids = build_corpus(src, args.studies, args.series, args.instances, args.size)
    n = len(inputs(src))
    print(f"corpus: {n} files, {len(phi)} PHI strings, {len(uids)} UIDs ({time.perf_counter() - t0:.1f} s)")

    runs = []
    for tool in args.tools.split(","):
        for workers in [1, args.workers] if tool == "medvault" and args.workers > 1 else [1]:
            dst = args.workdir / f"out-{tool}-{workers}"
            if dst.exists():
                shutil.rmtree(dst)
            dst.mkdir(parents=True)
            start = time.perf_counter()
            try:
                TOOLS[tool](src, dst, workers)
            except ImportError as exc:
                print(f"{tool}: not installed ({exc.name}); pip install it into the venv for the bench")
                continue
            elapsed = time.perf_counter() - start
            row = {
                "tool": tool,
                "workers": workers,
                "files": n,
                "seconds": round(elapsed, 2),
                "files_per_s": round(n / elapsed, 1),
                **check(dst, phi, uids),
            }
            runs.append(row)
            print(json.dumps(row), flush=True)

    print(
        f"\n{'tool':18} {'proc':>4} {'files/s':>8} {'leaked PHI':>10} {'leaked UIDs':>11}"
        f" {'files w/ leak':>13}"
    )
    for r in runs:
        print(
            f"{r['tool']:18} {r['workers']:>4} {r['files_per_s']:>8} {r['leaked_phi_values']:>10} "
            f"{r['leaked_uids']:>11} {r['files_with_leaks']:>13}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"python": sys.version.split()[0], "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
