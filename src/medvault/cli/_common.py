"""What every command group shares: the consoles, --home and --passphrase-file, opening a home,
recording a change in the ledger, and showing one-time secrets."""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from medvault import __version__
from medvault.errors import ConfigError
from medvault.ledger.events import Actor, ActorKind, AuditEvent, EventKind, ObjectRef, Outcome

if TYPE_CHECKING:  # the archive's layers load when a command opens a home, not at start-up
    from medvault.access.totp import Enrolment
    from medvault.config import Settings
    from medvault.home import OpenHome
    from medvault.index.users import NewUser

out = Console()
err = Console(stderr=True)

HomeOption = Annotated[
    Path,
    typer.Option("--home", envvar="MEDVAULT_HOME", help="The home folder (config, sealed keyring, data)."),
]
PassphraseFile = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        help="Read the keyring passphrase from this file (else MEDVAULT_PASSPHRASE, else a prompt).",
    ),
]


def get_passphrase(passphrase_file: Path | None, *, confirm: bool = False) -> str:
    """The keyring passphrase from the environment, a file, or a prompt (in that order)."""
    value = os.environ.get("MEDVAULT_PASSPHRASE")
    if value:
        return value
    if passphrase_file is not None:
        try:
            return passphrase_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the passphrase file {passphrase_file}: {exc.strerror}") from None
    if sys.stdin.isatty():
        text: str = typer.prompt("Keyring passphrase", hide_input=True, confirmation_prompt=confirm)
        return text
    raise ConfigError(
        "no passphrase given", hint="Set MEDVAULT_PASSPHRASE, pass --passphrase-file, or run in a terminal."
    )


def open_for_cli(home: Path, passphrase_file: Path | None) -> OpenHome:
    from medvault.home import open_home

    return open_home(home, get_passphrase(passphrase_file))


def show_new_user(created: NewUser, home: Path) -> None:
    """The one-time secrets of a new account: shown once, never stored in clear."""
    out.print(f"User [bold]{created.user.name}[/] (roles: {', '.join(sorted(created.user.roles))})")
    if created.password:
        out.print(
            f"  one-time password (must be changed at first sign-in): {created.password}", highlight=False
        )
    if created.enrolment is not None:
        show_enrolment(created.enrolment, home, created.user.name)


def show_enrolment(enrolment: Enrolment, home: Path, name: str) -> None:
    from medvault.home import write_private

    out.print("  scan this with an authenticator app (TOTP):")
    print(enrolment.qr_text)
    out.print(f"  or enter: {enrolment.uri}", highlight=False, soft_wrap=True)
    qr = home / "logs" / f"totp-{name}.png"
    write_private(qr, enrolment.qr_png)
    out.print(f"  QR code image: {qr} (delete it after enrolling)")
    out.print("  recovery codes (each works once; keep them offline):")
    for code in enrolment.recovery_codes:
        print(f"    {code}")


def announce(root: Path, settings: Settings, host: str, port: int, workers: int) -> None:
    from medvault.crypto.tls import certificate_expiry
    from medvault.home import CERT_WARNING_DAYS

    if settings.server.plain_http:
        err.print(
            "[bold red]WARNING[/]: plain HTTP is on (\\[server] plain_http = true). Only run this behind a "
            "TLS-terminating proxy on the same host."
        )
    else:
        expiry = certificate_expiry((root / settings.tls.certificate).read_bytes())
        left = (expiry - datetime.now(UTC)).days
        if left < CERT_WARNING_DAYS:
            renew = "`medvault tls renew`" if settings.tls.own_ca else "the site's PKI"
            err.print(
                f"[bold red]WARNING[/]: the server certificate expires on {expiry:%Y-%m-%d} "
                f"({left} days); renew it with {renew} and restart."
            )
    scheme = "http" if settings.server.plain_http else "https"
    shown = f"[{host}]" if ":" in host else host
    err.print(
        f"medvault {__version__} serving {scheme}://{shown}:{port}/dicomweb with {workers} worker(s) "
        f"(CA: {root / settings.tls.ca_certificate})"
    )


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def cli_actor() -> Actor:
    """Who acts from the command line: the operating-system account that held the passphrase."""
    return Actor(kind=ActorKind.USER, id=f"cli:{getpass.getuser()}", auth="home-passphrase")


def record_change(opened: OpenHome, kind: EventKind, action: str, obj_type: str, obj_id: str) -> int:
    """Ledger a change made from the command line (durable before the command reports success);
    returns its ledger index. The actor is the operating-system account that held the home's
    passphrase."""
    return opened.ledger.append(
        AuditEvent(
            kind=kind,
            time=datetime.now(UTC),
            actor=cli_actor(),
            action=action,
            outcome=Outcome.SUCCESS,
            object=ObjectRef(type=obj_type, id=obj_id),
        )
    )


def user_action(
    home: Path,
    passphrase_file: Path | None,
    action: Callable[[OpenHome], str],
    change: tuple[EventKind, str, str, str] | None = None,
) -> None:
    """Run one change on an opened home, ledger it as ``change`` (kind, action, type, id), report."""
    opened = open_for_cli(home, passphrase_file)
    try:
        message = action(opened)
        if change is not None:
            record_change(opened, *change)
        out.print(message, highlight=False)
    finally:
        opened.close()


def check_objects(opened: OpenHome) -> list[str]:
    """Check every stored object against its store event in the ledger (decrypted and hashed),
    with a progress bar; print the problems and the count. Returns the problems."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from medvault.reports import verify_objects

    total = opened.archive.index.count_instances()
    with Progress(
        TextColumn("[bold]checking objects"), BarColumn(), MofNCompleteColumn(), console=err
    ) as bar:
        task = bar.add_task("objects", total=total)
        problems = verify_objects(opened.archive, progress=lambda n: bar.advance(task, n))
    for problem in problems:
        out.print(f"  - {problem}", highlight=False, soft_wrap=True)
    out.print(f"objects: {total - len(problems)} of {total} match their store events", highlight=False)
    return problems
