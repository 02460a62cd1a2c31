"""`medvault patient …`: a patient's rights, carried out by the privacy office (GDPR Art. 15, 17;
HIPAA 164.524)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from medvault.cli._common import HomeOption, PassphraseFile, cli_actor, err, open_for_cli, out
from medvault.index.erasure import ErasureRequest

app = typer.Typer(
    help="A patient's rights: a copy of their images and who saw them; erasure where the law allows.",
    no_args_is_help=True,
)


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


@app.command("receipt")
def patient_receipt(
    patient_id: Annotated[str, typer.Option("--patient-id", help="The patient's PatientID.")],
    out_file: Annotated[Path, typer.Option("--out", help="The receipt to write (a new file).")],
    reference: Annotated[str, typer.Option(help="The request's reference (ledgered; never a name).")],
    fmt: Annotated[str, typer.Option("--format", help="json (verifiable) or html (printable).")] = "json",
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """A patient's receipt: every access to their images with its proof in the witnessed ledger,
    checkable offline with `medvault-receipt-verify RECEIPT --policy POLICY` (docs/witness.md)."""
    from medvault.compliance.receipts import patient_receipt as make_receipt
    from medvault.compliance.receipts import receipt_html
    from medvault.errors import InvalidInput
    from medvault.home import write_private
    from medvault.witnessing import witnessed_checkpoint

    if fmt not in ("json", "html"):
        raise InvalidInput("--format is json or html")
    if out_file.exists():
        raise InvalidInput(f"{out_file} exists; choose a new file name")
    opened = open_for_cli(home, passphrase_file)
    try:
        checkpoint = witnessed_checkpoint(opened)
        receipt = make_receipt(
            opened.archive,
            opened.ledger,
            patient_id,
            checkpoint=checkpoint,
            actor=cli_actor(),
            reference=reference,
        )
    finally:
        opened.close()
    write_private(out_file, receipt.json_bytes() if fmt == "json" else receipt_html(receipt).encode("utf-8"))
    out.print(
        f"wrote {out_file}: {receipt.witnessed} accesses with proofs, {receipt.pending} not witnessed yet; "
        "ledgered as patient.receipt",
        highlight=False,
        soft_wrap=True,
    )


erasure = typer.Typer(
    help="Right to erasure (GDPR Art. 17): request, a second person approves, execute, certificate.",
    no_args_is_help=True,
)
app.add_typer(erasure, name="erasure")


def _show(request: ErasureRequest) -> None:
    out.print(
        f"erasure request {request.id} ({request.reference}): {request.state}; requested by "
        f"{request.requested_by}"
        + (f", approved by {request.approved_by}" if request.approved_by else "")
        + (
            f", executed by {request.executed_by}: {request.studies} studies, {request.instances} images"
            if request.executed_by
            else ""
        ),
        highlight=False,
        soft_wrap=True,
    )


@erasure.command("request")
def erasure_request(
    patient_id: Annotated[str, typer.Option("--patient-id", help="The patient's PatientID.")],
    reference: Annotated[str, typer.Option(help="The request's ticket or letter number; never a name.")],
    grounds: Annotated[str, typer.Option(help="Why, e.g. 'Art. 17(1)(b): consent withdrawn' (kept sealed).")],
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Record a patient's erasure request; nothing is erased until a second person approves it."""
    from medvault.compliance.erasure import request_erasure

    opened = open_for_cli(home, passphrase_file)
    try:
        _show(
            request_erasure(
                opened.archive, patient_id, reference=reference, grounds=grounds, actor=cli_actor()
            )
        )
    finally:
        opened.close()


@erasure.command("approve")
def erasure_approve(
    request_id: Annotated[int, typer.Argument(help="The request's number.")],
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Approve as the second person (never the requester); refused while a legal hold or a
    retention minimum applies."""
    from medvault.compliance.erasure import approve_erasure

    opened = open_for_cli(home, passphrase_file)
    try:
        _show(approve_erasure(opened.archive, opened.settings.retention.rules, request_id, actor=cli_actor()))
    finally:
        opened.close()


@erasure.command("execute")
def erasure_execute(
    request_id: Annotated[int, typer.Argument(help="The request's number.")],
    certificate_out: Annotated[
        Path | None, typer.Option("--certificate", help="Also write the certificate of erasure here.")
    ] = None,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Crypto-shred every study of the approved request's patient (checked again for holds and
    retention minimums first)."""
    from medvault.compliance.erasure import certificate, execute_erasure

    opened = open_for_cli(home, passphrase_file)
    try:
        _show(execute_erasure(opened.archive, opened.settings.retention.rules, request_id, actor=cli_actor()))
        if certificate_out is not None:
            _write_certificate(certificate(opened.archive, request_id), certificate_out)
    finally:
        opened.close()


@erasure.command("cancel")
def erasure_cancel(
    request_id: Annotated[int, typer.Argument(help="The request's number.")],
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Withdraw a request that is not executed yet."""
    from medvault.compliance.erasure import cancel_erasure

    opened = open_for_cli(home, passphrase_file)
    try:
        _show(cancel_erasure(opened.archive, request_id, actor=cli_actor()))
    finally:
        opened.close()


@erasure.command("list")
def erasure_list(
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Every erasure request and where it stands."""
    from rich.table import Table

    from medvault.index.erasure import ErasureStore

    opened = open_for_cli(home, passphrase_file)
    try:
        requests = ErasureStore(opened.archive.index).requests()
    finally:
        opened.close()
    table = Table(title=f"erasure requests ({len(requests)})")
    for column in ("id", "reference", "state", "requested", "approved", "executed", "studies"):
        table.add_column(column, overflow="fold")
    for r in requests:
        table.add_row(
            str(r.id),
            r.reference,
            r.state,
            f"{r.requested_by} {r.requested_at:%Y-%m-%d}",
            f"{r.approved_by} {r.approved_at:%Y-%m-%d}" if r.approved_at else "",
            f"{r.executed_by} {r.executed_at:%Y-%m-%d}" if r.executed_at else "",
            "" if r.studies is None else str(r.studies),
        )
    out.print(table)


@erasure.command("certificate")
def erasure_certificate(
    request_id: Annotated[int, typer.Argument(help="The request's number.")],
    out_file: Annotated[Path, typer.Option("--out", help="Write the certificate (JSON) here.")],
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """The certificate of erasure of an executed request: the ledger entries that prove it, each
    with an inclusion proof against a signed checkpoint (checkable offline)."""
    from medvault.compliance.erasure import certificate

    opened = open_for_cli(home, passphrase_file)
    try:
        _write_certificate(certificate(opened.archive, request_id), out_file)
    finally:
        opened.close()


def _write_certificate(doc: dict[str, object], path: Path) -> None:
    import json

    from medvault.home import write_private

    write_private(path, (json.dumps(doc, indent=2) + "\n").encode())
    out.print(f"certificate of erasure written to {path} (SHA-256 {doc['sha256']})", highlight=False)
