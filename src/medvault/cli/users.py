"""`medvault users …`: people, roles, scopes, MFA, training."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from medvault.api.admin import grant_kind, grant_value, referring_identity, roles_from
from medvault.cli._common import (
    HomeOption,
    PassphraseFile,
    err,
    open_for_cli,
    out,
    record_change,
    show_enrolment,
    show_new_user,
    user_action,
)
from medvault.home import OpenHome
from medvault.index.store import TAG_DEPARTMENT, TAG_PATIENT_ID
from medvault.ledger.events import EventKind

app = typer.Typer(help="People: accounts, roles, scopes, MFA, training.", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="The user name.")]


@app.command("add")
def users_add(
    name: NameArg,
    roles: Annotated[str, typer.Option(help="Comma-separated roles, e.g. radiologist or auditor.")],
    training: Annotated[
        str | None,
        typer.Option(
            help="Privacy training valid until YYYY-MM-DD (decides while no `medvault training` course "
            "is required for the roles)."
        ),
    ] = None,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Add a person: prints a one-time password, the TOTP enrolment and recovery codes once."""
    opened = open_for_cli(home, passphrase_file)
    try:
        created = opened.users.add_user(
            name,
            roles=roles_from(roles),
            now=datetime.now(UTC),
            training_expires=date.fromisoformat(training) if training else None,
        )
        record_change(opened, EventKind.USER_CHANGE, "user.add", "user", name)
        show_new_user(created, home)
    finally:
        opened.close()


@app.command("list")
def users_list(home: HomeOption = Path("medvault-home"), passphrase_file: PassphraseFile = None) -> None:
    """List accounts (never secrets)."""
    opened = open_for_cli(home, passphrase_file)
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


@app.command("disable")
def users_disable(
    name: NameArg, home: HomeOption = Path("medvault-home"), passphrase_file: PassphraseFile = None
) -> None:
    """Disable an account; its sessions end at once."""
    user_action(
        home,
        passphrase_file,
        lambda o: f"{o.users.disable(name, now=datetime.now(UTC)).name} disabled",
        (EventKind.USER_CHANGE, "user.disable", "user", name),
    )


@app.command("enable")
def users_enable(
    name: NameArg, home: HomeOption = Path("medvault-home"), passphrase_file: PassphraseFile = None
) -> None:
    """Enable a disabled account."""
    user_action(
        home,
        passphrase_file,
        lambda o: f"{o.users.enable(name).name} enabled",
        (EventKind.USER_CHANGE, "user.enable", "user", name),
    )


@app.command("reset-mfa")
def users_reset_mfa(
    name: NameArg, home: HomeOption = Path("medvault-home"), passphrase_file: PassphraseFile = None
) -> None:
    """New TOTP secret and recovery codes (shown once); ends the user's sessions."""
    opened = open_for_cli(home, passphrase_file)
    try:
        enrolment = opened.users.reset_mfa(name, now=datetime.now(UTC))
        record_change(opened, EventKind.USER_CHANGE, "user.reset_mfa", "user", name)
        show_enrolment(enrolment, home, name)
    finally:
        opened.close()


@app.command("set-roles")
def users_set_roles(
    name: NameArg,
    roles: Annotated[str, typer.Argument(help="Comma-separated roles.")],
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Replace a user's roles."""
    user_action(
        home,
        passphrase_file,
        lambda o: f"{name}: {', '.join(sorted(o.users.set_roles(name, roles_from(roles)).roles))}",
        (EventKind.ROLE_CHANGE, "user.set_roles", "user", name),
    )


@app.command("grant")
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
        until = f" until {expires:%Y-%m-%d %H:%M} UTC" if expires else ""
        what = {"patient": "the patient with PatientID", "department": "department", "study": "study"}
        target = "every study (site)" if k == "site" else f"{what[k]} {value!r}"
        recorded = {
            "patient": (TAG_PATIENT_ID, "PatientID"),
            "department": (TAG_DEPARTMENT, "InstitutionalDepartmentName"),
        }
        if k in recorded and o.archive.index.studies_recording(recorded[k][0], value) == 0:
            err.print(
                f"[bold yellow]warning[/]: no stored study records {recorded[k][1]} {escape(repr(value))} "
                "(it must match exactly, case included); the grant applies to studies stored later.",
                highlight=False,
            )
        return f"granted {name} access to {target}{until}"

    user_action(home, passphrase_file, act, (EventKind.GRANT_CHANGE, f"grant.add.{kind}", "user", name))


@app.command("revoke")
def users_revoke(
    name: NameArg,
    kind: Annotated[str, typer.Argument(help="patient, study, department or site.")],
    value: Annotated[str, typer.Argument(help="As given to `grant`.")],
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Take a grant back."""
    user_action(
        home,
        passphrase_file,
        lambda o: (
            f"{o.users.revoke_grant(name, kind=kind, value=grant_value(o.archive.index, kind, value))} gone"
        ),
        (EventKind.GRANT_CHANGE, f"grant.revoke.{kind}", "user", name),
    )


@app.command("training")
def users_training(
    name: NameArg,
    until: Annotated[str, typer.Argument(help="Privacy training valid until YYYY-MM-DD.")],
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Record renewed privacy training (without it, access to PHI is refused).

    This per-user date decides while no course of `medvault training` is required for the user's roles.
    """
    user_action(
        home,
        passphrase_file,
        lambda o: (
            f"{name}: training until {o.users.set_training(name, date.fromisoformat(until)).training_expires}"
        ),
        (EventKind.USER_CHANGE, "user.training", "user", name),
    )


@app.command("referring")
def users_referring(
    name: NameArg,
    physician_name: Annotated[str, typer.Argument(help="How studies name this person, e.g. DOE^JOHN.")],
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Link a user to the referring-physician name in studies (they then see those studies)."""
    user_action(
        home,
        passphrase_file,
        lambda o: (
            f"{o.users.set_referring_id(name, referring_identity(o.archive.index, physician_name)).name} ok"
        ),
        (EventKind.USER_CHANGE, "user.referring", "user", name),
    )
