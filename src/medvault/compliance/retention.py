"""Retention runs and rule changes: the I/O around the pure decision of compliance/rules.py.

A run reads every study's profile, decides each one, and (unless it is a dry run) expires the
studies whose time has passed through the archive's one delete path — crypto-shredding: the
wrapped data key goes with the index row, the object is deleted, the study leaves a tombstone,
each instance is ledgered as ``retention.expire``. A legal hold placed while a run is under way
still wins (the delete path checks inside its transaction). Each run, dry or not, ends with one
``retention.run`` ledger event: who ran it, the rule set's SHA-256 and the counts. A dry run
writes nothing else.

Rules live in ``medvault.toml`` (``[retention]``). Changing them through the API rewrites that
section (and only it) and ledgers the old and new rule sets' digests; every run reads the file
afresh, so all server processes apply the same rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from medvault.archive import Archive
from medvault.audit import SYSTEM
from medvault.compliance.rules import Verdict, evaluate, rules_digest
from medvault.config import (
    CONFIG_FILE,
    RetentionRule,
    RetentionSettings,
    _settings_from,
    load_settings,
    replace_config_text,
)
from medvault.errors import ConfigError, MedvaultError, NotFound
from medvault.index.legal_holds import LegalHoldActive
from medvault.index.retention_view import study_profiles
from medvault.ledger.events import Actor, AuditEvent, EventKind, ObjectRef, Outcome

__all__ = ["RunReport", "rules_toml", "run_retention", "write_rules"]

TAG_DEPARTMENT = "00081040"
#: Called with (studies done, studies in all) as a run goes.
Progress = Callable[[int, int], None]


@dataclass
class RunReport:
    dry_run: bool
    started_at: datetime
    rules_sha256: str
    rules: int
    examined: int = 0
    expired: list[Verdict] = field(default_factory=list)  # to expire, in a dry run
    held: list[Verdict] = field(default_factory=list)
    undetermined: list[Verdict] = field(default_factory=list)
    kept: int = 0  # kept by a rule or matched by none
    failed: list[tuple[str, str]] = field(default_factory=list)  # (study UID, why)
    instances_deleted: int = 0
    finished_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        def one(v: Verdict) -> dict[str, Any]:
            return {
                "study_uid": v.study_uid,
                "rule": v.rule,
                "keep_until": v.keep_until.isoformat() if v.keep_until else None,
                "reason": v.reason,
                "legal_holds": list(v.holds),
            }

        return {
            "dry_run": self.dry_run,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "rules": self.rules,
            "rules_sha256": self.rules_sha256,
            "examined": self.examined,
            "expired": [one(v) for v in self.expired],
            "held": [one(v) for v in self.held],
            "undetermined": [one(v) for v in self.undetermined],
            "kept": self.kept,
            "failed": [{"study_uid": uid, "error": why} for uid, why in self.failed],
            "instances_deleted": self.instances_deleted,
        }


def run_retention(
    archive: Archive,
    rules: Sequence[RetentionRule],
    *,
    dry_run: bool,
    actor: Actor | None = None,
    today: date | None = None,
    progress: Progress | None = None,
) -> RunReport:
    """Decide every stored study and, unless ``dry_run``, expire those whose time has passed
    (``today``: the day to judge by, UTC by default)."""
    now = datetime.now(UTC)
    day = today or now.date()
    who = actor or SYSTEM
    report = RunReport(dry_run=dry_run, started_at=now, rules_sha256=rules_digest(rules), rules=len(rules))
    index = archive.index
    departments = {r.department: index.pseudonym(TAG_DEPARTMENT, r.department) for r in rules if r.department}
    profiles = list(study_profiles(index)) if rules else []
    held = archive.legal_holds.held_studies() if profiles else {}
    total = len(profiles)
    for done, study in enumerate(profiles, 1):
        verdict = evaluate(
            rules, study, today=day, departments=departments, holds=held.get(study.facts.study_uid, ())
        )
        report.examined += 1
        if verdict.kind == "expire" and not dry_run:
            _expire(archive, verdict, who, report)
        elif verdict.kind == "expire":
            report.expired.append(verdict)
        elif verdict.kind == "held":
            report.held.append(verdict)
        elif verdict.kind == "undetermined":
            report.undetermined.append(verdict)
        else:
            report.kept += 1
        if progress is not None:
            progress(done, total)
    report.finished_at = datetime.now(UTC)
    _ledger_run(archive, report, who)
    return report


def _expire(archive: Archive, verdict: Verdict, who: Actor, report: RunReport) -> None:
    try:
        report.instances_deleted += archive.delete(
            verdict.study_uid, actor=who, cause="retention", rule=verdict.rule
        )
    except LegalHoldActive as refused:  # placed while the run was under way
        report.held.append(
            Verdict(
                verdict.study_uid,
                "held",
                f"expired under rule {verdict.rule} but under legal hold "
                + ", ".join(f"#{h}" for h in refused.hold_ids),
                verdict.rule,
                verdict.keep_until,
                refused.hold_ids,
            )
        )
        return
    except NotFound:  # deleted meanwhile by another door: nothing left to expire
        return
    except MedvaultError as exc:
        report.failed.append((verdict.study_uid, exc.message))
        return
    report.expired.append(verdict)


def _ledger_run(archive: Archive, report: RunReport, who: Actor) -> None:
    if archive.audit is None:
        return
    archive.audit.emit(
        AuditEvent(
            kind=EventKind.DELETE,
            time=report.finished_at or datetime.now(UTC),
            actor=who,
            action="retention.run",
            outcome=Outcome.SUCCESS if not report.failed else Outcome.FAILURE,
            object=ObjectRef(type="retention_run", id=report.started_at.strftime("%Y%m%dT%H%M%S.%fZ")),
            details={
                "dry_run": int(report.dry_run),
                "rules": report.rules,
                "rules_sha256": report.rules_sha256,
                "examined": report.examined,
                "expired": len(report.expired),
                "held": len(report.held),
                "undetermined": len(report.undetermined),
                "kept": report.kept,
                "failed": len(report.failed),
                "instances_deleted": report.instances_deleted,
            },
        )
    )


# -- rules in medvault.toml ------------------------------------------------------------------------

_HEADER = re.compile(r"^\s*\[(\[)?\s*([A-Za-z0-9_.\-\s\"]+?)\s*\](\])?\s*(#.*)?$")


def _toml_value(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rules_toml(settings: RetentionSettings, rules: Sequence[RetentionRule]) -> str:
    """The ``[retention]`` section with these rules, as ``[[retention.rules]]`` tables."""
    lines = [
        "[retention]                 # how long studies must be kept (docs/compliance.md); "
        "written by PUT /api/retention",
        f"enabled = {'true' if settings.enabled else 'false'}",
        f"schedule_seconds = {settings.schedule_seconds}",
    ]
    if not rules:
        lines.append("rules = []")
    for rule in rules:
        lines += ["", "[[retention.rules]]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in rule.to_toml().items()]
    return "\n".join(lines) + "\n"


def _without_retention(text: str) -> list[str]:
    """The lines of medvault.toml outside its ``[retention]`` and ``[[retention.rules]]`` tables."""
    kept: list[str] = []
    inside = False
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header is not None:
            name = header.group(2).strip().strip('"')
            inside = name == "retention" or name.startswith("retention.")
        if not inside:
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    return kept


def write_rules(root: Path, rules: Sequence[RetentionRule], *, actor: Actor, archive: Archive) -> str:
    """Replace the rules in ``medvault.toml`` (refused before writing if the result does not load
    to exactly these rules) and ledger the change; returns the new rule set's digest."""
    path = root / CONFIG_FILE
    old_text = path.read_text(encoding="utf-8")
    current = load_settings(root)
    text = "\n".join(_without_retention(old_text)) + "\n\n" + rules_toml(current.retention, rules)
    loaded = _settings_from(text, path)
    if loaded.retention.rules != tuple(rules):
        raise ConfigError("the retention rules could not be written faithfully; nothing was changed")
    replace_config_text(path, text)
    digest = rules_digest(rules)
    if archive.audit is not None:
        archive.audit.emit(
            AuditEvent(
                kind=EventKind.CONFIG_CHANGE,
                time=datetime.now(UTC),
                actor=actor,
                action="retention.rules.change",
                outcome=Outcome.SUCCESS,
                object=ObjectRef(type="config", id="retention"),
                details={
                    "old_rules_sha256": rules_digest(current.retention.rules),
                    "rules_sha256": digest,
                    "rules": len(rules),
                },
            )
        )
    return digest
