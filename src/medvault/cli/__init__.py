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
    medvault patient …                                 cli/patient.py
    medvault tls …                                     cli/tls.py
    medvault monitor …                                 cli/monitor.py
    medvault alerts …                                  cli/alerts.py
    medvault retention …                               cli/retention.py
    medvault legal-hold …                              cli/legal_hold.py
    medvault backup …                                  cli/backup.py
    medvault training …                                cli/training.py
    medvault witness …                                 cli/witness.py
"""

from __future__ import annotations

import inspect
import re

import typer
from rich.markup import escape

from medvault.cli import (
    alerts,
    apikeys,
    backup,
    fsck,
    home,
    importing,
    keys,
    ledger,
    legal_hold,
    monitor,
    nodes,
    patient,
    report,
    research,
    retention,
    tls,
    training,
    users,
    witness,
)
from medvault.cli._common import err
from medvault.errors import MedvaultError

__all__ = ["HELP_WIDTH", "app", "main"]

#: Help is wrapped to the terminal, up to this many columns (click's default stops at 80).
HELP_WIDTH = 120

app = typer.Typer(
    name="medvault",
    help="A secure archive for medical images: DICOMweb over HTTPS, everything encrypted at rest.",
    no_args_is_help=True,
    add_completion=False,
    # Click's plain help, for every group and command below: it rewraps each paragraph to the
    # terminal, shows no "<bool>" for flags (typer's rich panels do, with click 8.2+ and typer's own
    # fork alike) and reads "[server] port" as text, not as a markup tag that vanishes.
    rich_markup_mode=None,
    context_settings={"max_content_width": HELP_WIDTH},
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
app.add_typer(patient.app, name="patient")
app.add_typer(tls.app, name="tls")
app.add_typer(monitor.app, name="monitor")
app.add_typer(alerts.app, name="alerts")
app.add_typer(retention.app, name="retention")
app.add_typer(legal_hold.app, name="legal-hold")
app.add_typer(backup.app, name="backup")
app.add_typer(training.app, name="training")
app.add_typer(witness.app, name="witness")


_SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)[.!?](?=\s|$)")


def first_sentence(doc: str) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    paragraph = " ".join(doc.strip().split("\n\n", 1)[0].split())
    end = _SENTENCE_END.search(paragraph)
    return paragraph[: end.end()] if end else paragraph


def _whole_summaries(group: typer.Typer) -> None:
    """A command listing shows each command's whole first sentence, wrapped (click would cut it at
    the terminal's width with "..."), for every command group, also those added later."""
    for command in group.registered_commands:
        if command.short_help is None and command.callback is not None:
            command.short_help = first_sentence(inspect.getdoc(command.callback) or "")
    for sub in group.registered_groups:
        if sub.typer_instance is None:
            continue
        # A group's help as typer resolves it: add_typer(help=...), else the sub-app's own.
        texts = (sub.help, sub.typer_instance.info.help)
        text = next((t for t in texts if isinstance(t, str) and t), None)
        if text is not None and not isinstance(sub.short_help, str):
            sub.short_help = first_sentence(text)
        _whole_summaries(sub.typer_instance)


_whole_summaries(app)


def main() -> None:
    try:
        app()
    except MedvaultError as exc:
        err.print(f"[bold red]error[/]: {escape(exc.diagnostics())}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
