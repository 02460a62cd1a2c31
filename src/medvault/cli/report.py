"""`medvault report …`: reports for privacy officers."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from medvault.cli._common import (
    HomeOption,
    PassphraseFile,
    open_for_cli,
    out,
)

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
