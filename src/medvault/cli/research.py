"""`medvault deid`, `export` and `deid-map`: de-identification and research exports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from medvault.cli._common import (
    HomeOption,
    PassphraseFile,
    cli_actor,
    err,
    open_for_cli,
    out,
    record_change,
)
from medvault.cli.importing import dicom_files
from medvault.errors import ConfigError
from medvault.ledger.events import EventKind

OptionList = Annotated[
    list[str] | None,
    typer.Option(
        "--option", help="A PS3.15 option, e.g. retain-uids, clean-descriptors, modified-dates (repeatable)."
    ),
]


def deid(
    src: Annotated[Path, typer.Argument(help="A DICOM file or folder to de-identify.")],
    dst: Annotated[Path, typer.Argument(help="The output folder (files named by their new SOP UID).")],
    project: Annotated[
        str, typer.Option(help="Export project: UIDs and pseudonyms are consistent within it.")
    ],
    profile: Annotated[str, typer.Option(help="The confidentiality profile (PS3.15 Annex E).")] = "basic",
    option: OptionList = None,
    workers: Annotated[int, typer.Option(min=1, max=32, help="Parallel processes.")] = 2,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """De-identify files with the Basic Application Level Confidentiality Profile and its options.
    The project key comes from the home's keyring, so a project maps UIDs the same way every run."""
    from medvault.dicom.deid import DeidConfig, deidentify_tree
    from medvault.export import project_key

    if profile != "basic":
        raise ConfigError(
            f"unknown profile {profile!r}", hint="The profile is `basic`; add --option for its options."
        )
    config = DeidConfig.from_options(option or [])
    opened = open_for_cli(home, passphrase_file)
    try:
        key = project_key(opened, project)
        files = list(dicom_files([src]))
        with Progress(
            TextColumn("[bold]de-identifying"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
        ) as progress:
            task = progress.add_task("deid", total=len(files))
            summary = deidentify_tree(
                src,
                dst,
                config=config,
                project_key=key,
                workers=workers,
                progress=lambda _o: progress.advance(task),
            )
        record_change(opened, EventKind.DEIDENTIFY, "deid.files", "project", project)
    finally:
        opened.close()
    table = Table(title="de-identification summary")
    table.add_column("outcome")
    table.add_column("files", justify="right")
    statuses = sorted({o.status for o in summary.outcomes})
    for status in statuses:
        table.add_row(status, str(summary.count(status)))
    out.print(table)
    for o in summary.outcomes:
        if o.status not in ("written", "duplicate"):
            out.print(
                f"  {o.status} {escape(str(o.source))}: {escape(o.reason or '')}",
                highlight=False,
                soft_wrap=True,
            )
    if summary.count("failed"):
        raise typer.Exit(2)


def export_command(
    query: Annotated[
        list[str], typer.Option("--query", help="QIDO-style KEY=VALUE to select studies (repeatable).")
    ],
    project: Annotated[str, typer.Option(help="Export project name (consistent pseudonyms and UIDs).")],
    option: OptionList = None,
    to: Annotated[
        Path | None, typer.Option("--to", help="Write the de-identified files into this folder.")
    ] = None,
    to_stow: Annotated[
        str | None, typer.Option("--to-stow", help="STOW-RS them to this https DICOMweb URL.")
    ] = None,
    stow_token_file: Annotated[
        Path | None, typer.Option(help="File holding the STOW target's bearer token.")
    ] = None,
    stow_ca: Annotated[Path | None, typer.Option(help="CA file for the STOW target.")] = None,
    keep_map: Annotated[
        bool, typer.Option("--keep-map", help="Keep the re-identification map (encrypted, CLI-only to read).")
    ] = False,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Export studies from the archive, de-identified, to a folder or another archive (ledgered)."""
    from medvault.export import export_studies

    params: list[tuple[str, str]] = []
    for item in query:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--query {item!r} must look like KEY=VALUE")
        params.append((key, value))
    opened = open_for_cli(home, passphrase_file)
    try:
        with Progress(
            TextColumn("[bold]exporting"), BarColumn(), MofNCompleteColumn(), console=err
        ) as progress:
            task = progress.add_task("export", total=None)
            summary = export_studies(
                opened,
                query_params=params,
                project=project,
                options=option or [],
                to_dir=to,
                to_stow=to_stow,
                stow_token=stow_token_file.read_text().strip() if stow_token_file else None,
                stow_ca=stow_ca,
                keep_map=keep_map,
                actor=cli_actor(),
                progress=lambda p: progress.update(task, completed=p.done, total=p.total),
            )
    finally:
        opened.close()
    out.print(
        f"export {summary.export_id}: {len(summary.studies)} studies, {summary.count('exported')} instances "
        f"exported, {summary.count('excluded')} excluded, {summary.count('failed')} failed",
        highlight=False,
    )
    for study in summary.studies:
        for o in study.outcomes:
            if o.reason:
                out.print(
                    f"  {o.status} {o.sop_uid}: {escape(str(o.reason))}", highlight=False, soft_wrap=True
                )
    if summary.count("failed"):
        raise typer.Exit(2)


def deid_map(
    project: Annotated[str, typer.Argument(help="The export project.")],
    export_id: Annotated[str | None, typer.Option(help="One export of the project (default: all).")] = None,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Print a project's re-identification map (PHI!). Needs the home's passphrase; ledgered."""
    from medvault.export import read_reid_map, reid_map_json

    opened = open_for_cli(home, passphrase_file)
    try:
        print(reid_map_json(read_reid_map(opened, project, actor=cli_actor(), export_id=export_id)))
    finally:
        opened.close()
