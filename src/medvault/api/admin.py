"""Administration at /api: users, grants, training, API keys, break-glass. Translation only; the
user store and the policy decision point do the work. Nothing here returns a password hash,
token or key except the one-time secrets of a newly created account or key."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from medvault.access.policy import GRANT_KINDS, ROLES, GrantKind, Principal
from medvault.api import openapi as spec
from medvault.api.account import read_fields
from medvault.api.auth import ManagesUsers, ReviewsBreakGlass, UsesBreakGlass, client_address
from medvault.api.bodies import date_field, days_field
from medvault.archive import Archive
from medvault.audit import actor_of
from medvault.errors import InvalidInput
from medvault.guard import Guard
from medvault.index.apikeys import ApiKeyStore
from medvault.index.store import TAG_DEPARTMENT, TAG_PATIENT_ID, TAG_REFERRING, Index
from medvault.index.users import NewUser, User, UserStore
from medvault.ledger.events import AuditEvent, EventKind, ObjectRef, Outcome

router = APIRouter(prefix="/api")


def _users(request: Request) -> UserStore:
    users: UserStore = request.app.state.users
    return users


def _index(request: Request) -> Index:
    guard: Guard = request.app.state.guard
    return guard.index


def user_json(user: User) -> dict[str, Any]:
    return {
        "name": user.name,
        "roles": sorted(user.roles),
        "disabled": user.disabled,
        "external": user.external,
        "mfa_enrolled": user.mfa_enrolled,
        "must_change_password": user.must_change_password,
        "training_expires": user.training_expires.isoformat() if user.training_expires else None,
        "created_at": user.created_at.isoformat(),
    }


def new_user_json(created: NewUser) -> dict[str, Any]:
    out: dict[str, Any] = {"user": user_json(created.user), "one_time_password": created.password}
    if created.enrolment is not None:
        out["totp"] = {
            "uri": created.enrolment.uri,
            "qr_png_base64": base64.b64encode(created.enrolment.qr_png).decode(),
            "recovery_codes": list(created.enrolment.recovery_codes),
        }
    return out


def roles_from(text: str) -> list[str]:
    roles = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in roles if r not in ROLES]
    if not roles or unknown:
        raise InvalidInput(f"roles must be a comma-separated list of: {', '.join(ROLES)}")
    return roles


def grant_kind(kind: str) -> GrantKind:
    if kind not in GRANT_KINDS:
        raise InvalidInput(f"grant kind must be one of: {', '.join(GRANT_KINDS)}")
    return cast("GrantKind", kind)


def grant_value(index: Index, kind: str, value: str) -> str:
    """Grants name patients by PatientID and departments by name; both are kept as pseudonyms."""
    if kind not in GRANT_KINDS:
        raise InvalidInput(f"grant kind must be one of: {', '.join(GRANT_KINDS)}")
    if kind == "patient":
        return index.pseudonym(TAG_PATIENT_ID, value)
    if kind == "department":
        return index.pseudonym(TAG_DEPARTMENT, value)
    return value


def referring_identity(index: Index, physician_name: str) -> str:
    return index.pseudonym(TAG_REFERRING, physician_name)


def changed(
    request: Request, who: Principal, kind: EventKind, action: str, obj_type: str, obj_id: str
) -> None:
    """Ledger an administrative change, durably, before the route answers."""
    archive: Archive = request.app.state.archive
    if archive.audit is not None:
        archive.audit.emit(
            AuditEvent(
                kind=kind,
                time=datetime.now(UTC),
                actor=actor_of(who, client_address(request)),
                action=action,
                outcome=Outcome.SUCCESS,
                object=ObjectRef(type=obj_type, id=obj_id or "-"),
            )
        )


def no_store(payload: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(payload, status_code=status, headers={"Cache-Control": "no-store"})


@router.get("/users")
def list_users(request: Request, who: ManagesUsers) -> Response:
    return no_store([user_json(u) for u in _users(request).list()])


@router.post("/users", openapi_extra=spec.NEW_USER)
async def add_user(request: Request, who: ManagesUsers) -> Response:
    fields = await read_fields(request)
    name = fields.get("name", "")
    roles = roles_from(fields.get("roles", ""))
    training = date_field(fields, "training_expires")
    created = _users(request).add_user(name, roles=roles, now=datetime.now(UTC), training_expires=training)
    changed(request, who, EventKind.USER_CHANGE, "user.add", "user", name)
    return no_store(new_user_json(created), 201)


@router.post("/users/{name}/disable")
def disable_user(name: str, request: Request, who: ManagesUsers) -> Response:
    user = _users(request).disable(name, now=datetime.now(UTC))
    changed(request, who, EventKind.USER_CHANGE, "user.disable", "user", name)
    return no_store(user_json(user))


@router.post("/users/{name}/enable")
def enable_user(name: str, request: Request, who: ManagesUsers) -> Response:
    user = _users(request).enable(name)
    changed(request, who, EventKind.USER_CHANGE, "user.enable", "user", name)
    return no_store(user_json(user))


@router.post("/users/{name}/reset-mfa")
def reset_mfa(name: str, request: Request, who: ManagesUsers) -> Response:
    enrolment = _users(request).reset_mfa(name, now=datetime.now(UTC))
    changed(request, who, EventKind.USER_CHANGE, "user.reset_mfa", "user", name)
    return no_store(
        {
            "uri": enrolment.uri,
            "qr_png_base64": base64.b64encode(enrolment.qr_png).decode(),
            "recovery_codes": list(enrolment.recovery_codes),
        }
    )


@router.put("/users/{name}/roles", openapi_extra=spec.ROLES)
async def set_roles(name: str, request: Request, who: ManagesUsers) -> Response:
    fields = await read_fields(request)
    user = _users(request).set_roles(name, roles_from(fields.get("roles", "")))
    changed(request, who, EventKind.ROLE_CHANGE, "user.set_roles", "user", name)
    return no_store(user_json(user))


@router.put("/users/{name}/training", openapi_extra=spec.TRAINING)
async def set_training(name: str, request: Request, who: ManagesUsers) -> Response:
    fields = await read_fields(request)
    expires = date_field(fields, "expires")
    if expires is None:
        raise InvalidInput("expires must be a date (YYYY-MM-DD)")
    user = _users(request).set_training(name, expires)
    changed(request, who, EventKind.USER_CHANGE, "user.training", "user", name)
    return no_store(user_json(user))


@router.put("/users/{name}/referring", openapi_extra=spec.REFERRING)
async def set_referring(name: str, request: Request, who: ManagesUsers) -> Response:
    """The name under which studies list this user as referring physician (e.g. DOE^JOHN)."""
    fields = await read_fields(request)
    physician = fields.get("physician_name", "")
    identity = referring_identity(_index(request), physician) if physician else None
    user = _users(request).set_referring_id(name, identity)
    changed(request, who, EventKind.USER_CHANGE, "user.referring", "user", name)
    return no_store(user_json(user))


@router.get("/users/{name}/grants")
def list_grants(name: str, request: Request, who: ManagesUsers) -> Response:
    grants = _users(request).list_grants(name)
    return no_store(
        [
            {
                "kind": g.kind,
                "value": g.value,
                "created_at": g.created_at.isoformat(),
                "expires_at": g.expires_at.isoformat() if g.expires_at else None,
            }
            for g in grants
        ]
    )


@router.post("/users/{name}/grants", openapi_extra=spec.GRANT)
async def add_grant(name: str, request: Request, who: ManagesUsers) -> Response:
    fields = await read_fields(request)
    kind = grant_kind(fields.get("kind", ""))
    value = grant_value(_index(request), kind, fields.get("value", ""))
    days = days_field(fields, "days")
    expires = datetime.now(UTC) + timedelta(days=days) if days else None
    _users(request).grant(name, kind=kind, value=value, now=datetime.now(UTC), expires_at=expires)
    changed(request, who, EventKind.GRANT_CHANGE, f"grant.add.{kind}", "user", name)
    return Response(status_code=204)


@router.delete("/users/{name}/grants", openapi_extra=spec.REVOKE_GRANT)
async def revoke_grant(name: str, request: Request, who: ManagesUsers) -> Response:
    fields = await read_fields(request)
    kind = fields.get("kind", "")
    removed = _users(request).revoke_grant(
        name, kind=kind, value=grant_value(_index(request), kind, fields.get("value", ""))
    )
    changed(request, who, EventKind.GRANT_CHANGE, f"grant.revoke.{kind}", "user", name)
    return no_store({"removed": removed})


@router.get("/apikeys")
def list_api_keys(request: Request, who: ManagesUsers) -> Response:
    keys: ApiKeyStore = request.app.state.api_keys
    return no_store(
        [
            {
                "name": k.name,
                "role": k.role,
                "created_at": k.created_at.isoformat(),
                "expires_at": k.expires_at.isoformat() if k.expires_at else None,
                "revoked": k.revoked_at is not None,
            }
            for k in keys.list()
        ]
    )


@router.post("/apikeys", openapi_extra=spec.NEW_API_KEY)
async def create_api_key(request: Request, who: ManagesUsers) -> Response:
    fields = await read_fields(request)
    role = fields.get("role", "")
    if role not in ROLES:
        raise InvalidInput(f"role must be one of: {', '.join(ROLES)}")
    keys: ApiKeyStore = request.app.state.api_keys
    key = keys.create(fields.get("name", ""), role=role, expires_days=days_field(fields, "expires_days"))
    changed(request, who, EventKind.APIKEY_CHANGE, "apikey.create", "apikey", fields.get("name", ""))
    return no_store({"name": fields.get("name"), "role": role, "key": key}, 201)


@router.delete("/apikeys/{name}")
def revoke_api_key(name: str, request: Request, who: ManagesUsers) -> Response:
    keys: ApiKeyStore = request.app.state.api_keys
    keys.revoke(name)
    changed(request, who, EventKind.APIKEY_CHANGE, "apikey.revoke", "apikey", name)
    return Response(status_code=204)


@router.post("/breakglass", openapi_extra=spec.BREAK_GLASS)
async def open_break_glass(request: Request, who: UsesBreakGlass) -> Response:
    """Open a study outside one's scope for a limited time, giving a reason (audited)."""
    fields = await read_fields(request)
    guard: Guard = request.app.state.guard
    session = _users(request).open_break_glass(
        who,
        study_uid=fields.get("study_uid", ""),
        reason=fields.get("reason", ""),
        now=datetime.now(UTC),
        pdp=guard.pdp,
        client=client_address(request),
    )
    archive: Archive = request.app.state.archive
    if archive.audit is not None:
        # The reason is free text that may name a patient: it stays encrypted in the session
        # record, and the ledger carries its SHA-256 so the text auditors see is provably the one given.
        reason_hash = hashlib.sha256(fields.get("reason", "").encode()).hexdigest()
        facts = archive.index.study_facts(study_uid=session.study_uid)
        archive.audit.emit(
            AuditEvent(
                kind=EventKind.BREAK_GLASS,
                time=datetime.now(UTC),
                actor=actor_of(who, client_address(request)),
                action="breakglass.open",
                outcome=Outcome.SUCCESS,
                object=ObjectRef(type="study", id=session.study_uid),
                patient=next(iter(facts.values())).patient if facts else None,
                details={"reason_sha256": reason_hash, "expires_at": session.expires_at.isoformat()},
            )
        )
    return no_store({"study_uid": session.study_uid, "expires_at": session.expires_at.isoformat()}, 201)


@router.get("/breakglass")
def list_break_glass(request: Request, who: ReviewsBreakGlass) -> Response:
    sessions = _users(request).list_break_glass()
    return no_store(
        [
            {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(s).items() if k != "id"}
            for s in sessions
        ]
    )
