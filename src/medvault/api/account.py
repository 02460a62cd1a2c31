"""Sign-in and sessions at /auth: OAuth 2.0 password and refresh grants (with an `otp` field),
cookie sessions for the web console, logout and password change.

Bodies are `application/x-www-form-urlencoded` (as OAuth 2.0 clients send them) or JSON.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from medvault.access.tokens import TokenPair
from medvault.alerting.responses import lift_event
from medvault.api import openapi as spec
from medvault.api.auth import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    Authenticated,
    client_address,
    csrf_token_for,
)
from medvault.api.bodies import read_pairs
from medvault.archive import Archive
from medvault.errors import InvalidInput, MedvaultError
from medvault.index.alerts import AlertStore
from medvault.index.users import User, UserStore, account_name
from medvault.ledger.events import Actor, ActorKind, AuditEvent, EventKind, Outcome

router = APIRouter(prefix="/auth")
MAX_FORM_BYTES = 16 * 1024


async def read_fields(request: Request) -> dict[str, str]:
    """A sign-in or admin form: URL-encoded or a JSON object of strings, at most 16 KiB."""
    kind, data = await read_pairs(request, MAX_FORM_BYTES)
    if kind == "form":
        return dict(data)
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise InvalidInput("the body must be a JSON object of strings")
    return {str(k): v for k, v in data.items()}


def _required(fields: dict[str, str], *names: str) -> list[str]:
    missing = [n for n in names if not fields.get(n)]
    if missing:
        raise InvalidInput(f"missing field(s): {', '.join(missing)}")
    return [fields[n] for n in names]


def _token_answer(pair: TokenPair) -> JSONResponse:
    return JSONResponse(
        {
            "access_token": pair.access_token,
            "refresh_token": pair.refresh_token,
            "token_type": "bearer",
            "expires_in": pair.expires_in,
        },
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


def _login_event(
    request: Request, username: str, outcome: Outcome, reason: str | None, *, action: str = "auth.token"
) -> None:
    archive: Archive = request.app.state.archive
    if archive.audit is None:
        return
    archive.audit.emit(
        AuditEvent(
            kind=EventKind.LOGIN,
            time=datetime.now(UTC),
            actor=Actor(
                kind=ActorKind.USER,
                id=account_name(username) or "-",
                address=client_address(request),
                auth="refresh_token" if action == "auth.refresh" else "password+totp",
            ),
            action=action,
            outcome=outcome,
            reason=reason,
        )
    )


def _sign_in(request: Request, fields: dict[str, str]) -> TokenPair:
    users: UserStore = request.app.state.users
    now = datetime.now(UTC)
    username, password = _required(fields, "username", "password")
    try:
        user = _authenticate(request, users, username, password, fields, now)
    except MedvaultError as exc:
        _login_event(request, username, Outcome.DENIED, exc.message)
        raise
    _login_event(request, username, Outcome.SUCCESS, None)
    _meet_step_up(request, user.name, now)
    return users.issue_tokens(user, now=now)


def _meet_step_up(request: Request, name: str, now: datetime) -> None:
    """A full sign-in (password and second factor) is what a step-up hold asks for: lift it."""
    alerts: AlertStore | None = getattr(request.app.state, "alerts", None)
    archive: Archive = request.app.state.archive
    if alerts is None or not alerts.is_held("step_up", name):
        return
    lifted = alerts.lift_all("step_up", name, by="sign-in with password and second factor", now=now)
    if archive.audit is not None and lifted:
        actor = Actor(kind=ActorKind.USER, id=name, address=client_address(request), auth="password+totp")
        archive.audit.emit_many([lift_event(hold, actor, now=now) for hold in lifted])


def _authenticate(
    request: Request, users: UserStore, username: str, password: str, fields: dict[str, str], now: datetime
) -> User:
    return users.authenticate_password(
        username, password, fields.get("otp", ""), client_address(request) or "-", now
    )


@router.post("/token", openapi_extra=spec.TOKEN)
async def token(request: Request) -> Response:
    """OAuth 2.0 token endpoint: grant_type=password (username, password, otp) or refresh_token."""
    fields = await read_fields(request)
    grant = fields.get("grant_type", "password")
    users: UserStore = request.app.state.users
    if grant == "password":
        pair = await run_in_threadpool(_sign_in, request, fields)
    elif grant == "refresh_token":
        (refresh,) = _required(fields, "refresh_token")
        try:
            pair = await run_in_threadpool(users.refresh, refresh, now=datetime.now(UTC))
        except MedvaultError as exc:  # replayed, expired, revoked or held: worth a look by the monitor
            _login_event(request, "", Outcome.DENIED, exc.message, action="auth.refresh")
            raise
    else:
        raise InvalidInput("grant_type must be password or refresh_token")
    return _token_answer(pair)


@router.post("/session", openapi_extra=spec.SIGN_IN)
async def session(request: Request) -> Response:
    """Sign in for the web console: the access token goes into a Secure, HttpOnly, SameSite=Strict
    cookie; the answer carries the CSRF token to send as X-CSRF-Token on changing requests."""
    fields = await read_fields(request)
    pair = await run_in_threadpool(_sign_in, request, fields)
    csrf = csrf_token_for(pair.access_token)
    response = JSONResponse(
        {"csrf_token": csrf, "expires_in": pair.expires_in}, headers={"Cache-Control": "no-store"}
    )
    response.set_cookie(
        SESSION_COOKIE,
        pair.access_token,
        max_age=pair.expires_in,
        secure=True,
        httponly=True,
        samesite="strict",
        path="/",
    )
    response.set_cookie(
        CSRF_COOKIE, csrf, max_age=pair.expires_in, secure=True, httponly=False, samesite="strict", path="/"
    )
    return response


def _presented_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, credential = header.partition(" ")
    if scheme.lower() == "bearer" and credential.strip():
        return credential.strip()
    return request.cookies.get(SESSION_COOKIE, "")


@router.post("/logout")
def logout(request: Request, who: Authenticated) -> Response:
    """Sign out: revoke every session of this user (access and refresh tokens) at once."""
    users: UserStore = request.app.state.users
    users.logout(_presented_token(request), now=datetime.now(UTC))
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    response.delete_cookie(CSRF_COOKIE, path="/", secure=True, samesite="strict")
    return response


@router.post("/password", openapi_extra=spec.PASSWORD)
async def change_password(request: Request) -> Response:
    """Change one's own password (also after a one-time password): old password, new password and
    the second factor (`otp`: a TOTP code or a recovery code). Revokes every session."""
    fields = await read_fields(request)
    username, old, new = _required(fields, "username", "old_password", "new_password")
    users: UserStore = request.app.state.users
    await run_in_threadpool(
        lambda: users.change_password(
            username,
            old_password=old,
            new_password=new,
            otp=fields.get("otp", ""),
            client=client_address(request) or "-",
            now=datetime.now(UTC),
        )
    )
    return Response(status_code=204)
