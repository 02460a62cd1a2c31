"""Alerts of the continuous monitor at /api/alerts, and the security holds (automatic responses)
at /api/holds: list and filter, acknowledge, resolve with a disposition, lift. Reading needs
``alerts.read``, changing ``alerts.manage`` (the auditor role has both)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from medvault.access.policy import Action, Principal
from medvault.alerting.officer import handle_alert, lift_hold
from medvault.api import openapi as spec
from medvault.api.account import read_fields
from medvault.api.auth import client_address, require
from medvault.archive import Archive
from medvault.audit import actor_of
from medvault.errors import ConfigError, InvalidInput
from medvault.index.alerts import SEVERITIES, STATUSES, AlertStore

router = APIRouter(prefix="/api")
ReadsAlerts = Annotated[Principal, Depends(require(Action.ALERTS_READ))]
ManagesAlerts = Annotated[Principal, Depends(require(Action.ALERTS_MANAGE))]
_MAX_ID = 2**62
AlertId = Annotated[int, Path(ge=1, le=_MAX_ID)]


def _store(request: Request) -> AlertStore:
    store: AlertStore | None = getattr(request.app.state, "alerts", None)
    if store is None:
        raise ConfigError("this server keeps no alerts")
    return store


def _answer(payload: object, status: int = 200) -> JSONResponse:
    return JSONResponse(payload, status_code=status, headers={"Cache-Control": "no-store"})


def _since(raw: str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        when = datetime.fromisoformat(raw) if raw.isascii() else None
    except ValueError:
        when = None
    if when is None:
        raise InvalidInput("since must be an ISO 8601 date or time, e.g. 2026-12-01 or 2026-12-01T08:00:00Z")
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@router.get("/alerts")
def list_alerts(
    request: Request,
    who: ReadsAlerts,
    status: Annotated[Literal["open", "acknowledged", "resolved"] | None, Query()] = None,
    severity: Annotated[Literal["medium", "high", "critical"] | None, Query()] = None,
    subject: Annotated[str | None, Query(max_length=255)] = None,
    incident: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=_MAX_ID)] = 0,
) -> Response:
    """Newest first. Each alert: severity, score, the subject, the reasons in words, the rule
    points and features behind them, its incident, status and disposition."""
    assert status is None or status in STATUSES
    assert severity is None or severity in SEVERITIES
    found = _store(request).find(
        status=status,
        severity=severity,
        subject=subject,
        incident_id=incident,
        since=_since(since),
        limit=limit,
        offset=offset,
    )
    return _answer([r.to_json() for r in found])


def _one(request: Request, alert_id: int) -> dict[str, object]:
    store = _store(request)
    record = store.get(alert_id).to_json()
    record["holds"] = [h.to_json() for h in store.holds(active=False) if h.alert_id == alert_id]
    return record


@router.get("/alerts/{alert_id}")
def get_alert(alert_id: AlertId, request: Request, who: ReadsAlerts) -> Response:
    return _answer(_one(request, alert_id))


def _handle(
    request: Request, who: Principal, alert_id: int, fields: dict[str, str], resolve: bool
) -> Response:
    archive: Archive = request.app.state.archive
    if archive.audit is None:
        raise ConfigError("this server keeps no ledger")
    handle_alert(
        alerts=_store(request),
        index=archive.index,
        ledger=archive.audit.ledger,
        alert_id=alert_id,
        status="resolved" if resolve else "acknowledged",
        actor=actor_of(who, client_address(request)),
        now=datetime.now(UTC),
        disposition=fields.get("disposition") if resolve else None,
        note=fields.get("note") or None,
    )
    return _answer(_one(request, alert_id))


@router.post("/alerts/{alert_id}/acknowledge", openapi_extra=spec.ACKNOWLEDGE)
async def acknowledge_alert(alert_id: AlertId, request: Request, who: ManagesAlerts) -> Response:
    """Taken in hand (still open for the monitor's statistics until resolved)."""
    return _handle(request, who, alert_id, await read_fields(request), resolve=False)


@router.post("/alerts/{alert_id}/resolve", openapi_extra=spec.RESOLVE)
async def resolve_alert(alert_id: AlertId, request: Request, who: ManagesAlerts) -> Response:
    """Resolve with a disposition: true_positive, false_positive or benign_explained. A false
    positive or a benign explanation lowers the weight of the same pattern for this user (and,
    for false positives, site-wide) from then on."""
    return _handle(request, who, alert_id, await read_fields(request), resolve=True)


@router.get("/holds")
def list_holds(
    request: Request,
    who: ReadsAlerts,
    active: bool = True,
    subject: Annotated[str | None, Query(max_length=255)] = None,
) -> Response:
    """Automatic responses in force (``active=false``: every one, lifted ones included)."""
    return _answer([h.to_json() for h in _store(request).holds(active=active, subject=subject)])


@router.post("/holds/{hold_id}/lift")
def lift(hold_id: AlertId, request: Request, who: ManagesAlerts) -> Response:
    archive: Archive = request.app.state.archive
    if archive.audit is None:
        raise ConfigError("this server keeps no ledger")
    lifted = lift_hold(
        alerts=_store(request),
        index=archive.index,
        ledger=archive.audit.ledger,
        hold_id=hold_id,
        actor=actor_of(who, client_address(request)),
        now=datetime.now(UTC),
    )
    return _answer(lifted.to_json())
