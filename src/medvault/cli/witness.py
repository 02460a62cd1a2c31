"""``medvault witness …``: run an independent witness that cosigns archives' checkpoints (C2SP
tlog-witness). Another party runs it, on its own machine, with its own home and passphrase."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from medvault.cli._common import PassphraseFile, err, get_passphrase, out
from medvault.witness_home import DEFAULT_PORT, init_witness, open_witness

app = typer.Typer(
    help="Run an independent witness that cosigns archives' ledger checkpoints (C2SP tlog-witness).",
    no_args_is_help=True,
)

WitnessHome = Annotated[
    Path,
    typer.Option(
        "--home", envvar="MEDVAULT_WITNESS_HOME", help="The witness's home folder (not an archive's)."
    ),
]


@app.command()
def init(
    name: Annotated[
        str, typer.Option(help="The witness's name, a schema-less URL such as regulator.example/w1.")
    ],
    home: WitnessHome = Path("witness-home"),
    passphrase_file: PassphraseFile = None,
    port: Annotated[
        int, typer.Option(min=1, max=65535, help="The HTTPS port `serve` listens on.")
    ] = DEFAULT_PORT,
    hostname: Annotated[
        list[str] | None, typer.Option(help="A name archives reach it by (repeatable; default localhost).")
    ] = None,
) -> None:
    """Create a witness home: its sealed key, its own TLS CA and an empty view."""
    cosigner = init_witness(
        home,
        name=name,
        passphrase=get_passphrase(passphrase_file, confirm=True),
        port=port,
        hostnames=tuple(hostname or ["localhost"]),
    )
    out.print(f"Witness [bold]{name}[/] created in {home}")
    out.print("Its cosignature verifier key (give it to archives, auditors and patients):")
    print(cosigner.verifier_key_text())
    out.print(f"Archives that submit to it trust its CA: {home / 'tls/ca.pem'}")
    out.print(
        "Next: `medvault witness add-log --key <the archive's /ledger/key>`, then `medvault witness serve`."
    )


@app.command("add-log")
def add_log(
    key: Annotated[str, typer.Option(help="The log's note verifier key, as served at /ledger/key.")],
    home: WitnessHome = Path("witness-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Witness a log: trust its checkpoint-signing key (its name is the log's origin)."""
    opened = open_witness(home, get_passphrase(passphrase_file))
    try:
        verifier = opened.add_log(key)
    finally:
        opened.close()
    out.print(f"Witnessing [bold]{verifier.name}[/] (key {verifier.key_id.hex()}); restart `serve` to apply.")


@app.command()
def key(home: WitnessHome = Path("witness-home"), passphrase_file: PassphraseFile = None) -> None:
    """Print the witness's cosignature verifier key."""
    opened = open_witness(home, get_passphrase(passphrase_file))
    try:
        print(opened.cosigner.verifier_key_text())
    finally:
        opened.close()


@app.command()
def status(home: WitnessHome = Path("witness-home"), passphrase_file: PassphraseFile = None) -> None:
    """What the witness has cosigned per log, and the signed checkpoints it refused (evidence)."""
    opened = open_witness(home, get_passphrase(passphrase_file))
    try:
        views = {v.origin: v for v in opened.store.views()}
        table = Table("log (origin)", "cosigned size", "root hash")
        for origin in opened.config.verifiers():
            view = views.get(origin)
            table.add_row(
                origin, "-" if view is None else str(view.size), "-" if view is None else view.root_hash.hex()
            )
        out.print(table)
        refusals = opened.store.refusals(limit=20)
        if refusals:
            out.print(f"[bold red]{len(refusals)} signed checkpoint(s) refused[/] (newest first):")
            for r in refusals:
                out.print(f"  {r.origin} at {r.at}: {r.status} {r.reason}", highlight=False)
    finally:
        opened.close()


@app.command()
def serve(
    home: WitnessHome = Path("witness-home"),
    passphrase_file: PassphraseFile = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default from witness.toml).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from witness.toml, 8444).")] = None,
) -> None:
    """Serve the witness over HTTPS until stopped."""
    import uvicorn

    from medvault.api.witness import witness_app

    opened = open_witness(home, get_passphrase(passphrase_file))
    host = host or opened.config.host
    port = port or opened.config.port
    context = opened.ssl_context()
    config = uvicorn.Config(
        witness_app(opened),
        host=host,
        port=port,
        access_log=False,
        log_level="warning",
        server_header=False,
        proxy_headers=False,
        ssl_context_factory=lambda _config, _default: context,
    )
    shown = f"[{host}]" if ":" in host else host
    err.print(
        f"medvault witness {opened.config.name} serving https://{shown}:{port}/add-checkpoint "
        f"for {len(opened.config.logs)} log(s)"
    )
    try:
        uvicorn.Server(config).run()
    finally:
        opened.close()
