"""`medvault retention …`: the retention rules in force, and a run (or a dry run) with a report —
the same as POST /api/retention/run, ledgered the same way (docs/compliance.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from medvault.cli._common import HomeOption, PassphraseFile, cli_actor, err, open_for_cli, out
from medvault.compliance.retention import RunReport, run_retention
from medvault.compliance.rules import Verdict, rules_digest
from medvault.config import RetentionRule, load_settings

app = typer.Typer(
    help="Retention: how long studies are kept, and expiring those past it.", no_args_is_help=True
)


def _rules_table(rules: tuple[RetentionRule, ...]) -> Table:
    table = Table(title="retention rules ([retention] in medvault.toml)")
    for column in ("name", "modality", "department", "age at study", "keep"):
        table.add_column(column, overflow="fold")
    for r in rules:
        if r.min_age_years is None and r.max_age_years is None:
            ages = "any"
        else:
            ages = f"{r.min_age_years or 0}-{r.max_age_years if r.max_age_years is not None else ''}"
        keep = []
        if r.keep_years is not None:
            keep.append(f"{r.keep_years} years after the study")
        if r.keep_until_patient_age is not None:
            keep.append(f"until the patient is {r.keep_until_patient_age}")
        table.add_row(
            escape(r.name), r.modality or "any", escape(r.department) or "any", ages, " or ".join(keep)
        )
    return table


@app.command("rules")
def retention_rules(
    as_json: Annotated[bool, typer.Option("--json", help="The rules as JSON.")] = False,
    home: HomeOption = Path("medvault-home"),
) -> None:
    """Show the retention rules in force (no passphrase needed: they are in medvault.toml)."""
    settings = load_settings(home).retention
    if as_json:
        print(
            json.dumps(
                {
                    "enabled": settings.enabled,
                    "schedule_seconds": settings.schedule_seconds,
                    "rules": [r.to_toml() for r in settings.rules],
                    "rules_sha256": rules_digest(settings.rules),
                },
                indent=2,
            )
        )
        return
    if not settings.rules:
        out.print("No retention rules: every study is kept (add [[retention.rules]] to medvault.toml).")
        return
    out.print(_rules_table(settings.rules))
    state = (
        f"every {settings.schedule_seconds} s" if settings.enabled else "off ([retention] enabled = false)"
    )
    out.print(f"scheduled job in serve: {state}", highlight=False)


def _verdict_table(title: str, verdicts: list[Verdict]) -> Table:
    table = Table(title=title)
    for column in ("study UID", "rule", "kept until", "why"):
        table.add_column(column, overflow="fold")
    for v in verdicts:
        until = v.keep_until.isoformat() if v.keep_until else ""
        table.add_row(v.study_uid, escape(v.rule or ""), until, escape(v.reason))
    return table


def _print_report(report: RunReport) -> None:
    verb = "would expire" if report.dry_run else "expired"
    if report.expired:
        out.print(_verdict_table(f"studies {verb}", report.expired))
    if report.held:
        out.print(_verdict_table("expired but under legal hold (kept)", report.held))
    if report.undetermined:
        out.print(_verdict_table("kept: a date a rule needs is missing", report.undetermined))
    for uid, why in report.failed:
        err.print(f"[bold red]failed[/]: {uid}: {escape(why)}", highlight=False)
    summary = (
        f"{'dry run: ' if report.dry_run else ''}{report.examined} studies examined, "
        f"{len(report.expired)} {verb} ({report.instances_deleted} instances crypto-shredded), "
        f"{len(report.held)} held, {len(report.undetermined)} undetermined, {report.kept} kept"
    )
    out.print(summary, highlight=False, soft_wrap=True)
    if report.dry_run:
        out.print("Nothing was changed (the dry run itself is ledgered).", highlight=False)


@app.command("run")
def retention_run(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would expire; change nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON.")] = False,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Apply the retention rules now: expire (crypto-shred) every study whose time has passed and
    that no legal hold covers, and report each study expired, held or undetermined.

    Safe while `medvault serve` runs. Every expiry and the run itself are ledgered.
    """
    opened = open_for_cli(home, passphrase_file)
    try:
        rules = opened.settings.retention.rules
        with Progress(
            TextColumn("[bold]retention" + (" (dry run)" if dry_run else "")),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
            disable=as_json,
        ) as progress:
            task = progress.add_task("studies", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            report = run_retention(
                opened.archive, rules, dry_run=dry_run, actor=cli_actor(), progress=advance
            )
    finally:
        opened.close()
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        if not rules:
            out.print("No retention rules: every study is kept.", highlight=False)
        _print_report(report)
    if report.failed:
        raise typer.Exit(1)
