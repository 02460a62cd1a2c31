"""The ``medvault`` command line (typer): one module per command group.

Every command has --help; long work shows progress. Errors derived from ``MedvaultError`` print
their diagnostics (what went wrong, what to do) and exit 1, never a traceback.

    medvault init | serve | quickstart | version       cli/home.py
    medvault import                                    cli/importing.py
    medvault deid | export | deid-map                  cli/research.py
    medvault fsck                                      cli/fsck.py
    medvault migrate                                   cli/migrate.py
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

import importlib
import inspect
import re
import sys
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from medvault.errors import MedvaultError

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["HELP_WIDTH", "app", "main"]

#: Help is wrapped to the terminal, up to this many columns (click's default stops at 80).
HELP_WIDTH = 120

#: The top-level commands: name -> (module in medvault.cli, function).
COMMANDS = {
    "init": ("home", "init"),
    "serve": ("home", "serve"),
    "import": ("importing", "import_command"),
    "deid": ("research", "deid"),
    "export": ("research", "export_command"),
    "deid-map": ("research", "deid_map"),
    "fsck": ("fsck", "fsck"),
    "migrate": ("migrate", "migrate_command"),
    "quickstart": ("home", "quickstart"),
    "version": ("home", "version"),
}
#: The command groups: name -> module in medvault.cli (its ``app``).
GROUPS = {
    "users": "users",
    "keys": "keys",
    "apikeys": "apikeys",
    "nodes": "nodes",
    "ledger": "ledger",
    "report": "report",
    "patient": "patient",
    "tls": "tls",
    "monitor": "monitor",
    "alerts": "alerts",
    "retention": "retention",
    "legal-hold": "legal_hold",
    "backup": "backup",
    "training": "training",
    "witness": "witness",
}


def _root() -> typer.Typer:
    return typer.Typer(
        name="medvault",
        help="A secure archive for medical images: DICOMweb over HTTPS, everything encrypted at rest.",
        no_args_is_help=True,
        add_completion=False,
        # Click's plain help, for every group and command below: it rewraps each paragraph to the
        # terminal, shows no "<bool>" for flags (typer's rich panels do, with click 8.2+ and typer's
        # own fork alike) and reads "[server] port" as text, not as a markup tag that vanishes.
        rich_markup_mode=None,
        context_settings={"max_content_width": HELP_WIDTH},
    )


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"medvault.cli.{name}")


def _add_group(root: typer.Typer, name: str) -> None:
    root.add_typer(_module(GROUPS[name]).app, name=name)


def build_app(only_group: str | None = None) -> typer.Typer:
    """The whole command line, or (``only_group``) the root with that one group: a command such
    as ``medvault monitor replay`` then imports its own module only, not the archive's web, DIMSE
    and database layers that every other group needs (about 2 s of start-up)."""
    root = _root()
    if only_group is not None:
        _add_group(root, only_group)
    else:
        for name, (module, function) in COMMANDS.items():
            root.command(name)(getattr(_module(module), function))
        for name in GROUPS:
            _add_group(root, name)
    _whole_summaries(root)
    return root


def __getattr__(name: str) -> Any:
    """``medvault.cli.app``: the whole command line, built on first use (tests, ``python -m``)."""
    if name == "app":
        value = globals()["app"] = build_app()
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def main() -> None:
    """The ``medvault`` entry point: only the group named on the command line is imported."""
    group = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] in GROUPS else None
    try:
        build_app(group)(prog_name="medvault")
    except MedvaultError as exc:
        from medvault.cli._common import err  # loaded by every command already

        err.print(f"[bold red]error[/]: {escape(exc.diagnostics())}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
