"""`medvault apikeys …`: API keys for scripts, viewers and services."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from medvault.access.policy import ROLES
from medvault.cli._common import (
    HomeOption,
    PassphraseFile,
    open_for_cli,
    out,
    record_change,
)
from medvault.errors import ConfigError
from medvault.ledger.events import EventKind

app = typer.Typer(help="API keys for scripts, viewers and services.", no_args_is_help=True)


@app.command("create")
def apikeys_create(
    name: Annotated[str, typer.Argument(help="A name for the key (letters, digits, - and _).")],
    role: Annotated[str, typer.Option(help=f"One of: {', '.join(ROLES)}.")] = "viewer",
    expires: Annotated[int | None, typer.Option(min=1, help="Days until the key expires.")] = None,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Create an API key; it is printed once, alone on the last line."""
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}", hint=f"Choose one of: {', '.join(ROLES)}.")
    opened = open_for_cli(home, passphrase_file)
    try:
        key = opened.api_keys.create(name, role=role, expires_days=expires)
        record_change(opened, EventKind.APIKEY_CHANGE, "apikey.create", "apikey", name)
    finally:
        opened.close()
    out.print(f"API key {name!r} (role {role}); send it as 'Authorization: Bearer <key>':")
    print(key)


@app.command("list")
def apikeys_list(home: HomeOption = Path("medvault-home"), passphrase_file: PassphraseFile = None) -> None:
    """List API keys (never the keys themselves)."""
    opened = open_for_cli(home, passphrase_file)
    try:
        keys = opened.api_keys.list()
    finally:
        opened.close()
    table = Table(title="API keys")
    for column in ("name", "role", "created", "expires", "revoked"):
        table.add_column(column)
    for k in keys:
        table.add_row(
            k.name,
            k.role,
            k.created_at.strftime("%Y-%m-%d %H:%M"),
            k.expires_at.strftime("%Y-%m-%d") if k.expires_at else "never",
            k.revoked_at.strftime("%Y-%m-%d %H:%M") if k.revoked_at else "",
        )
    out.print(table)


@app.command("revoke")
def apikeys_revoke(
    name: Annotated[str, typer.Argument(help="The key's name.")],
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Revoke an API key at once (a running server refuses it on the next request)."""
    opened = open_for_cli(home, passphrase_file)
    try:
        opened.api_keys.revoke(name)
        record_change(opened, EventKind.APIKEY_CHANGE, "apikey.revoke", "apikey", name)
    finally:
        opened.close()
    out.print(f"API key {name!r} revoked.")
