"""`medvault report …`: reports for privacy officers."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, cast

import typer
from rich.table import Table

from medvault.cli._common import (
    HomeOption,
    PassphraseFile,
    err,
    open_for_cli,
    out,
    record_change,
)
from medvault.home import write_private

app = typer.Typer(help="Reports for privacy officers.", no_args_is_help=True)


@app.command("disclosures")
def report_disclosures(
    patient_id: Annotated[str, typer.Option("--patient-id", help="The patient's PatientID.")],
    since: Annotated[str | None, typer.Option(help="Only from this date (YYYY-MM-DD).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON Lines instead of a table.")] = False,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Accounting of disclosures: who accessed which of this patient's studies, when, how and why."""
    import json

    from medvault.reports import disclosures

    opened = open_for_cli(home, passphrase_file)
    try:
        start = datetime.combine(date.fromisoformat(since), datetime.min.time(), UTC) if since else None
        rows = disclosures(opened.archive, patient_id, since=start)
    finally:
        opened.close()
    if as_json:
        for row in rows:
            print(json.dumps(row.as_dict(), separators=(",", ":")))
        return
    table = Table(title=f"disclosures ({len(rows)})")
    # The time stays whole on a narrow terminal (80 columns); the long values wrap instead.
    table.add_column("time (UTC)", no_wrap=True, min_width=19)
    for column in ("who", "how", "what", "study", "outcome", "why"):
        table.add_column(column, overflow="fold")
    for r in rows:
        who = f"{r.actor} ({r.actor_kind}{', ' + r.address if r.address else ''})"
        table.add_row(
            r.time[:19].replace("T", " "),
            who,
            r.auth or "",
            f"{r.kind} {r.action}",
            r.study_uid or "",
            r.outcome,
            r.reason or "",
        )
    out.print(table)


@app.command("compliance")
def report_compliance(
    fmt: Annotated[
        str, typer.Option("--format", help="html (default), json (the hashed body) or pdf.")
    ] = "html",
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the report here (default: standard output).")
    ] = None,
    dormant_days: Annotated[
        int, typer.Option(help="An account without a sign-in for this many days is dormant.")
    ] = 90,
    backup_days: Annotated[int, typer.Option(help="A verified backup older than this needs attention.")] = 7,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """The safeguards report: HIPAA Security Rule (164.312, 164.308) and GDPR (Art. 30, 32) controls,
    each met / needs attention / not met, with the evidence measured from this archive now (TLS
    as served, objects on disk, the ledger verified, accounts, keys, nodes, training, alerts,
    backups) and what to do. The report is ledgered with the SHA-256 of its body."""
    import sys

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from medvault.compliance.evidence import gather
    from medvault.compliance.report import FORMATS, Format, build, render
    from medvault.compliance.safeguards import Thresholds
    from medvault.errors import InvalidInput
    from medvault.ledger.events import EventKind

    if fmt not in FORMATS:
        raise InvalidInput(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if fmt == "pdf" and out_file is None and sys.stdout.isatty():
        raise InvalidInput("a PDF is not for the terminal", hint="Add --out report.pdf.")
    if dormant_days < 1 or backup_days < 1:
        raise InvalidInput("--dormant-days and --backup-days must be at least 1")
    opened = open_for_cli(home, passphrase_file)
    try:
        with Progress(
            TextColumn("[bold]reading the ledger"), BarColumn(), MofNCompleteColumn(), console=err
        ) as progress:
            task = progress.add_task("ledger", total=opened.ledger.size)
            evidence = gather(opened, progress=lambda n: progress.advance(task, n))
            progress.update(task, completed=opened.ledger.size)
        report = build(
            evidence,
            origin=opened.ledger.origin,
            thresholds=Thresholds(dormant_days=dormant_days, backup_max_age_days=backup_days),
        )
        index = record_change(opened, EventKind.EXPORT, "compliance.report", "report", report.sha256)
    finally:
        opened.close()
    document = render(report, cast(Format, fmt), ledger_index=index)
    if out_file is None:
        sys.stdout.buffer.write(document)
        sys.stdout.flush()
    else:
        write_private(out_file, document)
    counts = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in report.body["summary"].items())
    err.print(
        f"safeguards: {report.body['overall'].replace('_', ' ')} ({counts}); SHA-256 {report.sha256}, "
        f"ledger entry {index}" + (f"; written to {out_file}" if out_file else ""),
        highlight=False,
        soft_wrap=True,
    )
