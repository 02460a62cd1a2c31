"""`medvault alerts …`: what a privacy officer does with the monitor's alerts from a terminal —
the same actions as /api/alerts (alerting/officer.py), each ledgered."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.markup import escape
from rich.table import Table

from medvault.alerting.officer import handle_alert, lift_hold
from medvault.cli._common import HomeOption, PassphraseFile, cli_actor, open_for_cli, out
from medvault.index.alerts import DISPOSITIONS, AlertRecord, Hold

app = typer.Typer(help="Alerts of the insider-threat monitor, and the holds it placed.", no_args_is_help=True)

_SUBJECT = "Only those about this user, apikey:NAME or node:AE."
_SEVERITY_STYLE = {"medium": "yellow", "high": "bold red", "critical": "bold white on red"}


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _alert_table(records: list[AlertRecord], title: str) -> Table:
    table = Table(title=title, expand=False)
    for column in ("id", "raised (UTC)", "severity", "score", "subject", "status", "reasons"):
        table.add_column(column, overflow="fold", no_wrap=column in ("id", "raised (UTC)", "severity"))
    for r in records:
        style = _SEVERITY_STYLE.get(r.severity, "")
        table.add_row(
            str(r.id),
            _when(r.raised_at),
            f"[{style}]{r.severity}[/]",
            f"{r.score:.2f}",
            escape(r.subject),
            r.status if r.disposition is None else f"{r.status} ({r.disposition})",
            escape("; ".join(r.reasons)),
        )
    return table


def _hold_table(holds: list[Hold], title: str) -> Table:
    table = Table(title=title)
    for column in ("id", "kind", "subject", "alert", "placed (UTC)", "lifted (UTC)", "lifted by"):
        table.add_column(column, overflow="fold")
    for h in holds:
        table.add_row(
            str(h.id),
            h.kind,
            escape(h.subject),
            str(h.alert_id or ""),
            _when(h.created_at),
            _when(h.lifted_at),
            escape(h.lifted_by or ""),
        )
    return table


@app.command("list")
def alerts_list(
    status: Annotated[str | None, typer.Option(help="open, acknowledged or resolved.")] = None,
    severity: Annotated[str | None, typer.Option(help="medium, high or critical.")] = None,
    subject: Annotated[str | None, typer.Option(help=_SUBJECT)] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many, newest first.")] = 50,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Alerts, newest first, with their reasons."""
    opened = open_for_cli(home, passphrase_file)
    try:
        records = opened.alerts.find(status=status, severity=severity, subject=subject, limit=limit)
        counts = opened.alerts.open_counts()
    finally:
        opened.close()
    out.print(_alert_table(records, "Alerts"))
    out.print(
        "open: " + ", ".join(f"{n} {severity}" for severity, n in counts.items()),
        highlight=False,
    )


@app.command("show")
def alerts_show(
    alert_id: Annotated[int, typer.Argument(min=1, help="The alert's id (from `alerts list`).")],
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """One alert in full: reasons, rule points, features, incident, handling, holds."""
    opened = open_for_cli(home, passphrase_file)
    try:
        r = opened.alerts.get(alert_id)
        holds = [h for h in opened.alerts.holds(active=False) if h.alert_id == alert_id]
    finally:
        opened.close()
    style = _SEVERITY_STYLE.get(r.severity, "")
    out.print(f"[bold]Alert {r.id}[/]  [{style}]{r.severity}[/]  score {r.score:.3f}")
    rows = [
        ("subject", r.subject),
        ("event time (UTC)", _when(r.event_time)),
        ("raised (UTC)", _when(r.raised_at)),
        ("ledger entry", str(r.source_index)),
        ("patient (pseudonym)", r.patient or ""),
        ("incident", r.incident_id or ""),
        ("status", r.status),
        ("disposition", r.disposition or ""),
        ("handled by", f"{r.handled_by or ''} {_when(r.handled_at)}".strip()),
        ("note", r.note or ""),
    ]
    for name, value in rows:
        if value:
            out.print(f"  {name:<20} {escape(value)}", highlight=False)
    out.print("  reasons:")
    for reason in r.reasons:
        out.print(f"    - {escape(reason)}", highlight=False)
    points = Table(title="rule points", show_edge=False)
    points.add_column("rule")
    points.add_column("points", justify="right")
    for rule, weight in sorted(r.points.items(), key=lambda item: -item[1]):
        points.add_row(rule, f"{weight:.2f}")
    out.print(points)
    features = Table(title="features", show_edge=False)
    features.add_column("feature")
    features.add_column("value", justify="right")
    for feature, number in sorted(r.features.items()):
        features.add_row(feature, f"{number:g}")
    out.print(features)
    if holds:
        out.print(_hold_table(holds, "holds placed for this alert"))


def _handle(
    home: Path,
    passphrase_file: Path | None,
    alert_id: int,
    status: Literal["acknowledged", "resolved"],
    disposition: str | None,
    note: str | None,
) -> AlertRecord:
    opened = open_for_cli(home, passphrase_file)
    try:
        return handle_alert(
            alerts=opened.alerts,
            index=opened.archive.index,
            ledger=opened.ledger,
            alert_id=alert_id,
            status=status,
            actor=cli_actor(),
            now=datetime.now(UTC),
            disposition=disposition,
            note=note,
        )
    finally:
        opened.close()


@app.command("acknowledge")
def alerts_acknowledge(
    alert_id: Annotated[int, typer.Argument(min=1, help="The alert's id.")],
    note: Annotated[str | None, typer.Option(help="A note for the record (kept sealed).")] = None,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Take an alert in hand (it stays open until resolved)."""
    record = _handle(home, passphrase_file, alert_id, "acknowledged", None, note)
    out.print(f"Alert {record.id} acknowledged.")


@app.command("resolve")
def alerts_resolve(
    alert_id: Annotated[int, typer.Argument(min=1, help="The alert's id.")],
    disposition: Annotated[
        str, typer.Option(help=f"What it was: {', '.join(DISPOSITIONS)}.", show_default=False)
    ],
    note: Annotated[str | None, typer.Option(help="A note for the record (kept sealed).")] = None,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Resolve an alert. A false positive or a benign explanation makes the same pattern count
    for less from then on (for this user; a false positive also site-wide)."""
    record = _handle(home, passphrase_file, alert_id, "resolved", disposition, note)
    out.print(f"Alert {record.id} resolved as {record.disposition}.")


@app.command("holds")
def alerts_holds(
    all_holds: Annotated[bool, typer.Option("--all", help="Include lifted holds.")] = False,
    subject: Annotated[str | None, typer.Option(help=_SUBJECT)] = None,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Automatic responses in force: locked accounts, step-up sign-ins, held exports, suspended
    API keys and nodes."""
    opened = open_for_cli(home, passphrase_file)
    try:
        holds = opened.alerts.holds(active=not all_holds, subject=subject)
    finally:
        opened.close()
    out.print(_hold_table(holds, "Holds" if all_holds else "Holds in force"))


@app.command("lift")
def alerts_lift(
    hold_id: Annotated[int, typer.Argument(min=1, help="The hold's id (from `alerts holds`).")],
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Lift a hold at once (a running server honours it on the next request)."""
    opened = open_for_cli(home, passphrase_file)
    try:
        hold = lift_hold(
            alerts=opened.alerts,
            index=opened.archive.index,
            ledger=opened.ledger,
            hold_id=hold_id,
            actor=cli_actor(),
            now=datetime.now(UTC),
        )
    finally:
        opened.close()
    out.print(f"Hold {hold.id} ({hold.kind} on {escape(hold.subject)}) lifted.")
