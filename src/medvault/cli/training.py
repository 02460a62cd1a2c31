"""`medvault training …`: courses, completions, status, reminders and history (issue #15).

The same records as /api/training (medvault.compliance.training), each change ledgered."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from medvault.access.training import CourseState
from medvault.cli._common import HomeOption, PassphraseFile, cli_actor, open_for_cli, out
from medvault.compliance.training import DEFAULT_REMINDER_DAYS, TrainingRecords
from medvault.errors import InvalidInput
from medvault.home import OpenHome
from medvault.index.training import MAX_VALID_DAYS, GateChange, TrainingStore

app = typer.Typer(
    help="Training records: courses, completions, who must renew; they drive the training gate.",
    no_args_is_help=True,
)
courses_app = typer.Typer(help="Courses and their versions (history is kept).", no_args_is_help=True)
app.add_typer(courses_app, name="courses")

_STATE_STYLE: dict[CourseState, str] = {
    "ok": "green",
    "expiring": "yellow",
    "expired": "bold red",
    "missing": "bold red",
}


def parse_day(text: str, field: str) -> date:
    """A YYYY-MM-DD date; an error naming the option otherwise."""
    if text.isascii() and len(text) == 10:
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
    raise InvalidInput(f"{field} must be a date (YYYY-MM-DD), e.g. 2026-06-30")


def records_of(opened: OpenHome) -> TrainingRecords:
    return TrainingRecords(TrainingStore(opened.users.engine, roles=opened.users.roles), opened.ledger.append)


def _show_gate(changes: list[GateChange]) -> None:
    for change in changes:
        if change.previous is None and change.allowed:
            continue  # a person seen for the first time, with access: nothing to tell
        what = "regains" if change.allowed else "loses"
        course = f" (course {change.course!r})" if change.course else ""
        out.print(
            f"  {escape(change.username)} {what} access to patient data{escape(course)}", highlight=False
        )


def _roles(values: list[str] | None) -> list[str]:
    return [r.strip() for v in values or [] for r in v.split(",") if r.strip()]


@courses_app.command("add")
def courses_add(
    name: Annotated[str, typer.Argument(help="The course, e.g. 'privacy and security'.")],
    version: Annotated[str, typer.Option(help="Its version, e.g. 2026 or v2.")],
    valid_days: Annotated[
        int, typer.Option(min=1, max=MAX_VALID_DAYS, help="How long a completion is valid, in days.")
    ],
    required_for: Annotated[
        list[str] | None,
        typer.Option(
            "--required-for",
            help="A role that must hold this course (repeat, or comma-separate); 'all': everyone with "
            "image access. Without it the course is tracked but gates nothing.",
        ),
    ] = None,
    requires_renewal: Annotated[
        bool,
        typer.Option(
            "--requires-renewal",
            help="Completions of older versions stop counting: everyone must take this version.",
        ),
    ] = False,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Add a course, or a new version of one (it supersedes the older versions).

    Completions of older versions keep counting until their own expiry unless --requires-renewal.
    """
    opened = open_for_cli(home, passphrase_file)
    try:
        record, changes = records_of(opened).add_course(
            name,
            version=version,
            valid_days=valid_days,
            required_for=_roles(required_for),
            requires_renewal=requires_renewal,
            actor=cli_actor(),
            now=datetime.now(UTC),
        )
    finally:
        opened.close()
    course = record.course
    needed = ", ".join(sorted(course.required_for)).replace("*", "all") or "nobody (tracked only)"
    out.print(
        f"course {escape(course.name)!r} version {escape(course.version)}: valid {course.valid_days} days, "
        f"required for {needed}",
        highlight=False,
        soft_wrap=True,
    )
    _show_gate(changes)


@courses_app.command("list")
def courses_list(home: HomeOption = Path("medvault-home"), passphrase_file: PassphraseFile = None) -> None:
    """Every course and version, oldest first; the current version of each is marked."""
    opened = open_for_cli(home, passphrase_file)
    try:
        records = records_of(opened).store.courses()
    finally:
        opened.close()
    table = Table(title="training courses")
    for column in (
        "course",
        "version",
        "valid days",
        "required for",
        "renewal",
        "added (UTC)",
        "by",
        "current",
    ):
        table.add_column(column, overflow="fold")
    for r in records:
        c = r.course
        table.add_row(
            escape(c.name),
            escape(c.version),
            str(c.valid_days),
            ", ".join(sorted(c.required_for)).replace("*", "all") or "-",
            "required" if c.requires_renewal else "",
            r.created_at.strftime("%Y-%m-%d %H:%M"),
            escape(r.created_by),
            "yes" if r.current else "",
        )
    out.print(table)


@app.command("record")
def training_record(
    user: Annotated[str, typer.Argument(help="The user name.")],
    course: Annotated[str, typer.Argument(help="The course name, as in `training courses list`.")],
    completed: Annotated[str, typer.Option(help="The day it was completed, YYYY-MM-DD.")],
    evidence: Annotated[
        str | None,
        typer.Option(help="A reference: certificate number, LMS record id (no patient data)."),
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="The version completed (default: the current one).")
    ] = None,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Record a completed course; access comes back at once if it was missing."""
    day = parse_day(completed, "completed")
    opened = open_for_cli(home, passphrase_file)
    try:
        records = records_of(opened)
        done, changes = records.record(
            user,
            course,
            completed_on=day,
            evidence=evidence,
            version=version,
            actor=cli_actor(),
            now=datetime.now(UTC),
        )
        (status,) = records.store.status(user, today=datetime.now(UTC).date())
    finally:
        opened.close()
    mine = next((c for c in status.courses if c.course == course), None)
    until = f", valid through {mine.expires.isoformat()}" if mine and mine.expires else ""
    out.print(
        f"{escape(user)}: {escape(course)!r} version {escape(done.version)} completed "
        f"{done.completed_on.isoformat()}{until}",
        highlight=False,
        soft_wrap=True,
    )
    _show_gate(changes)


def _day(value: date | None) -> str:
    return value.isoformat() if value else "-"


@app.command("status")
def training_status(
    user: Annotated[str | None, typer.Argument(help="One user (default: everyone).")] = None,
    within_days: Annotated[
        int,
        typer.Option(min=0, max=MAX_VALID_DAYS, help="'expiring' when valid for this many days or fewer."),
    ] = DEFAULT_REMINDER_DAYS,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Per user and course: completed, expires, and ok / expiring / expired / missing."""
    today = datetime.now(UTC).date()
    opened = open_for_cli(home, passphrase_file)
    try:
        people = records_of(opened).store.status(user, today=today, within_days=within_days)
    finally:
        opened.close()
    table = Table(title=f"training on {today.isoformat()}")
    for column in ("user", "course", "version", "completed", "expires", "state", "image access until"):
        table.add_column(column, overflow="fold")
    for person in people:
        if person.disabled and user is None:
            continue
        access = _day(person.effective.expires) if person.reaches_phi else "n/a (no image role)"
        rows = person.courses or ()
        if not rows:
            shown = "per-user date" if person.legacy_expires else "-"
            table.add_row(escape(person.username), shown, "", "", _day(person.legacy_expires), "", access)
        for i, c in enumerate(rows):
            state = c.state if c.required else f"{c.state} (optional)"
            table.add_row(
                escape(person.username) if i == 0 else "",
                escape(c.course),
                escape(c.completed_version or c.version),
                _day(c.completed_on),
                _day(c.expires),
                f"[{_STATE_STYLE[c.state]}]{state}[/]",
                access if i == 0 else "",
            )
    out.print(table)


@app.command("reminders")
def training_reminders(
    within_days: Annotated[
        int, typer.Option(min=0, max=MAX_VALID_DAYS, help="Remind when a required course expires this soon.")
    ] = DEFAULT_REMINDER_DAYS,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Who must renew a required course soon, or has lapsed; ledgers each reminder once.

    One `training.reminder` alert event per user, course and expiry, however often this runs, and a
    `training.gate` event for each user whose access changed since the last run. Run it daily
    (cron or a systemd timer).
    """
    now = datetime.now(UTC)
    opened = open_for_cli(home, passphrase_file)
    try:
        due, changes = records_of(opened).reminders(within_days=within_days, actor=cli_actor(), now=now)
    finally:
        opened.close()
    table = Table(title=f"training due within {within_days} days")
    for column in ("user", "course", "version", "expires", "days left", "state", "reminded"):
        table.add_column(column, overflow="fold")
    for r in due:
        table.add_row(
            escape(r.username),
            escape(r.course),
            escape(r.version),
            r.expires.isoformat(),
            str((r.expires - now.date()).days),
            f"[{_STATE_STYLE[r.state]}]{r.state}[/]",
            "now" if r.new else "before",
        )
    out.print(table)
    new = sum(1 for r in due if r.new)
    out.print(f"{len(due)} due, {new} new reminder(s) ledgered", highlight=False, soft_wrap=True)
    _show_gate(changes)


@app.command("history")
def training_history(
    user: Annotated[str, typer.Argument(help="The user name.")],
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Every completion recorded for a user, oldest first (nothing is overwritten)."""
    opened = open_for_cli(home, passphrase_file)
    try:
        done = records_of(opened).store.history(user)
    finally:
        opened.close()
    table = Table(title=f"training history of {escape(user)}")
    for column in ("completed", "course", "version", "evidence", "recorded (UTC)", "by"):
        table.add_column(column, overflow="fold")
    for d in done:
        table.add_row(
            d.completed_on.isoformat(),
            escape(d.course),
            escape(d.version),
            escape(d.evidence or ""),
            d.recorded_at.strftime("%Y-%m-%d %H:%M"),
            escape(d.recorded_by),
        )
    out.print(table)
