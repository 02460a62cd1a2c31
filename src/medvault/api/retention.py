"""Retention rules and runs at /api/retention (``retention.manage``), legal holds at
/api/legal-holds (``legalhold.manage``): translation only; compliance/ decides and ledgers."""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from medvault.access.policy import Action, Principal
from medvault.api import openapi as spec
from medvault.api.account import read_fields
from medvault.api.auth import client_address, require
from medvault.api.bodies import read_pairs
from medvault.archive import Archive
from medvault.audit import actor_of
from medvault.compliance.holds import lift_legal_hold, place_legal_hold
from medvault.compliance.retention import run_retention, write_rules
from medvault.compliance.rules import rules_digest
from medvault.config import RetentionSettings, load_settings, parse_rules
from medvault.errors import ConfigError, InvalidInput

router = APIRouter(prefix="/api")
ManagesRetention = Annotated[Principal, Depends(require(Action.RETENTION_MANAGE))]
ManagesHolds = Annotated[Principal, Depends(require(Action.LEGALHOLD_MANAGE))]
HoldId = Annotated[int, Path(ge=1, le=2**62)]
_MAX_BODY = 64 * 1024


def _answer(payload: object, status: int = 200) -> JSONResponse:
    return JSONResponse(payload, status_code=status, headers={"Cache-Control": "no-store"})


def _root(request: Request) -> FilePath:
    root: FilePath | None = getattr(request.app.state, "home_root", None)
    if root is None:
        raise ConfigError("this server has no home folder to read retention rules from")
    return root


def _rules_json(settings: RetentionSettings) -> dict[str, Any]:
    return {
        "enabled": settings.enabled,
        "schedule_seconds": settings.schedule_seconds,
        "rules": [r.to_toml() for r in settings.rules],
        "rules_sha256": rules_digest(settings.rules),
    }


@router.get("/retention")
def get_rules(request: Request, who: ManagesRetention) -> Response:
    """The retention rules in force ([retention] in medvault.toml) and the scheduled job's settings."""
    return _answer(_rules_json(load_settings(_root(request)).retention))


@router.put("/retention", openapi_extra=spec.RETENTION_RULES)
async def put_rules(request: Request, who: ManagesRetention) -> Response:
    """Replace the rules (all of them): written to medvault.toml, ledgered with the old and new
    rule sets' SHA-256. A malformed rule is a 400 naming the rule and the key."""
    kind, data = await read_pairs(request, _MAX_BODY)
    if kind != "json" or not isinstance(data, dict) or set(data) != {"rules"}:
        raise InvalidInput('send JSON {"rules": [{"name": …, "keep_years": …}, …]}')
    try:
        rules = parse_rules(data["rules"], where="rules")
    except ConfigError as exc:
        raise InvalidInput(exc.message, hint=exc.hint) from None
    archive: Archive = request.app.state.archive
    root = _root(request)
    write_rules(root, rules, actor=actor_of(who, client_address(request)), archive=archive)
    return _answer(_rules_json(load_settings(root).retention))


def _flag(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise InvalidInput(f"{name} must be true or false")


@router.post("/retention/run", openapi_extra=spec.RETENTION_RUN)
async def run(request: Request, who: ManagesRetention) -> Response:
    """Apply the rules now. ``dry_run`` defaults to true: only ``"dry_run": false`` deletes."""
    kind, data = await read_pairs(request, _MAX_BODY)
    fields: dict[str, Any] = dict(data) if kind == "form" else data
    if not isinstance(fields, dict) or not set(fields) <= {"dry_run"}:
        raise InvalidInput("the body takes one field: dry_run (true or false)")
    dry_run = _flag(fields.get("dry_run", True), "dry_run")
    archive: Archive = request.app.state.archive
    rules = load_settings(_root(request)).retention.rules
    report = run_retention(archive, rules, dry_run=dry_run, actor=actor_of(who, client_address(request)))
    return _answer(report.to_json())


@router.get("/legal-holds")
def list_holds(
    request: Request,
    who: ManagesHolds,
    state: Annotated[Literal["active", "lifted", "all"], Query()] = "active",
) -> Response:
    """Legal holds with their reasons and how many stored studies each covers now."""
    archive: Archive = request.app.state.archive
    active = {"active": True, "lifted": False, "all": None}[state]
    holds = archive.legal_holds.holds(active=active)
    held = archive.legal_holds.held_studies()
    return _answer(
        [{**h.to_json(), "studies_covered": sum(1 for ids in held.values() if h.id in ids)} for h in holds]
    )


@router.post("/legal-holds", openapi_extra=spec.LEGAL_HOLD)
async def place(request: Request, who: ManagesHolds) -> Response:
    """Place a hold on one of: ``patient_id`` (PatientID), ``study_uid``, ``query`` (QIDO keys);
    ``reason`` says who asked and why. 201 with the hold."""
    fields = await read_fields(request)
    unknown = sorted(set(fields) - {"patient_id", "study_uid", "query", "reason"})
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(unknown)}")
    archive: Archive = request.app.state.archive
    hold, covered = place_legal_hold(
        archive,
        actor=actor_of(who, client_address(request)),
        reason=fields.get("reason"),
        patient_id=fields.get("patient_id") or None,
        study_uid=fields.get("study_uid") or None,
        query=fields.get("query") or None,
    )
    return _answer({**hold.to_json(), "studies_covered": covered}, status=201)


@router.post("/legal-holds/{hold_id}/lift", openapi_extra=spec.LIFT_LEGAL_HOLD)
async def lift(hold_id: HoldId, request: Request, who: ManagesHolds) -> Response:
    """Lift a hold in force (``reason`` required); its studies may be deleted again."""
    fields = await read_fields(request)
    archive: Archive = request.app.state.archive
    hold = lift_legal_hold(
        archive, hold_id, actor=actor_of(who, client_address(request)), reason=fields.get("reason")
    )
    return _answer(hold.to_json())
