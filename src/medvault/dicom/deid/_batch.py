"""De-identify a folder tree (or one file) into a destination folder, in parallel processes.

* Output name: ``<dst>/<new SOP Instance UID>.dcm`` -- never derived from input names or PHI.
* No half-written outputs: each file is written to a temporary name in ``dst`` and hard-linked
  to its final name (``os.link`` fails if the name exists, atomically), then the temporary name
  is removed; a crash leaves at most a ``.deid-*.partial`` file, never a truncated ``.dcm``.
* Two inputs never overwrite each other: when the final name exists, the bytes are compared;
  identical bytes (a re-run, or a duplicate input) are reported ``duplicate``, different ones
  ``collision`` and the existing file stays as it is.
* Inputs that are not DICOM at all are reported ``skipped``; DICOM without preamble / file
  meta is read and de-identified; unreadable or truncated files are ``failed`` with a reason.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filewriter import dcmwrite

from medvault.dicom.deid._config import DeidConfig
from medvault.dicom.deid._engine import Deidentifier, ReidentificationMap
from medvault.errors import InvalidInput

Status = Literal["written", "excluded", "skipped", "duplicate", "collision", "failed"]


@dataclass(frozen=True)
class FileOutcome:
    """What happened to one input file. ``reason`` is generic text: never a patient value."""

    source: Path
    status: Status
    output: Path | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Summary:
    outcomes: tuple[FileOutcome, ...]
    mapping: ReidentificationMap | None = None

    def count(self, status: Status) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def written(self) -> int:
        return self.count("written")

    @property
    def excluded(self) -> int:
        return self.count("excluded")

    @property
    def skipped(self) -> int:
        return self.count("skipped")

    @property
    def failed(self) -> int:
        return self.count("failed") + self.count("collision")


def _is_dicom_at_all(ds: Dataset) -> bool:
    """A data set read with ``force`` is DICOM when it holds recognisable identifying structure."""
    try:
        return any(k in ds for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "Modality"))
    except Exception:  # a garbage parse can fail anywhere
        return False


def _read(source: Path | io.BytesIO) -> tuple[Dataset | None, str | None, Status]:
    try:
        ds = dcmread(source)
    except InvalidDicomError:
        try:
            if isinstance(source, io.BytesIO):
                source.seek(0)
            ds = dcmread(source, force=True)
        except Exception:
            return None, "not a DICOM file", "skipped"
        if not _is_dicom_at_all(ds):
            return None, "not a DICOM file", "skipped"
    except (OSError, EOFError) as exc:
        return None, f"unreadable: {exc.__class__.__name__}", "failed"
    except Exception as exc:
        return None, f"unreadable or truncated DICOM: {exc.__class__.__name__}", "failed"
    for raw in ds.elements():  # a value shorter than its declared length: the file was cut
        length = getattr(raw, "length", None)
        value = getattr(raw, "value", None)
        if (
            isinstance(length, int)
            and length != 0xFFFFFFFF
            and isinstance(value, bytes)
            and len(value) < length
        ):
            return None, "unreadable or truncated DICOM: a value is shorter than its length", "failed"
    return ds, None, "written"


def _place(data: bytes, dst: Path, name: str) -> tuple[Status, str | None]:
    final = dst / name
    fd, tmp = tempfile.mkstemp(prefix=".deid-", suffix=".partial", dir=dst)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, final)
        except FileExistsError:
            if final.read_bytes() == data:
                return "duplicate", "identical output already present (same instance)"
            return "collision", "another input produced the same output name with different content"
        return "written", None
    finally:
        os.unlink(tmp)


_WORKER: Deidentifier | None = None


def _init_worker(config: DeidConfig, project_key: bytes) -> None:
    global _WORKER  # one engine per worker process
    _WORKER = Deidentifier(config=config, project_key=project_key)


def _process(job: tuple[Path, Path]) -> tuple[FileOutcome, ReidentificationMap | None]:
    source, dst = job
    engine = _WORKER
    assert engine is not None
    try:
        data = source.read_bytes()
    except OSError as exc:
        return FileOutcome(source, "failed", reason=f"unreadable: {exc.__class__.__name__}"), None
    try:
        fast = engine.deidentify_bytes(data)  # the common case, without pydicom
    except Exception:  # the pydicom path below decides and reports: one file never stops a run
        fast = None
    if fast is not None:
        name = f"{fast.sop_instance_uid}.dcm"
        placed, clash = _place(fast.data, dst, name)
        notes = "; ".join(fast.notes) or None
        return FileOutcome(source, placed, output=dst / name, reason=clash or notes), fast.mapping
    ds, reason, status = _read(io.BytesIO(data))
    if ds is None:
        return FileOutcome(source, status, reason=reason), None
    try:
        result = engine.deidentify(ds)
    except Exception as exc:  # one bad instance must not stop an export
        why = f"de-identification failed: {exc.__class__.__name__}"
        return FileOutcome(source, "failed", reason=why), None
    if result.dataset is None:
        return FileOutcome(source, "excluded", reason=result.excluded), None
    out = result.dataset
    if "SOPClassUID" not in out:
        return FileOutcome(source, "failed", reason="no SOPClassUID: cannot write a DICOM file"), None
    buffer = io.BytesIO()
    try:
        dcmwrite(buffer, out, enforce_file_format=True)
    except Exception as exc:
        why = f"cannot encode the output: {exc.__class__.__name__}"
        return FileOutcome(source, "failed", reason=why), None
    name = f"{out.SOPInstanceUID}.dcm"
    placed, clash = _place(buffer.getvalue(), dst, name)
    notes = "; ".join(result.notes) or None
    return FileOutcome(source, placed, output=dst / name, reason=clash or notes), result.mapping


def iter_inputs(src: Path) -> Iterator[Path]:
    """Every regular file under ``src`` (or ``src`` itself), in a stable order; links not followed."""
    if src.is_file():
        yield src
        return
    for root, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if path.is_file() and not path.is_symlink():
                yield path


def _context() -> multiprocessing.context.BaseContext:
    if sys.platform != "win32" and "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])  # workers start with the engine imported
        return context
    return multiprocessing.get_context("spawn")


def deidentify_tree(
    src: Path,
    dst: Path,
    *,
    config: DeidConfig,
    project_key: bytes,
    workers: int = 1,
    progress: Callable[[FileOutcome], None] | None = None,
) -> Summary:
    """De-identify every file under ``src`` into ``dst``; one :class:`FileOutcome` per input.

    ``workers`` > 1 runs that many processes. ``progress`` is called in this process once per
    input, in completion order. With ``config.record_mapping`` the summary carries the merged
    re-identification map (PHI: the caller stores it encrypted, or not at all).
    """
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise InvalidInput("the source folder or file does not exist")
    if workers < 1:
        raise InvalidInput("workers must be at least 1")
    dst.mkdir(parents=True, exist_ok=True)
    if src.is_dir() and (dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents):
        raise InvalidInput("the destination must not be inside the source folder")
    jobs = [(path, dst) for path in iter_inputs(src)]
    outcomes: list[FileOutcome] = []
    mapping = ReidentificationMap() if config.record_mapping else None

    def record(outcome: FileOutcome, part: ReidentificationMap | None) -> None:
        outcomes.append(outcome)
        if mapping is not None and part is not None:
            mapping.merge(part)
        if progress is not None:
            progress(outcome)

    if workers == 1 or len(jobs) < 2:
        _init_worker(config, project_key)
        for job in jobs:
            record(*_process(job))
    else:
        chunk = max(1, min(32, len(jobs) // (workers * 4)))
        init = (config, project_key)
        pool = ProcessPoolExecutor(workers, mp_context=_context(), initializer=_init_worker, initargs=init)
        with pool:
            for outcome, part in pool.map(_process, jobs, chunksize=chunk):
                record(outcome, part)
    return Summary(outcomes=tuple(outcomes), mapping=mapping)
