"""`medvault ledger …`: verify, export, key, checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from medvault.cli._common import (
    HomeOption,
    PassphraseFile,
    check_objects,
    cli_actor,
    err,
    open_for_cli,
    out,
    user_action,
)
from medvault.errors import ConfigError

app = typer.Typer(help="The tamper-evident audit ledger: verify, key, checkpoint.", no_args_is_help=True)


@app.command("verify")
def ledger_verify(
    trusted_checkpoint: Annotated[
        Path | None,
        typer.Option(help="A checkpoint saved earlier: the log must still contain it (no rollback)."),
    ] = None,
    objects: Annotated[
        bool, typer.Option(help="Also check every stored object against its store event.")
    ] = True,
    witness_policy: Annotated[
        Path | None,
        typer.Option(
            help="A witness policy (docs/witness.md): check the cosignatures, the quorum, and the "
            "ledger against what each witness with a URL holds now."
        ),
    ] = None,
    ask_witnesses: Annotated[
        bool, typer.Option(help="With --witness-policy: fetch each witness's view from its URL.")
    ] = True,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Recompute the Merkle tree from storage, check every signed checkpoint and their consistency,
    name the first altered/removed/reordered/inserted entry, and check every stored image."""
    from medvault.ledger.verify import verify_ledger

    opened = open_for_cli(home, passphrase_file)
    try:
        opened.ledger.flush()
        policy = views = None
        if witness_policy is not None:
            from medvault.witnessing import fetch_views, read_policy, witness_ssl_context

            policy = read_policy(witness_policy)
            context = witness_ssl_context(opened.root, opened.settings.ledger.witness_ca)
            views = (
                fetch_views(policy, opened.ledger.origin, context, warn=err.print) if ask_witnesses else []
            )
        report = verify_ledger(
            opened.path(opened.settings.ledger.database),
            verifier_key=opened.ledger.verifier_key_text(),
            trusted_checkpoint=trusted_checkpoint.read_bytes() if trusted_checkpoint else None,
            policy=policy,
            witness_views=views or (),
        )
        out.print(report.summary(), highlight=False, soft_wrap=True)
        problems: list[str] = []
        if objects:
            problems = check_objects(opened)
            from medvault.fsck import reconcile

            storage = reconcile(opened.archive, repair=False)
            out.print(storage.summary(), highlight=False, soft_wrap=True)
            if storage.orphans or storage.partial_writes:
                out.print("  run `medvault fsck --repair` to remove the leftovers", highlight=False)
    finally:
        opened.close()
    if not report.ok or problems:
        raise typer.Exit(1)


@app.command("export")
def ledger_export(
    to: Annotated[
        str,
        typer.Option(
            "--to", help="A file, '-' for stdout, syslog+tls://HOST[:PORT], or syslog+tcp://HOST:PORT."
        ),
    ],
    fmt: Annotated[
        str, typer.Option("--format", help="jsonl (the exact leaves) or atna (IHE ATNA XML).")
    ] = "jsonl",
    since_index: Annotated[int, typer.Option(min=0, help="First ledger index to send (resume).")] = 0,
    ca_file: Annotated[Path | None, typer.Option(help="CA of the syslog collector (TLS).")] = None,
    client_cert: Annotated[Path | None, typer.Option(help="Client certificate for mutual TLS.")] = None,
    client_key: Annotated[Path | None, typer.Option(help="Its private key.")] = None,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Send ledger events to a SIEM: IHE ATNA over syslog (RFC 5424 over TLS, RFC 5425), or JSON Lines."""
    from medvault.ledger.export import export_ledger

    if fmt not in ("jsonl", "atna"):
        raise ConfigError("--format is jsonl or atna")
    opened = open_for_cli(home, passphrase_file)
    try:
        opened.ledger.flush()
        total = max(opened.ledger.size - since_index, 0)
        with Progress(
            TextColumn("[bold]exporting"), BarColumn(), MofNCompleteColumn(), console=err
        ) as progress:
            task = progress.add_task("export", total=total)
            result = export_ledger(
                opened.ledger,
                fmt="atna" if fmt == "atna" else "jsonl",
                destination=to,
                since_index=since_index,
                ca_file=ca_file,
                client_cert=client_cert,
                client_key=client_key,
                progress=lambda n: progress.advance(task, n),
                actor=cli_actor(),
            )
    finally:
        opened.close()
    err.print(f"{result.count} events exported; resume with --since-index {result.next_index}")


@app.command("key")
def ledger_key(home: HomeOption = Path("medvault-home"), passphrase_file: PassphraseFile = None) -> None:
    """Print the note verifier key auditors use to check checkpoints offline."""
    user_action(home, passphrase_file, lambda o: o.ledger.verifier_key_text())


@app.command("witness-policy")
def ledger_witness_policy(
    out_file: Annotated[Path | None, typer.Option("--out", help="Write it here (default: print it).")] = None,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Print this archive's witness policy (its key, its witnesses, the quorum) for auditors."""
    from medvault.witnessing import witness_policy

    opened = open_for_cli(home, passphrase_file)
    try:
        ledger = opened.settings.ledger
        text = witness_policy(
            opened.ledger.verifier_key_text(), ledger.witnesses, ledger.witness_quorum
        ).to_text()
    finally:
        opened.close()
    if out_file is None:
        sys.stdout.write(text)
    else:
        out_file.write_text(text, encoding="utf-8")
        err.print(f"witness policy written to {out_file}")


@app.command("mirror")
def ledger_mirror(
    url: Annotated[str, typer.Argument(help="The archive, e.g. https://pacs.example.org:8443.")],
    to: Annotated[Path, typer.Option("--to", help="The mirror's folder (created; keeps the copy).")],
    policy: Annotated[
        Path, typer.Option(help="The archive's witness policy (`medvault ledger witness-policy`).")
    ],
    api_key: Annotated[
        str, typer.Option(envvar="MEDVAULT_API_KEY", help="An API key with ledger.read (e.g. role auditor).")
    ],
    ca: Annotated[Path | None, typer.Option(help="The archive's CA certificate (else the system's).")] = None,
    witness_ca: Annotated[Path | None, typer.Option(help="The witnesses' CA certificates.")] = None,
    interval: Annotated[int, typer.Option(min=1, help="Seconds between rounds.")] = 10,
    once: Annotated[bool, typer.Option(help="One round, then exit (2 if any alert was raised).")] = False,
) -> None:
    """Copy an archive's ledger and verify it continuously; alert on a rewrite or a split view."""
    import functools
    import ssl
    import time

    import httpx

    from medvault.ledger.mirror import Mirror
    from medvault.mirroring import sync
    from medvault.witnessing import read_policy

    context = ssl.create_default_context(cafile=str(ca)) if ca else ssl.create_default_context()
    witnesses = ssl.create_default_context(cafile=str(witness_ca)) if witness_ca else None
    mirror = Mirror(to, read_policy(policy))
    raised = 0
    try:
        with httpx.Client(
            base_url=url.rstrip("/"),
            verify=context,
            timeout=30,
            headers={"Authorization": f"Bearer {api_key}"},
        ) as client:
            while True:
                try:
                    with Progress(
                        TextColumn("[bold]copying entries"), MofNCompleteColumn(), console=err, transient=True
                    ) as progress:
                        task = progress.add_task("entries", total=None)
                        result = sync(
                            client,
                            mirror,
                            witness_context=witnesses,
                            progress=functools.partial(progress.advance, task),
                        )
                except httpx.HTTPError as exc:
                    err.print(f"archive unreachable ({type(exc).__name__}); retrying in {interval} s")
                    if once:
                        raise typer.Exit(1) from None
                else:
                    for alert in result.alerts:
                        err.print(f"[bold red]ALERT[/] {alert.kind}: {alert.message}", highlight=False)
                    raised += len(result.alerts)
                    out.print(
                        f"mirror holds {result.size} entries (+{result.fetched}); "
                        f"witnessed up to {result.witnessed}; alerts {raised}",
                        highlight=False,
                    )
                if once:
                    break
                time.sleep(interval)
    finally:
        mirror.close()
    if raised:
        raise typer.Exit(2)


@app.command("checkpoint")
def ledger_checkpoint(
    home: HomeOption = Path("medvault-home"), passphrase_file: PassphraseFile = None
) -> None:
    """Sign and print a checkpoint for the current log (keep it: `verify --trusted-checkpoint`)."""
    opened = open_for_cli(home, passphrase_file)
    try:
        opened.ledger.flush()
        sys.stdout.write(opened.ledger.checkpoint().decode())
    finally:
        opened.close()
