"""`medvault monitor …`: the detector offline (replay a log) and its side information (the
directory of users and patients). The online monitor runs inside ``serve``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from medvault.cli._common import HomeOption, PassphraseFile, err, open_for_cli, out, record_change
from medvault.errors import ConfigError
from medvault.ledger.events import EventKind
from medvault.monitor import rules_from
from medvault.monitor.files import load_directory, replay_file

app = typer.Typer(help="The insider-threat monitor: replay a log offline, import the directory.")
directory_app = typer.Typer(help="The directory of users and patients the monitor scores with.")
app.add_typer(directory_app, name="directory")


@app.command("replay")
def monitor_replay(
    events: Annotated[
        Path, typer.Argument(help="EVENTS.jsonl: one access event per line, see docs/monitoring.md.")
    ],
    scores: Annotated[Path, typer.Option("--scores", help="Write OUT.jsonl here: one score line per event.")],
    directory: Annotated[
        Path | None, typer.Option("--directory", help="DIRECTORY.json: users, patients, shifts (optional).")
    ] = None,
    rule: Annotated[
        list[str] | None,
        typer.Option("--rule", help="Override a detection setting, NAME=VALUE (repeatable)."),
    ] = None,
) -> None:
    """Score a log offline with the same code the online monitor runs; reports events, alerts
    and incidents. Errors name the line of EVENTS.jsonl that is wrong."""
    if not events.is_file():
        raise ConfigError(f"{events} is not a file", hint="Give the path of an EVENTS.jsonl file.")
    if scores.resolve() == events.resolve():
        raise ConfigError("--scores must not be the events file itself")
    people = load_directory(directory) if directory is not None else None
    rules = rules_from(rule or [])
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]scoring[/] {task.completed:,} events"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task("replay", total=None)
        summary = replay_file(
            events,
            scores,
            directory=people,
            rules=rules,
            on_batch=lambda n: progress.advance(task, n),
        )
    out.print(
        f"{summary.events:,} events scored, {summary.alerts:,} alerts in {summary.incidents:,} incidents; "
        f"scores written to {scores}",
        highlight=False,
    )


@directory_app.command("import")
def directory_import(
    file: Annotated[Path, typer.Argument(help="DIRECTORY.json (docs/monitoring.md).")],
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Replace the stored directory with FILE. Patient IDs are pseudonymized on import (the file's
    own IDs are not kept); the stored copy is sealed. A running server picks it up within 30 s."""
    from medvault.alerting.directory import import_directory, read_directory_file  # the index: ~1 s

    raw = read_directory_file(file)
    opened = open_for_cli(home, passphrase_file)
    try:
        users, patients = import_directory(
            raw, index=opened.archive.index, alerts=opened.alerts, now=datetime.now(UTC)
        )
        record_change(opened, EventKind.CONFIG_CHANGE, "monitor.directory.import", "directory", "monitor")
    finally:
        opened.close()
    out.print(f"Directory imported: {users} users, {patients} patients.")
