"""`medvault legal-hold …`: place, list and lift legal holds (a hold blocks every deletion of the
studies it covers — DICOMweb DELETE and retention alike — until lifted), each ledgered with who
and why, as through /api/legal-holds."""

from __future__ import annotations

import json
from datetime import UTC
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from medvault.cli._common import HomeOption, PassphraseFile, cli_actor, open_for_cli, out
from medvault.compliance.holds import lift_legal_hold, place_legal_hold
from medvault.index.legal_holds import LegalHold

app = typer.Typer(
    help="Legal holds: studies that must not be deleted, whatever the rules say.", no_args_is_help=True
)


def _what(h: LegalHold) -> str:
    if h.kind == "study":
        return f"study {h.target}"
    if h.kind == "patient":
        return f"patient {h.target[:16]}… (pseudonym)"
    return f"query {h.query or ''}"


@app.command("place")
def hold_place(
    reason: Annotated[
        str, typer.Option("--reason", help="Who asked for the hold, and why (sealed; ledgered by hash).")
    ],
    patient: Annotated[str | None, typer.Option("--patient", help="Every study of this PatientID.")] = None,
    study: Annotated[str | None, typer.Option("--study", help="This StudyInstanceUID.")] = None,
    query: Annotated[
        str | None,
        typer.Option(
            "--query", help="Studies matching QIDO keys, e.g. 'Modality=CT&StudyDate=20190101-20191231'."
        ),
    ] = None,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Place a legal hold on a patient, a study or a query (also studies stored later)."""
    opened = open_for_cli(home, passphrase_file)
    try:
        hold, covered = place_legal_hold(
            opened.archive, actor=cli_actor(), reason=reason, patient_id=patient, study_uid=study, query=query
        )
    finally:
        opened.close()
    out.print(
        f"legal hold #{hold.id} placed on {escape(_what(hold))}; it covers {covered} stored "
        "stud" + ("y" if covered == 1 else "ies") + " now",
        highlight=False,
        soft_wrap=True,
    )


@app.command("list")
def hold_list(
    all_holds: Annotated[bool, typer.Option("--all", help="Lifted holds too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="As JSON.")] = False,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """The legal holds in force (with --all, lifted ones too), with their reasons."""
    opened = open_for_cli(home, passphrase_file)
    try:
        holds = opened.archive.legal_holds.holds(active=None if all_holds else True)
        held = opened.archive.legal_holds.held_studies()
    finally:
        opened.close()
    counts = {h.id: sum(1 for ids in held.values() if h.id in ids) for h in holds}
    if as_json:
        print(json.dumps([{**h.to_json(), "studies_covered": counts[h.id]} for h in holds], indent=2))
        return
    table = Table(title="legal holds")
    for column in ("id", "on", "reason", "placed", "studies", "lifted"):
        table.add_column(column, overflow="fold")
    for h in holds:
        placed = f"{h.placed_at.astimezone(UTC):%Y-%m-%d %H:%M} by {h.placed_by}"
        lifted = (
            f"{h.lifted_at.astimezone(UTC):%Y-%m-%d %H:%M} by {h.lifted_by}: {h.lift_reason or ''}"
            if h.lifted_at
            else ""
        )
        table.add_row(
            str(h.id), escape(_what(h)), escape(h.reason), escape(placed), str(counts[h.id]), escape(lifted)
        )
    out.print(table)


@app.command("lift")
def hold_lift(
    hold_id: Annotated[int, typer.Argument(min=1, help="The hold's id (from `legal-hold list`).")],
    reason: Annotated[
        str, typer.Option("--reason", help="Why it may be lifted now (sealed; ledgered by hash).")
    ],
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Lift a legal hold: its studies may be deleted again (by retention or by hand)."""
    opened = open_for_cli(home, passphrase_file)
    try:
        hold = lift_legal_hold(opened.archive, hold_id, actor=cli_actor(), reason=reason)
    finally:
        opened.close()
    out.print(f"legal hold #{hold.id} on {escape(_what(hold))} lifted", highlight=False, soft_wrap=True)
