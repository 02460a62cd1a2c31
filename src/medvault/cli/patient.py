"""`medvault patient …`: a patient's rights, carried out by the privacy office (GDPR Art. 15, 17;
HIPAA 164.524)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from medvault.cli._common import HomeOption, PassphraseFile, cli_actor, err, open_for_cli, out

app = typer.Typer(help="A patient's rights: a copy of their images and who saw them.", no_args_is_help=True)


@app.command("access")
def patient_access(
    patient_id: Annotated[str, typer.Option("--patient-id", help="The patient's PatientID.")],
    out_file: Annotated[Path, typer.Option("--out", help="The bundle to write (a new .zip file).")],
    reference: Annotated[
        str,
        typer.Option(
            help="The request's reference: a ticket or letter number (letters, digits, . _ - / : #), "
            "ledgered with it; never a name."
        ),
    ],
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Right of access: one ZIP with the patient's images as stored and the accounting of every
    disclosure of them (JSON and CSV), a manifest of SHA-256s and a README for the patient.
    Each study handed over is ledgered. The bundle holds PHI: hand it over securely."""
    from medvault.compliance.access import write_access_bundle

    opened = open_for_cli(home, passphrase_file)
    try:
        with Progress(
            TextColumn("[bold]copying images"), BarColumn(), MofNCompleteColumn(), console=err
        ) as progress:
            task = progress.add_task("images", total=None)
            bundle = write_access_bundle(
                opened.archive,
                patient_id,
                out_file,
                actor=cli_actor(),
                reference=reference,
                progress=lambda n: progress.advance(task, n),
            )
    finally:
        opened.close()
    out.print(
        f"wrote {bundle.path}: {bundle.studies} studies, {bundle.instances} images "
        f"({bundle.bytes / 1e6:.1f} MB), {bundle.disclosures} disclosures; ledgered as patient.access",
        highlight=False,
        soft_wrap=True,
    )
