"""The ``medvault`` command line (typer): one module per command group.

Every command has --help; long work shows progress. Errors derived from ``MedvaultError`` print
their diagnostics (what went wrong, what to do) and exit 1, never a traceback.

    medvault init | serve | quickstart | version       cli/home.py
    medvault import                                    cli/importing.py
    medvault deid | export | deid-map                  cli/research.py
    medvault fsck                                      cli/fsck.py
    medvault users …                                   cli/users.py
    medvault keys …                                    cli/keys.py
    medvault apikeys …                                 cli/apikeys.py
    medvault nodes …                                   cli/nodes.py
    medvault ledger …                                  cli/ledger.py
    medvault report …                                  cli/report.py
    medvault tls …                                     cli/tls.py
    medvault monitor …                                 cli/monitor.py
    medvault alerts …                                  cli/alerts.py
"""

from __future__ import annotations

import typer
from rich.markup import escape

from medvault.cli import (
    alerts,
    apikeys,
    fsck,
    home,
    importing,
    keys,
    ledger,
    monitor,
    nodes,
    report,
    research,
    tls,
    users,
)
from medvault.cli._common import err
from medvault.errors import MedvaultError

__all__ = ["app", "main"]

app = typer.Typer(
    name="medvault",
    help="A secure archive for medical images: DICOMweb over HTTPS, everything encrypted at rest.",
    no_args_is_help=True,
    add_completion=False,
)
app.command()(home.init)
app.command()(home.serve)
app.command("import")(importing.import_command)
app.command()(research.deid)
app.command("export")(research.export_command)
app.command("deid-map")(research.deid_map)
app.command()(fsck.fsck)
app.command()(home.quickstart)
app.command()(home.version)
app.add_typer(users.app, name="users")
app.add_typer(keys.app, name="keys")
app.add_typer(apikeys.app, name="apikeys")
app.add_typer(nodes.app, name="nodes")
app.add_typer(ledger.app, name="ledger")
app.add_typer(report.app, name="report")
app.add_typer(tls.app, name="tls")
app.add_typer(monitor.app, name="monitor")
app.add_typer(alerts.app, name="alerts")


def main() -> None:
    try:
        app()
    except MedvaultError as exc:
        err.print(f"[bold red]error[/]: {escape(exc.diagnostics())}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
