"""`medvault keys …`: key-encryption keys, status and online rotation."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from medvault.cli._common import (
    HomeOption,
    PassphraseFile,
    err,
    open_for_cli,
    out,
    record_change,
)
from medvault.ledger.events import EventKind

app = typer.Typer(help="Key-encryption keys: status and online rotation.", no_args_is_help=True)


@app.command("status")
def keys_status(home: HomeOption = Path("medvault-home"), passphrase_file: PassphraseFile = None) -> None:
    """Show the KEK versions and how many objects each one wraps."""
    opened = open_for_cli(home, passphrase_file)
    try:
        status = opened.archive.key_status()
    finally:
        opened.close()
    table = Table(title="key-encryption keys")
    table.add_column("KEK")
    table.add_column("current")
    table.add_column("objects", justify="right")
    for kek in status.known_keks:
        table.add_row(
            kek, "yes" if kek == status.current_kek else "", str(status.objects_per_kek.get(kek, 0))
        )
    out.print(table)


@app.command("rotate")
def keys_rotate(home: HomeOption = Path("medvault-home"), passphrase_file: PassphraseFile = None) -> None:
    """Create a new KEK and rewrap every data key under it; objects are not rewritten.

    Safe while `medvault serve` runs: the server picks up the new KEK from the keyring file.
    """
    opened = open_for_cli(home, passphrase_file)
    try:
        version = opened.keyring_file.rotate()
        current = f"local-{version}"
        total_old = sum(n for kek, n in opened.archive.index.key_counts().items() if kek != current)
        with Progress(
            TextColumn("[bold]rewrapping"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
        ) as progress:
            task = progress.add_task("rewrap", total=total_old)
            done = opened.archive.rewrap_all(progress=lambda n: progress.advance(task, n))
        record_change(opened, EventKind.KEY_ROTATION, "keys.rotate", "kek", current)
    finally:
        opened.close()
    out.print(f"New KEK local-{version} is current; {done} data keys rewrapped.")
