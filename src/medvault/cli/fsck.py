"""`medvault fsck`: reconcile object storage with the index (leftovers of interrupted writes)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn

from medvault.cli._common import HomeOption, PassphraseFile, cli_actor, err, open_for_cli, out
from medvault.fsck import GRACE_SECONDS, reconcile


def fsck(
    repair: Annotated[
        bool, typer.Option("--repair", help="Remove the leftovers found (objects no index row names).")
    ] = False,
    grace_seconds: Annotated[
        int,
        typer.Option(
            min=0, help="Leave objects younger than this alone: they may be writes in flight elsewhere."
        ),
    ] = int(GRACE_SECONDS),
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Find encrypted objects that no index row names (a crash between writing an object and
    indexing it leaves one; its key is lost, so it is removed, never re-indexed), unfinished writes,
    and index rows whose object is missing. Exit 1 if anything is wrong and was not repaired."""
    opened = open_for_cli(home, passphrase_file)
    try:
        with Progress(TextColumn("[bold]listing objects"), BarColumn(), console=err) as progress:
            task = progress.add_task("objects", total=None)
            report = reconcile(
                opened.archive,
                repair=repair,
                grace_seconds=grace_seconds,
                actor=cli_actor(),
                progress=lambda n: progress.advance(task, n),
            )
    finally:
        opened.close()
    out.print(report.summary(), highlight=False, soft_wrap=True)
    for uid in report.missing:
        out.print(f"  - instance {uid}: its object is missing from storage (restore from backup)")
    if not repair and (report.orphans or report.partial_writes):
        out.print("Run again with --repair to remove the leftovers.")
    if not report.clean:
        raise typer.Exit(1)
