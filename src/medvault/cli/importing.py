"""`medvault import`: files and folders into the archive, in parallel batches, idempotent."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from medvault.archive import Archive, StoreOutcome
from medvault.cli._common import (
    HomeOption,
    PassphraseFile,
    err,
    open_for_cli,
    out,
)
from medvault.errors import ConfigError

# -- import ----------------------------------------------------------------------------------------


@dataclass
class ImportSummary:
    stored: int = 0
    already_present: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # not DICOM instances (README, JSON, DICOMDIR…)


#: Names a damaged DICOM file usually has: such a file is an error, never skipped as "not DICOM".
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic"})
_PREAMBLE = 128
#: (0002,0002) MediaStorageSOPClassUID = Media Storage Directory Storage (PS3.10 §8.6): a DICOMDIR.
_DICOMDIR_CLASS = b"\x02\x00\x02\x00UI\x14\x001.2.840.10008.1.3.10"


def is_other_file(path: Path) -> bool:
    """A file of a real folder that is not a DICOM instance (README, manifest.json, thumbnails, a
    DICOMDIR index): skipped and counted. A damaged DICOM file — one with the DICM prefix, a
    DICOM name, or a bare data set starting with group 0002/0008 — is not skipped but refused."""
    with path.open("rb") as fh:
        head = fh.read(1024)
    if head[_PREAMBLE : _PREAMBLE + 4] == b"DICM":
        return path.name.upper() == "DICOMDIR" or _DICOMDIR_CLASS in head
    if path.suffix.lower() in DICOM_SUFFIXES:
        return False
    return head[:2] not in (b"\x02\x00", b"\x08\x00")


def dicom_files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            yield path
        else:
            raise ConfigError(f"{path} does not exist")


def import_files(
    archive: Archive, files: list[Path], *, workers: int = 2, batch: int = 16, show_progress: bool = True
) -> ImportSummary:
    """Store files in parallel batches; idempotent (already stored files are counted, not redone).
    Files that are not DICOM instances are skipped and counted."""
    summary = ImportSummary()
    summary.skipped = [str(p) for p in files if is_other_file(p)]
    if summary.skipped:
        skipped = set(summary.skipped)
        files = [p for p in files if str(p) not in skipped]
    batches = [files[i : i + batch] for i in range(0, len(files), batch)]

    def store(chunk: list[Path]) -> list[tuple[Path, StoreOutcome]]:
        return list(zip(chunk, archive.store_batch([p.read_bytes() for p in chunk]), strict=True))

    progress = Progress(
        TextColumn("[bold]importing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not show_progress,
    )
    with progress, ThreadPoolExecutor(max_workers=workers) as pool:
        task = progress.add_task("import", total=len(files))
        for results in pool.map(store, batches):
            for path, outcome in results:
                if outcome.status == "stored":
                    summary.stored += 1
                elif outcome.status == "already_present":
                    summary.already_present += 1
                else:
                    summary.refused.append((str(path), outcome.error.message if outcome.error else "refused"))
            progress.advance(task, len(results))
    return summary


def import_command(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders (searched recursively).")],
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
    workers: Annotated[int, typer.Option(min=1, max=32, help="Parallel workers.")] = 2,
) -> None:
    """Import DICOM files into the archive (encrypting each); safe to run again.

    Files that are not DICOM instances (README, JSON, images, DICOMDIR) are skipped and counted;
    damaged DICOM files are refused and make the exit status 2.
    """
    opened = open_for_cli(home, passphrase_file)
    try:
        files = list(dicom_files(paths))
        summary = import_files(opened.archive, files, workers=workers)
    finally:
        opened.close()
    table = Table(title="import summary")
    table.add_column("outcome")
    table.add_column("files", justify="right")
    table.add_row("stored", str(summary.stored))
    table.add_row("already present", str(summary.already_present))
    table.add_row("refused", str(len(summary.refused)))
    table.add_row("skipped (not DICOM)", str(len(summary.skipped)))
    out.print(table)
    if summary.skipped:
        names = sorted({Path(p).name for p in summary.skipped})
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        out.print(f"  skipped: {escape(', '.join(names[:5]))}{more}", highlight=False, soft_wrap=True)
    for path, reason in summary.refused:
        out.print(f"  refused {escape(str(path))}: {escape(reason)}", highlight=False, soft_wrap=True)
    if summary.refused:
        raise typer.Exit(2)
