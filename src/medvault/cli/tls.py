"""`medvault tls …`: the archive's own HTTPS certificate, its expiry and its renewal."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.table import Table

from medvault.cli._common import HomeOption, PassphraseFile, open_for_cli, out, record_change
from medvault.crypto.tls import certificate_expiry, certificate_names
from medvault.home import CERT_WARNING_DAYS, renew_server_certificate
from medvault.ledger.events import EventKind

app = typer.Typer(help="The HTTPS certificate: status and renewal.", no_args_is_help=True)


@app.command("status")
def tls_status(home: HomeOption = Path("medvault-home"), passphrase_file: PassphraseFile = None) -> None:
    """Show the server and CA certificates: names and how long they stay valid."""
    opened = open_for_cli(home, passphrase_file)
    try:
        tls = opened.settings.tls
        rows = [("server", opened.path(tls.certificate)), ("CA", opened.path(tls.ca_certificate))]
        table = Table(title="TLS certificates")
        for column in ("certificate", "names", "expires", "days left"):
            table.add_column(column)
        now = datetime.now(UTC)
        for what, path in rows:
            pem = path.read_bytes()
            names, ips = certificate_names(pem)
            expiry = certificate_expiry(pem)
            left = (expiry - now).days
            shown = f"[bold red]{left}[/]" if left < CERT_WARNING_DAYS else str(left)
            table.add_row(what, ", ".join(names + ips) or "-", expiry.strftime("%Y-%m-%d"), shown)
    finally:
        opened.close()
    out.print(table)


@app.command("renew")
def tls_renew(home: HomeOption = Path("medvault-home"), passphrase_file: PassphraseFile = None) -> None:
    """Issue a new server certificate from medvault's own CA for the same names (365 days).
    Restart `medvault serve` to use it; clients keep trusting the same CA file."""
    opened = open_for_cli(home, passphrase_file)
    try:
        expiry = renew_server_certificate(opened)
        record_change(opened, EventKind.CONFIG_CHANGE, "tls.renew", "certificate", "server")
    finally:
        opened.close()
    out.print(f"New server certificate, valid until {expiry:%Y-%m-%d}. Restart `medvault serve` to use it.")
