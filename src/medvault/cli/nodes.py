"""`medvault nodes …`: DICOM nodes allowed over mutual TLS."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from medvault.cli._common import (
    HomeOption,
    PassphraseFile,
    open_for_cli,
    out,
    record_change,
    user_action,
)
from medvault.home import OpenHome
from medvault.ledger.events import EventKind

app = typer.Typer(help="DICOM nodes (modalities, PACS peers) allowed over mutual TLS.", no_args_is_help=True)


@app.command("add")
def nodes_add(
    name: Annotated[str, typer.Argument(help="A name for the node, e.g. ct-room-3.")],
    ae_title: Annotated[str, typer.Option("--ae-title", help="The node's calling AE title.")],
    host: Annotated[str, typer.Option(help="The node's address (for C-MOVE destinations and plain mode).")],
    port: Annotated[int, typer.Option(min=1, max=65535, help="The node's DIMSE port (C-MOVE destination).")],
    permissions: Annotated[str, typer.Option(help="Comma-separated: store, find, get, move.")],
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for the issued NAME.crt and NAME.key.")
    ] = Path("."),
    certificate: Annotated[
        Path | None, typer.Option(help="Register this site-issued certificate (PEM) instead of issuing one.")
    ] = None,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Register a node: issues a client certificate from medvault's CA (or pins the site's)."""
    from medvault.dimse import IssuedNode, ca_material, node_store, write_node_credentials

    opened = open_for_cli(home, passphrase_file)
    try:
        nodes = node_store(opened)
        perms = [p.strip() for p in permissions.split(",") if p.strip()]
        change = (EventKind.NODE_CHANGE, "node.add", "node", name)
        if certificate is not None:
            nodes.add(name, ae_title=ae_title, host=host, port=port, permissions=perms,
                             certificate_pem=certificate.read_bytes())  # fmt: skip
            record_change(opened, *change)
            out.print(f"Node {name} registered (AE {ae_title}); certificate pinned by fingerprint.")
            return
        issued = nodes.add(
            name, ae_title=ae_title, host=host, port=port, permissions=perms, ca=ca_material(opened)
        )
        assert isinstance(issued, IssuedNode)
        cert_path, key_path = write_node_credentials(issued, out_dir)
        record_change(opened, *change)
        out.print(f"Node {name} (AE {ae_title}, permissions {', '.join(sorted(perms))}) registered.")
        out.print(f"  certificate : {cert_path}", highlight=False, soft_wrap=True)
        out.print(
            f"  private key : {key_path} (install on the node, then delete here)",
            highlight=False,
            soft_wrap=True,
        )
        out.print(
            f"  CA to trust : {opened.path(opened.settings.tls.ca_certificate)}",
            highlight=False,
            soft_wrap=True,
        )
        out.print(f"  fingerprint : {issued.node.fingerprint_hex}", highlight=False, soft_wrap=True)
    finally:
        opened.close()


@app.command("list")
def nodes_list(home: HomeOption = Path("medvault-home"), passphrase_file: PassphraseFile = None) -> None:
    """List registered nodes."""
    from medvault.dimse import node_store

    opened = open_for_cli(home, passphrase_file)
    try:
        nodes = node_store(opened).list()
    finally:
        opened.close()
    table = Table(title="DICOM nodes")
    for column in ("name", "AE title", "address", "permissions", "state"):
        table.add_column(column)
    for n in nodes:
        table.add_row(
            n.name,
            n.ae_title,
            f"{n.host}:{n.port}",
            ", ".join(sorted(n.permissions)),
            "revoked" if n.revoked else "active",
        )
    out.print(table)


@app.command("revoke")
def nodes_revoke(
    name: Annotated[str, typer.Argument(help="The node's name.")],
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Revoke a node; its next connection is refused (no restart needed)."""
    from medvault.dimse import node_store

    def act(o: OpenHome) -> str:
        node_store(o).revoke(name)
        return f"node {name} revoked"

    user_action(home, passphrase_file, act, (EventKind.NODE_CHANGE, "node.revoke", "node", name))
