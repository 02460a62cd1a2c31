"""Training records at /api/training: status (``GET``), courses and completions (``POST``).

Translation only (medvault.compliance.training does the work and the ledgering). Reading anyone's
status needs ``training.read`` (admin, auditor); a signed-in person may always read their own at
``GET /api/training/me``; adding courses and recording completions needs ``training.manage``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from medvault.access.policy import Action, Principal
from medvault.api import openapi as spec
from medvault.api.account import read_fields
from medvault.api.auth import Authenticated, client_address, require
from medvault.api.bodies import date_field, days_field
from medvault.archive import Archive
from medvault.audit import actor_of
from medvault.compliance.training import DEFAULT_REMINDER_DAYS, TrainingRecords
from medvault.errors import Forbidden, InvalidInput
from medvault.index.training import MAX_VALID_DAYS, CourseRecord, GateChange, TrainingStore, UserTraining
from medvault.index.users import UserStore
from medvault.ledger.events import AuditEvent

router = APIRouter(prefix="/api")
ManagesTraining = Annotated[Principal, Depends(require(Action.TRAINING_MANAGE))]
ReadsTraining = Annotated[Principal, Depends(require(Action.TRAINING_READ))]
_DATE = {"type": "string", "format": "date", "example": "2026-06-30"}
_DAYS = {"type": "string", "pattern": "^[0-9]{1,5}$", "description": "a number of days"}

NEW_COURSE = spec.form_body(
    spec.fields(
        "name",
        "version",
        valid_days=_DAYS,
        required_for={
            "type": "string",
            "maxLength": 512,
            "description": "comma-separated roles; 'all': everyone with image access",
        },
        requires_renewal={"type": "string", "enum": ["true", "false"]},
    ),
    ["name", "version", "valid_days"],
)
NEW_COMPLETION = spec.form_body(
    spec.fields("user", "course", "version", "evidence", completed=_DATE),
    ["user", "course", "completed"],
)


def _records(request: Request) -> TrainingRecords:
    """One TrainingRecords per app (made at first use: the tables exist, UserStore made them)."""
    records: TrainingRecords | None = getattr(request.app.state, "training", None)
    if records is None:
        users: UserStore = request.app.state.users
        archive: Archive = request.app.state.archive
        audit = archive.audit

        def emit(event: AuditEvent) -> None:
            if audit is not None:
                audit.emit(event)

        records = TrainingRecords(TrainingStore(users.engine, roles=users.roles), emit)
        request.app.state.training = records
    return records


def _day(value: date | None) -> str | None:
    return value.isoformat() if value else None


def status_json(person: UserTraining) -> dict[str, Any]:
    return {
        "user": person.username,
        "roles": sorted(person.roles),
        "disabled": person.disabled,
        "gated": person.reaches_phi,
        "image_access_until": _day(person.effective.expires) if person.reaches_phi else None,
        "deciding_course": person.effective.course,
        "courses": [
            {
                "course": c.course,
                "version": c.version,
                "required": c.required,
                "completed_on": _day(c.completed_on),
                "completed_version": c.completed_version,
                "expires": _day(c.expires),
                "state": c.state,
            }
            for c in person.courses
        ],
    }


def course_json(record: CourseRecord) -> dict[str, Any]:
    c = record.course
    return {
        "name": c.name,
        "version": c.version,
        "valid_days": c.valid_days,
        "required_for": sorted("all" if r == "*" else r for r in c.required_for),
        "requires_renewal": c.requires_renewal,
        "current": record.current,
        "created_at": record.created_at.isoformat(),
        "created_by": record.created_by,
    }


def _gate_json(changes: list[GateChange]) -> list[dict[str, Any]]:
    return [
        {"user": g.username, "image_access": g.allowed, "expires": _day(g.expires), "course": g.course}
        for g in changes
    ]


def _answer(payload: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(payload, status_code=status, headers={"Cache-Control": "no-store"})


def _need(fields: dict[str, str], *names: str) -> None:
    missing = [n for n in names if not fields.get(n)]
    if missing:
        raise InvalidInput(f"missing field(s): {', '.join(missing)}")


@router.get("/training")
def training_status(
    request: Request,
    who: ReadsTraining,
    user: Annotated[str | None, Query(max_length=64, description="One user (default: everyone)")] = None,
    within_days: Annotated[int, Query(ge=0, le=MAX_VALID_DAYS)] = DEFAULT_REMINDER_DAYS,
) -> Response:
    """Training per user and course: completed, expires, ok / expiring / expired / missing."""
    people = _records(request).store.status(user, today=datetime.now(UTC).date(), within_days=within_days)
    return _answer([status_json(p) for p in people])


@router.get("/training/me")
def own_training_status(
    request: Request,
    who: Authenticated,
    within_days: Annotated[int, Query(ge=0, le=MAX_VALID_DAYS)] = DEFAULT_REMINDER_DAYS,
) -> Response:
    """The signed-in person's own training (no permission needed: everyone may know why the
    gate lets them in or not). API keys and nodes have no training records."""
    if who.method == "api-key":
        raise Forbidden("an API key has no training records; sign in as a person")
    (person,) = _records(request).store.status(
        who.name, today=datetime.now(UTC).date(), within_days=within_days
    )
    return _answer(status_json(person))


@router.post("/training/courses", openapi_extra=NEW_COURSE, status_code=201)
async def add_course(request: Request, who: ManagesTraining) -> Response:
    """Add a course, or a new version of one (older versions and completions are kept)."""
    fields = await read_fields(request)
    _need(fields, "name", "version", "valid_days")
    days = days_field(fields, "valid_days", maximum=MAX_VALID_DAYS)
    assert days is not None
    renewal = fields.get("requires_renewal", "false").lower()
    if renewal not in ("true", "false", ""):
        raise InvalidInput("requires_renewal must be true or false")
    roles = [r.strip() for r in fields.get("required_for", "").split(",") if r.strip()]
    record, changes = _records(request).add_course(
        fields["name"],
        version=fields["version"],
        valid_days=days,
        required_for=roles,
        requires_renewal=renewal == "true",
        actor=actor_of(who, client_address(request)),
        now=datetime.now(UTC),
    )
    return _answer({"course": course_json(record), "gate_changes": _gate_json(changes)}, 201)


@router.post("/training/completions", openapi_extra=NEW_COMPLETION, status_code=201)
async def record_completion(request: Request, who: ManagesTraining) -> Response:
    """Record that a user completed a course (its current version unless ``version``)."""
    fields = await read_fields(request)
    _need(fields, "user", "course", "completed")
    completed = date_field(fields, "completed")
    assert completed is not None
    done, changes = _records(request).record(
        fields["user"],
        fields["course"],
        completed_on=completed,
        evidence=fields.get("evidence") or None,
        version=fields.get("version") or None,
        actor=actor_of(who, client_address(request)),
        now=datetime.now(UTC),
    )
    return _answer(
        {
            "user": done.username,
            "course": done.course,
            "version": done.version,
            "completed_on": done.completed_on.isoformat(),
            "evidence": done.evidence,
            "gate_changes": _gate_json(changes),
        },
        201,
    )
