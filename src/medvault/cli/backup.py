"""`medvault backup …`: create, verify, restore, status (docs/compliance.md, "Backups")."""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from medvault.cli._common import HomeOption, PassphraseFile, cli_actor, err, get_passphrase, open_for_cli, out
from medvault.ledger.events import Actor, ActorKind

app = typer.Typer(
    help="Backups that are evidence too: a signed, consistent snapshot taken while serving.",
    no_args_is_help=True,
)

#: How many problems `verify` prints before "… and N more".
SHOWN_PROBLEMS = 20

OptionalHome = Annotated[
    Path | None,
    typer.Option(
        "--home",
        envvar="MEDVAULT_HOME",
        help="The live home: pins the manifest's key to its ledger and ledgers the result.",
    ),
]
KeyOption = Annotated[
    str | None,
    typer.Option(
        "--key", help="The archive's note verifier key (`medvault ledger key`), or a file holding it."
    ),
]


def _key_text(key: str | None) -> str | None:
    if key is None:
        return None
    path = Path(key)
    return path.read_text(encoding="utf-8").strip() if "+" not in key and path.is_file() else key.strip()


@contextmanager
def _bytes_progress(what: str, total: int | None) -> Iterator[Callable[[int], None]]:
    with Progress(
        TextColumn(f"[bold]{what}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=err
    ) as progress:
        task = progress.add_task(what, total=total)
        yield lambda n: progress.advance(task, n)


@app.command("create")
def backup_create(
    folder: Annotated[Path, typer.Argument(help="A new (or empty) folder for the backup.")],
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Take a consistent backup of index, ledger, keyring and objects while the archive serves,
    with a manifest signed by the ledger's key; ledgered as backup.create."""
    from medvault.compliance.backup import create_backup, require_empty_folder

    require_empty_folder(folder, what="the backup folder")
    opened = open_for_cli(home, passphrase_file)
    try:
        total = opened.archive.index.storage_totals()[1]  # about the objects' size (ciphertext)
        with _bytes_progress("backing up", total) as progress:
            result = create_backup(opened, folder, actor=cli_actor(), progress=progress)
    finally:
        opened.close()
    manifest = result.manifest
    out.print(
        f"backup complete: {len(manifest.objects)} objects, {len(manifest.files)} files, "
        f"{manifest.total_bytes} bytes; ledger size {manifest.tree_size} root {manifest.root_hash.hex()}",
        highlight=False,
        soft_wrap=True,
    )
    out.print(
        f"manifest sha256 {result.manifest_sha256} (ledger entry {result.ledger_index})", highlight=False
    )
    for name in result.not_included:
        err.print(
            f"[bold yellow]note[/]: {name} lies outside the home and is not in the backup", highlight=False
        )


@app.command("verify")
def backup_verify(
    folder: Annotated[Path, typer.Argument(help="The backup folder.")],
    home: OptionalHome = None,
    key: KeyOption = None,
) -> None:
    """Check a backup without the passphrase: signature, every file's hash, the ledger copy and
    its root, every object the index names. Exit 1 naming the first problems."""
    from medvault.compliance.backup import load_manifest, record_verification, verify_backup
    from medvault.compliance.manifest import BackupError

    try:
        total: int | None = load_manifest(folder)[0].total_bytes
    except BackupError:
        total = None
    with _bytes_progress("verifying", total) as progress:
        result = verify_backup(folder, home=home, expected_signer=_key_text(key), progress=progress)
    if home is not None:
        actor = Actor(kind=ActorKind.USER, id=f"cli:{getpass.getuser()}", auth="local-account")
        index = record_verification(home, result, actor=actor)
        err.print(f"recorded as backup.verify (ledger entry {index})", highlight=False)
    if result.ok and result.manifest is not None:
        out.print(
            f"backup OK: {len(result.manifest.files)} files, {len(result.manifest.objects)} objects, "
            f"ledger size {result.manifest.tree_size}; manifest sha256 {result.manifest_sha256}",
            highlight=False,
            soft_wrap=True,
        )
        out.print(f"proves: {result.proves}", highlight=False, soft_wrap=True)
        return
    out.print(f"backup FAILED verification ({len(result.problems)} problems):", highlight=False)
    for problem in result.problems[:SHOWN_PROBLEMS]:
        out.print(f"  - {problem}", highlight=False, soft_wrap=True)
    if len(result.problems) > SHOWN_PROBLEMS:
        out.print(f"  … and {len(result.problems) - SHOWN_PROBLEMS} more", highlight=False)
    raise typer.Exit(1)


@app.command("restore")
def backup_restore(
    folder: Annotated[Path, typer.Argument(help="The backup folder.")],
    home: Annotated[Path, typer.Option("--home", help="The home to create from the backup.")],
    force: Annotated[
        bool,
        typer.Option("--force", help="Restore over a non-empty folder (it is moved aside, not deleted)."),
    ] = False,
    key: KeyOption = None,
    passphrase_file: PassphraseFile = None,
) -> None:
    """Verify a backup and restore it as a new home that `medvault serve` starts on with the
    passphrase of the backed-up archive; ledgered there as backup.restore."""
    from medvault.compliance.backup import load_manifest, restore_backup

    passphrase = get_passphrase(passphrase_file)
    total = load_manifest(folder, expected_signer=_key_text(key))[0].total_bytes
    with _bytes_progress("restoring", total) as progress:
        result = restore_backup(
            folder,
            home,
            passphrase=passphrase,
            actor=cli_actor(),
            force=force,
            expected_signer=_key_text(key),
            progress=progress,
        )
    if result.replaced is not None:
        err.print(f"the folder that was there is kept as {result.replaced}", highlight=False)
    out.print(
        f"restored {len(result.manifest.objects)} objects and the ledger ({result.manifest.tree_size} entries"
        f", {result.published} in-flight events published) into {home}; ledger entry {result.ledger_index}",
        highlight=False,
        soft_wrap=True,
    )


@app.command("status")
def backup_status_command(
    home: HomeOption = Path("medvault-home"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (for reports and monitoring).")] = False,
) -> None:
    """Show the last backup made and the last one verified, from the ledger (no passphrase)."""
    from medvault.compliance.backup import backup_status

    status = backup_status(home)
    if as_json:
        print(json.dumps(status.as_dict(), sort_keys=True))
        return
    rows = (
        ("last backup", status.last_created),
        ("last verified backup", status.last_verified),
        ("last verification", status.last_verification),
        ("last restore", status.last_restore),
    )
    for label, event in rows:
        if event is None:
            out.print(f"{label}: none", highlight=False)
        else:
            out.print(
                f"{label}: {event.time:%Y-%m-%d %H:%M:%S}Z {event.outcome} by {event.actor}, "
                f"manifest sha256 {event.manifest_sha256} (ledger entry {event.ledger_index})",
                highlight=False,
                soft_wrap=True,
            )
