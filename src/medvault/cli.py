"""The ``medvault`` command line (typer). Every command has --help; long work shows progress.

Errors derived from ``MedvaultError`` print their diagnostics (what went wrong, what to do) and
exit 1 — never a traceback.
"""

from __future__ import annotations

import getpass
import os
import secrets
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from medvault import __version__
from medvault.access.policy import ROLES
from medvault.access.totp import Enrolment
from medvault.api.admin import grant_kind, grant_value, referring_identity, roles_from
from medvault.archive import Archive, StoreOutcome
from medvault.config import Settings, load_settings
from medvault.errors import ConfigError, MedvaultError
from medvault.home import OpenHome, init_home, open_home
from medvault.index.users import NewUser
from medvault.ledger.events import Actor, ActorKind, AuditEvent, EventKind, ObjectRef, Outcome

app = typer.Typer(
    name="medvault",
    help="A secure archive for medical images: DICOMweb over HTTPS, everything encrypted at rest.",
    no_args_is_help=True,
    add_completion=False,
)
users_app = typer.Typer(help="People: accounts, roles, scopes, MFA, training.", no_args_is_help=True)
keys_app = typer.Typer(help="Key-encryption keys: status and online rotation.", no_args_is_help=True)
ledger_app = typer.Typer(
    help="The tamper-evident audit ledger: verify, key, checkpoint.", no_args_is_help=True
)
report_app = typer.Typer(help="Reports for privacy officers.", no_args_is_help=True)
nodes_app = typer.Typer(
    help="DICOM nodes (modalities, PACS peers) allowed over mutual TLS.", no_args_is_help=True
)
apikeys_app = typer.Typer(help="API keys for scripts, viewers and services.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")
app.add_typer(apikeys_app, name="apikeys")
app.add_typer(nodes_app, name="nodes")
app.add_typer(ledger_app, name="ledger")
app.add_typer(report_app, name="report")

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


def _open(home: Path, passphrase_file: Path | None) -> OpenHome:
    return open_home(home, get_passphrase(passphrase_file))


@app.command()
def init(
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
    generate_passphrase: Annotated[
        bool, typer.Option("--generate-passphrase", help="Make a random passphrase and print it once.")
    ] = False,
    hostname: Annotated[
        list[str] | None,
        typer.Option("--hostname", help="Extra DNS name for the server certificate (repeatable)."),
    ] = None,
    ip: Annotated[
        list[str] | None, typer.Option("--ip", help="Extra IP address for the certificate (repeatable).")
    ] = None,
) -> None:
    """Create a home folder: sealed keyring, own CA and HTTPS certificate, empty index, and the first
    administrator (its one-time password and TOTP enrolment are shown once).

    The administrator manages users, keys and nodes and sees no images; give people clinical roles
    with `medvault users add`, and scripts an API key with `medvault apikeys create`.
    """
    if generate_passphrase:
        passphrase = secrets.token_urlsafe(24)
        err.print(
            "[bold]Generated keyring passphrase[/] "
            "(store it in a password safe; without it the home is unreadable):"
        )
        err.print(passphrase, highlight=False)
    else:
        passphrase = get_passphrase(passphrase_file, confirm=True)
    created = init_home(home, passphrase, hostnames=hostname or (), ip_addresses=ip or ())
    out.print(f"Created {home} (CA to trust: {home / 'tls' / 'ca.crt'}).")
    _show_new_user(created, home)


def _show_new_user(created: NewUser, home: Path) -> None:
    """The one-time secrets of a new account: shown once, never stored in clear."""
    out.print(f"User [bold]{created.user.name}[/] (roles: {', '.join(sorted(created.user.roles))})")
    if created.password:
        out.print(
            f"  one-time password (must be changed at first sign-in): {created.password}", highlight=False
        )
    if created.enrolment is not None:
        _show_enrolment(created.enrolment, home, created.user.name)


def _show_enrolment(enrolment: Enrolment, home: Path, name: str) -> None:
    out.print("  scan this with an authenticator app (TOTP):")
    print(enrolment.qr_text)
    out.print(f"  or enter: {enrolment.uri}", highlight=False, soft_wrap=True)
    qr = home / "logs" / f"totp-{name}.png"
    fd = os.open(qr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(enrolment.qr_png)
    out.print(f"  QR code image: {qr} (delete it after enrolling)")
    out.print("  recovery codes (each works once; keep them offline):")
    for code in enrolment.recovery_codes:
        print(f"    {code}")


def _announce(root: Path, settings: Settings, host: str, port: int, workers: int) -> None:
    if settings.server.plain_http:
        err.print(
            "[bold red]WARNING[/]: plain HTTP is on (\\[server] plain_http = true). Only run this behind a "
            "TLS-terminating proxy on the same host."
        )
    scheme = "http" if settings.server.plain_http else "https"
    shown = f"[{host}]" if ":" in host else host
    err.print(
        f"medvault {__version__} serving {scheme}://{shown}:{port}/dicomweb with {workers} worker(s) "
        f"(CA: {root / settings.tls.ca_certificate})"
    )


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


@app.command()
def serve(
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default from medvault.toml).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from medvault.toml, 8443).")] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="Worker processes (default: [server] workers, else one per core)."),
    ] = None,
) -> None:
    """Serve DICOMweb over HTTPS from a home folder."""
    from medvault.api.server import serve as serve_forever

    settings = load_settings(home)
    host = host or settings.server.host
    port = port or settings.server.port
    count = workers or settings.server.workers or default_workers()
    serve_forever(
        home,
        get_passphrase(passphrase_file),
        host=host,
        port=port,
        workers=count,
        on_listening=lambda: _announce(home, settings, host, port, count),
    )


# -- import ----------------------------------------------------------------------------------------


@dataclass
class ImportSummary:
    stored: int = 0
    already_present: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)


def _files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            yield path
        else:
            raise ConfigError(f"{path} does not exist")


def import_files(
    archive: Archive, files: list[Path], *, workers: int = 2, batch: int = 16, show_progress: bool = True
) -> ImportSummary:
    """Store files in parallel batches; idempotent (already stored files are counted, not redone)."""
    summary = ImportSummary()
    batches = [files[i : i + batch] for i in range(0, len(files), batch)]

    def store(chunk: list[Path]) -> list[tuple[Path, StoreOutcome]]:
        return list(zip(chunk, archive.store_batch([p.read_bytes() for p in chunk]), strict=True))

    progress = Progress(
        TextColumn("[bold]importing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not show_progress,
    )
    with progress, ThreadPoolExecutor(max_workers=workers) as pool:
        task = progress.add_task("import", total=len(files))
        for results in pool.map(store, batches):
            for path, outcome in results:
                if outcome.status == "stored":
                    summary.stored += 1
                elif outcome.status == "already_present":
                    summary.already_present += 1
                else:
                    summary.refused.append((str(path), outcome.error.message if outcome.error else "refused"))
            progress.advance(task, len(results))
    return summary


@app.command("import")
def import_command(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders (searched recursively).")],
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
    workers: Annotated[int, typer.Option(min=1, max=32, help="Parallel workers.")] = 2,
) -> None:
    """Import DICOM files into the archive (encrypting each); safe to run again."""
    opened = _open(home, passphrase_file)
    try:
        files = list(_files(paths))
        summary = import_files(opened.archive, files, workers=workers)
    finally:
        opened.close()
    table = Table(title="import summary")
    table.add_column("outcome")
    table.add_column("files", justify="right")
    table.add_row("stored", str(summary.stored))
    table.add_row("already present", str(summary.already_present))
    table.add_row("refused", str(len(summary.refused)))
    out.print(table)
    for path, reason in summary.refused:
        out.print(f"  refused {escape(str(path))}: {escape(reason)}", highlight=False, soft_wrap=True)
    if summary.refused:
        raise typer.Exit(2)


# -- keys ------------------------------------------------------------------------------------------


@keys_app.command("status")
def keys_status(home: HomeOption = Path("medvault-home"), passphrase_file: PassphraseFile = None) -> None:
    """Show the KEK versions and how many objects each one wraps."""
    opened = _open(home, passphrase_file)
    try:
        status = opened.archive.key_status()
    finally:
        opened.close()
    table = Table(title="key-encryption keys")
    table.add_column("KEK")
    table.add_column("current")
    table.add_column("objects", justify="right")
    for kek in status.known_keks:
        table.add_row(
            kek, "yes" if kek == status.current_kek else "", str(status.objects_per_kek.get(kek, 0))
        )
    out.print(table)


@keys_app.command("rotate")
def keys_rotate(home: HomeOption = Path("medvault-home"), passphrase_file: PassphraseFile = None) -> None:
    """Create a new KEK and rewrap every data key under it; objects are not rewritten.

    Safe while `medvault serve` runs: the server picks up the new KEK from the keyring file.
    """
    opened = _open(home, passphrase_file)
    try:
        version = opened.keyring_file.rotate()
        current = f"local-{version}"
        total_old = sum(n for kek, n in opened.archive.index.key_counts().items() if kek != current)
        with Progress(
            TextColumn("[bold]rewrapping"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
        ) as progress:
            task = progress.add_task("rewrap", total=total_old)
            done = opened.archive.rewrap_all(progress=lambda n: progress.advance(task, n))
        _record_change(opened, EventKind.KEY_ROTATION, "keys.rotate", "kek", current)
    finally:
        opened.close()
    out.print(f"New KEK local-{version} is current; {done} data keys rewrapped.")


# -- users -----------------------------------------------------------------------------------------

NameArg = Annotated[str, typer.Argument(help="The user name.")]


@users_app.command("add")
def users_add(
    name: NameArg,
    roles: Annotated[str, typer.Option(help="Comma-separated roles, e.g. radiologist or auditor.")],
    training: Annotated[str | None, typer.Option(help="Privacy training valid until YYYY-MM-DD.")] = None,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Add a person: prints a one-time password, the TOTP enrolment and recovery codes once."""
    opened = _open(home, passphrase_file)
    try:
        created = opened.users.add_user(
            name,
            roles=roles_from(roles),
            now=datetime.now(UTC),
            training_expires=date.fromisoformat(training) if training else None,
        )
        _record_change(opened, EventKind.USER_CHANGE, "user.add", "user", name)
        _show_new_user(created, home)
    finally:
        opened.close()


@users_app.command("list")
def users_list(home: HomeOption = Path("medvault-home"), passphrase_file: PassphraseFile = None) -> None:
    """List accounts (never secrets)."""
    opened = _open(home, passphrase_file)
    try:
        users = opened.users.list()
    finally:
        opened.close()
    table = Table(title="users")
    for column in ("name", "roles", "MFA", "training until", "state"):
        table.add_column(column)
    for u in users:
        table.add_row(
            u.name,
            ", ".join(sorted(u.roles)),
            "enrolled" if u.mfa_enrolled else "not enrolled",
            u.training_expires.isoformat() if u.training_expires else "none",
            "disabled" if u.disabled else "active",
        )
    out.print(table)


def _record_change(opened: OpenHome, kind: EventKind, action: str, obj_type: str, obj_id: str) -> None:
    """Ledger a change made from the command line (durable before the command reports success).
    The actor is the operating-system account that held the home's passphrase."""
    opened.ledger.append(
        AuditEvent(
            kind=kind,
            time=datetime.now(UTC),
            actor=Actor(kind=ActorKind.USER, id=f"cli:{getpass.getuser()}", auth="home-passphrase"),
            action=action,
            outcome=Outcome.SUCCESS,
            object=ObjectRef(type=obj_type, id=obj_id),
        )
    )


def _user_action(
    home: Path,
    passphrase_file: Path | None,
    action: Callable[[OpenHome], str],
    change: tuple[EventKind, str, str, str] | None = None,
) -> None:
    """Run one change on an opened home, ledger it as ``change`` (kind, action, type, id), report."""
    opened = _open(home, passphrase_file)
    try:
        message = action(opened)
        if change is not None:
            _record_change(opened, *change)
        out.print(message, highlight=False)
    finally:
        opened.close()


@users_app.command("disable")
def users_disable(
    name: NameArg, home: HomeOption = Path("medvault-home"), passphrase_file: PassphraseFile = None
) -> None:
    """Disable an account; its sessions end at once."""
    _user_action(
        home,
        passphrase_file,
        lambda o: f"{o.users.disable(name, now=datetime.now(UTC)).name} disabled",
        (EventKind.USER_CHANGE, "user.disable", "user", name),
    )


@users_app.command("enable")
def users_enable(
    name: NameArg, home: HomeOption = Path("medvault-home"), passphrase_file: PassphraseFile = None
) -> None:
    """Enable a disabled account."""
    _user_action(
        home,
        passphrase_file,
        lambda o: f"{o.users.enable(name).name} enabled",
        (EventKind.USER_CHANGE, "user.enable", "user", name),
    )


@users_app.command("reset-mfa")
def users_reset_mfa(
    name: NameArg, home: HomeOption = Path("medvault-home"), passphrase_file: PassphraseFile = None
) -> None:
    """New TOTP secret and recovery codes (shown once); ends the user's sessions."""
    opened = _open(home, passphrase_file)
    try:
        enrolment = opened.users.reset_mfa(name, now=datetime.now(UTC))
        _record_change(opened, EventKind.USER_CHANGE, "user.reset_mfa", "user", name)
        _show_enrolment(enrolment, home, name)
    finally:
        opened.close()


@users_app.command("set-roles")
def users_set_roles(
    name: NameArg,
    roles: Annotated[str, typer.Argument(help="Comma-separated roles.")],
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Replace a user's roles."""
    _user_action(
        home,
        passphrase_file,
        lambda o: f"{name}: {', '.join(sorted(o.users.set_roles(name, roles_from(roles)).roles))}",
        (EventKind.ROLE_CHANGE, "user.set_roles", "user", name),
    )


@users_app.command("grant")
def users_grant(
    name: NameArg,
    kind: Annotated[str, typer.Argument(help="patient (by PatientID), study (UID), department, or site.")],
    value: Annotated[str, typer.Argument(help="The PatientID, StudyInstanceUID, department name, or *.")],
    days: Annotated[int | None, typer.Option(min=1, help="The grant expires after this many days.")] = None,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Give a user access to a patient's studies, one study, or a department's studies."""

    def act(o: OpenHome) -> str:
        k = grant_kind(kind)
        expires = datetime.now(UTC) + timedelta(days=days) if days else None
        o.users.grant(
            name,
            kind=k,
            value=grant_value(o.archive.index, k, value),
            now=datetime.now(UTC),
            expires_at=expires,
        )
        return f"granted {k} access to {name}"

    _user_action(home, passphrase_file, act, (EventKind.GRANT_CHANGE, f"grant.add.{kind}", "user", name))


@users_app.command("revoke")
def users_revoke(
    name: NameArg,
    kind: Annotated[str, typer.Argument(help="patient, study, department or site.")],
    value: Annotated[str, typer.Argument(help="As given to `grant`.")],
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Take a grant back."""
    _user_action(
        home,
        passphrase_file,
        lambda o: (
            f"{o.users.revoke_grant(name, kind=kind, value=grant_value(o.archive.index, kind, value))} gone"
        ),
        (EventKind.GRANT_CHANGE, f"grant.revoke.{kind}", "user", name),
    )


@users_app.command("training")
def users_training(
    name: NameArg,
    until: Annotated[str, typer.Argument(help="Privacy training valid until YYYY-MM-DD.")],
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Record renewed privacy training (without it, access to PHI is refused)."""
    _user_action(
        home,
        passphrase_file,
        lambda o: (
            f"{name}: training until {o.users.set_training(name, date.fromisoformat(until)).training_expires}"
        ),
        (EventKind.USER_CHANGE, "user.training", "user", name),
    )


@users_app.command("referring")
def users_referring(
    name: NameArg,
    physician_name: Annotated[str, typer.Argument(help="How studies name this person, e.g. DOE^JOHN.")],
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Link a user to the referring-physician name in studies (they then see those studies)."""
    _user_action(
        home,
        passphrase_file,
        lambda o: (
            f"{o.users.set_referring_id(name, referring_identity(o.archive.index, physician_name)).name} ok"
        ),
        (EventKind.USER_CHANGE, "user.referring", "user", name),
    )


# -- ledger and reports ----------------------------------------------------------------------------


@ledger_app.command("verify")
def ledger_verify(
    trusted_checkpoint: Annotated[
        Path | None,
        typer.Option(help="A checkpoint saved earlier: the log must still contain it (no rollback)."),
    ] = None,
    objects: Annotated[
        bool, typer.Option(help="Also check every stored object against its store event.")
    ] = True,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Recompute the Merkle tree from storage, check every signed checkpoint and their consistency,
    name the first altered/removed/reordered/inserted entry, and check every stored image."""
    from medvault.ledger.verify import verify_ledger
    from medvault.reports import verify_objects

    opened = _open(home, passphrase_file)
    try:
        opened.ledger.flush()
        report = verify_ledger(
            opened.path(opened.settings.ledger.database),
            verifier_key=opened.ledger.verifier_key_text(),
            trusted_checkpoint=trusted_checkpoint.read_bytes() if trusted_checkpoint else None,
        )
        out.print(report.summary(), highlight=False, soft_wrap=True)
        problems: list[str] = []
        if objects:
            total = opened.archive.index.count_instances()
            with Progress(
                TextColumn("[bold]checking objects"), BarColumn(), MofNCompleteColumn(), console=err
            ) as progress:
                task = progress.add_task("objects", total=total)
                problems = verify_objects(opened.archive, progress=lambda n: progress.advance(task, n))
            for problem in problems:
                out.print(f"  - {problem}", highlight=False, soft_wrap=True)
            out.print(
                f"objects: {total - len(problems)} of {total} match their store events", highlight=False
            )
    finally:
        opened.close()
    if not report.ok or problems:
        raise typer.Exit(1)


@ledger_app.command("export")
def ledger_export(
    to: Annotated[
        str,
        typer.Option(
            "--to", help="A file, '-' for stdout, syslog+tls://HOST[:PORT], or syslog+tcp://HOST:PORT."
        ),
    ],
    fmt: Annotated[
        str, typer.Option("--format", help="jsonl (the exact leaves) or atna (IHE ATNA XML).")
    ] = "jsonl",
    since_index: Annotated[int, typer.Option(min=0, help="First ledger index to send (resume).")] = 0,
    ca_file: Annotated[Path | None, typer.Option(help="CA of the syslog collector (TLS).")] = None,
    client_cert: Annotated[Path | None, typer.Option(help="Client certificate for mutual TLS.")] = None,
    client_key: Annotated[Path | None, typer.Option(help="Its private key.")] = None,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Send ledger events to a SIEM: IHE ATNA over syslog (RFC 5424 over TLS, RFC 5425), or JSON Lines."""
    from medvault.ledger.export import export_ledger

    if fmt not in ("jsonl", "atna"):
        raise ConfigError("--format is jsonl or atna")
    opened = _open(home, passphrase_file)
    try:
        opened.ledger.flush()
        total = max(opened.ledger.size - since_index, 0)
        with Progress(
            TextColumn("[bold]exporting"), BarColumn(), MofNCompleteColumn(), console=err
        ) as progress:
            task = progress.add_task("export", total=total)
            result = export_ledger(
                opened,
                fmt="atna" if fmt == "atna" else "jsonl",
                destination=to,
                since_index=since_index,
                ca_file=ca_file,
                client_cert=client_cert,
                client_key=client_key,
                progress=lambda n: progress.advance(task, n),
                actor=_cli_actor(),
            )
    finally:
        opened.close()
    err.print(f"{result.count} events exported; resume with --since-index {result.next_index}")


@ledger_app.command("key")
def ledger_key(home: HomeOption = Path("medvault-home"), passphrase_file: PassphraseFile = None) -> None:
    """Print the note verifier key auditors use to check checkpoints offline."""
    _user_action(home, passphrase_file, lambda o: o.ledger.verifier_key_text())


@ledger_app.command("checkpoint")
def ledger_checkpoint(
    home: HomeOption = Path("medvault-home"), passphrase_file: PassphraseFile = None
) -> None:
    """Sign and print a checkpoint for the current log (keep it: `verify --trusted-checkpoint`)."""
    opened = _open(home, passphrase_file)
    try:
        opened.ledger.flush()
        sys.stdout.write(opened.ledger.checkpoint().decode())
    finally:
        opened.close()


@report_app.command("disclosures")
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

    opened = _open(home, passphrase_file)
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
    for column in ("time", "who", "how", "what", "study", "outcome", "why"):
        table.add_column(column)
    for r in rows:
        who = f"{r.actor} ({r.actor_kind}{', ' + r.address if r.address else ''})"
        table.add_row(
            r.time[:19],
            who,
            r.auth or "",
            f"{r.kind} {r.action}",
            r.study_uid or "",
            r.outcome,
            r.reason or "",
        )
    out.print(table)


# -- research: de-identification and exports ------------------------------------------------------


def _cli_actor() -> Actor:
    return Actor(kind=ActorKind.USER, id=f"cli:{getpass.getuser()}", auth="home-passphrase")


OptionList = Annotated[
    list[str] | None,
    typer.Option(
        "--option", help="A PS3.15 option, e.g. retain-uids, clean-descriptors, modified-dates (repeatable)."
    ),
]


@app.command()
def deid(
    src: Annotated[Path, typer.Argument(help="A DICOM file or folder to de-identify.")],
    dst: Annotated[Path, typer.Argument(help="The output folder (files named by their new SOP UID).")],
    project: Annotated[
        str, typer.Option(help="Export project: UIDs and pseudonyms are consistent within it.")
    ],
    profile: Annotated[str, typer.Option(help="The confidentiality profile (PS3.15 Annex E).")] = "basic",
    option: OptionList = None,
    workers: Annotated[int, typer.Option(min=1, max=32, help="Parallel processes.")] = 2,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """De-identify files with the Basic Application Level Confidentiality Profile and its options.
    The project key comes from the home's keyring, so a project maps UIDs the same way every run."""
    from medvault.dicom.deid import DeidConfig, deidentify_tree
    from medvault.export import project_key

    if profile != "basic":
        raise ConfigError(
            f"unknown profile {profile!r}", hint="The profile is `basic`; add --option for its options."
        )
    config = DeidConfig.from_options(option or [])
    opened = _open(home, passphrase_file)
    try:
        key = project_key(opened, project)
        files = list(_files([src]))
        with Progress(
            TextColumn("[bold]de-identifying"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
        ) as progress:
            task = progress.add_task("deid", total=len(files))
            summary = deidentify_tree(
                src,
                dst,
                config=config,
                project_key=key,
                workers=workers,
                progress=lambda _o: progress.advance(task),
            )
        _record_change(opened, EventKind.DEIDENTIFY, "deid.files", "project", project)
    finally:
        opened.close()
    table = Table(title="de-identification summary")
    table.add_column("outcome")
    table.add_column("files", justify="right")
    statuses = sorted({o.status for o in summary.outcomes})
    for status in statuses:
        table.add_row(status, str(summary.count(status)))
    out.print(table)
    for o in summary.outcomes:
        if o.status not in ("written", "duplicate"):
            out.print(
                f"  {o.status} {escape(str(o.source))}: {escape(o.reason or '')}",
                highlight=False,
                soft_wrap=True,
            )
    if summary.count("failed"):
        raise typer.Exit(2)


@app.command("export")
def export_command(
    query: Annotated[
        list[str], typer.Option("--query", help="QIDO-style KEY=VALUE to select studies (repeatable).")
    ],
    project: Annotated[str, typer.Option(help="Export project name (consistent pseudonyms and UIDs).")],
    option: OptionList = None,
    to: Annotated[
        Path | None, typer.Option("--to", help="Write the de-identified files into this folder.")
    ] = None,
    to_stow: Annotated[
        str | None, typer.Option("--to-stow", help="STOW-RS them to this https DICOMweb URL.")
    ] = None,
    stow_token_file: Annotated[
        Path | None, typer.Option(help="File holding the STOW target's bearer token.")
    ] = None,
    stow_ca: Annotated[Path | None, typer.Option(help="CA file for the STOW target.")] = None,
    keep_map: Annotated[
        bool, typer.Option("--keep-map", help="Keep the re-identification map (encrypted, CLI-only to read).")
    ] = False,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Export studies from the archive, de-identified, to a folder or another archive (ledgered)."""
    from medvault.export import export_studies

    params: list[tuple[str, str]] = []
    for item in query:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--query {item!r} must look like KEY=VALUE")
        params.append((key, value))
    opened = _open(home, passphrase_file)
    try:
        with Progress(
            TextColumn("[bold]exporting"), BarColumn(), MofNCompleteColumn(), console=err
        ) as progress:
            task = progress.add_task("export", total=None)
            summary = export_studies(
                opened,
                query_params=params,
                project=project,
                options=option or [],
                to_dir=to,
                to_stow=to_stow,
                stow_token=stow_token_file.read_text().strip() if stow_token_file else None,
                stow_ca=stow_ca,
                keep_map=keep_map,
                actor=_cli_actor(),
                progress=lambda p: progress.update(task, completed=p.done, total=p.total),
            )
    finally:
        opened.close()
    out.print(
        f"export {summary.export_id}: {len(summary.studies)} studies, {summary.count('exported')} instances "
        f"exported, {summary.count('excluded')} excluded, {summary.count('failed')} failed",
        highlight=False,
    )
    for study in summary.studies:
        for o in study.outcomes:
            if o.reason:
                out.print(
                    f"  {o.status} {o.sop_uid}: {escape(str(o.reason))}", highlight=False, soft_wrap=True
                )
    if summary.count("failed"):
        raise typer.Exit(2)


@app.command("deid-map")
def deid_map(
    project: Annotated[str, typer.Argument(help="The export project.")],
    export_id: Annotated[str | None, typer.Option(help="One export of the project (default: all).")] = None,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Print a project's re-identification map (PHI!). Needs the home's passphrase; ledgered."""
    from medvault.export import read_reid_map, reid_map_json

    opened = _open(home, passphrase_file)
    try:
        print(reid_map_json(read_reid_map(opened, project, actor=_cli_actor(), export_id=export_id)))
    finally:
        opened.close()


# -- DICOM nodes -----------------------------------------------------------------------------------


@nodes_app.command("add")
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

    opened = _open(home, passphrase_file)
    try:
        nodes = node_store(opened)
        perms = [p.strip() for p in permissions.split(",") if p.strip()]
        change = (EventKind.NODE_CHANGE, "node.add", "node", name)
        if certificate is not None:
            nodes.add(name, ae_title=ae_title, host=host, port=port, permissions=perms,
                             certificate_pem=certificate.read_bytes())  # fmt: skip
            _record_change(opened, *change)
            out.print(f"Node {name} registered (AE {ae_title}); certificate pinned by fingerprint.")
            return
        issued = nodes.add(
            name, ae_title=ae_title, host=host, port=port, permissions=perms, ca=ca_material(opened)
        )
        assert isinstance(issued, IssuedNode)
        cert_path, key_path = write_node_credentials(issued, out_dir)
        _record_change(opened, *change)
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


@nodes_app.command("list")
def nodes_list(home: HomeOption = Path("medvault-home"), passphrase_file: PassphraseFile = None) -> None:
    """List registered nodes."""
    from medvault.dimse import node_store

    opened = _open(home, passphrase_file)
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


@nodes_app.command("revoke")
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

    _user_action(home, passphrase_file, act, (EventKind.NODE_CHANGE, "node.revoke", "node", name))


# -- API keys --------------------------------------------------------------------------------------


@apikeys_app.command("create")
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
    opened = _open(home, passphrase_file)
    try:
        key = opened.api_keys.create(name, role=role, expires_days=expires)
        _record_change(opened, EventKind.APIKEY_CHANGE, "apikey.create", "apikey", name)
    finally:
        opened.close()
    out.print(f"API key {name!r} (role {role}); send it as 'Authorization: Bearer <key>':")
    print(key)


@apikeys_app.command("list")
def apikeys_list(home: HomeOption = Path("medvault-home"), passphrase_file: PassphraseFile = None) -> None:
    """List API keys (never the keys themselves)."""
    opened = _open(home, passphrase_file)
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


@apikeys_app.command("revoke")
def apikeys_revoke(
    name: Annotated[str, typer.Argument(help="The key's name.")],
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Revoke an API key at once (a running server refuses it on the next request)."""
    opened = _open(home, passphrase_file)
    try:
        opened.api_keys.revoke(name)
        _record_change(opened, EventKind.APIKEY_CHANGE, "apikey.revoke", "apikey", name)
    finally:
        opened.close()
    out.print(f"API key {name!r} revoked.")


# -- quickstart ------------------------------------------------------------------------------------


@app.command()
def quickstart(
    home: Annotated[Path, typer.Option("--home", help="Demo home folder.")] = Path("medvault-demo"),
    port: Annotated[int, typer.Option(help="HTTPS port.")] = 8443,
    serve_after: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Start the server afterwards.")
    ] = True,
) -> None:
    """Try medvault on this machine: create a demo home (if needed), load a sample CT study,
    print how to query it, and serve it on https://127.0.0.1:PORT.

    The demo keeps its generated passphrase in HOME.passphrase beside the home folder (mode 0600)
    so it can be run again; a real deployment uses `medvault init` and keeps the passphrase elsewhere.
    """
    from medvault.sample import generate_study

    passphrase_path = home.with_name(home.name + ".passphrase")
    if not (home / "keyring.sealed").exists():
        passphrase = secrets.token_urlsafe(24)
        fd = os.open(passphrase_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(passphrase + "\n")
        created = init_home(home, passphrase)
        err.print(f"Created demo home {home}; its passphrase is in {passphrase_path} (demo only).")
        err.print(
            f"Administrator 'admin', one-time password: {created.password} (TOTP: `medvault users reset-mfa`)"
        )
    passphrase = passphrase_path.read_text(encoding="utf-8").strip()
    opened = open_home(home, passphrase)
    try:
        sample_dir = home / "sample-input"
        if not sample_dir.exists():
            sample_dir.mkdir(mode=0o700)
            generate_study(
                sample_dir,
                seed=7,
                series=1,
                instances=8,
                rows=256,
                cols=256,
                patient_name="DEMO^PATIENT",
                patient_id="DEMO-0001",
            )
        files = sorted(sample_dir.glob("**/*.dcm"))
        summary = import_files(opened.archive, files, show_progress=False)
        for f in files:
            f.unlink()
        key_name = f"quickstart-{secrets.token_hex(3)}"
        key = opened.api_keys.create(key_name, role="archivist", expires_days=1)
        ca = (home / "tls" / "ca.crt").resolve()
        url = f"https://127.0.0.1:{port}/dicomweb"
        out.print(f"Sample study: {summary.stored} stored, {summary.already_present} already present.")
        out.print(f"DICOMweb URL : {url}")
        out.print(f"CA to trust  : {ca}")
        out.print(f"API key      : {key}  (archivist: read, store, delete; expires in 1 day)")
        out.print("Try:", style="bold")
        print(f"  curl --cacert {ca} -H 'Authorization: Bearer {key}' '{url}/studies?PatientID=DEMO-0001'")
    finally:
        opened.close()
    if serve_after:
        from medvault.api.server import serve as serve_forever

        count = default_workers()
        serve_forever(
            home,
            opened.keyring_file,  # unlocked above: no second scrypt run
            host="127.0.0.1",
            port=port,
            workers=count,
            on_listening=lambda: _announce(home, opened.settings, "127.0.0.1", port, count),
        )


@app.command()
def version() -> None:
    """Print the version."""
    out.print(__version__)


def main() -> None:
    try:
        app()
    except MedvaultError as exc:
        err.print(f"[bold red]error[/]: {escape(exc.diagnostics())}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
