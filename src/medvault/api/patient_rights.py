"""A patient's rights over HTTPS (``patient.rights``: the privacy officer and the archivist):
the right of access bundle at /api/patients/access and erasure requests at
/api/erasure-requests. Translation only; medvault.compliance decides and ledgers. The patient's ID
travels in the body, never in a URL."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from medvault.access.policy import Action, Principal
from medvault.api import openapi as spec
from medvault.api.account import read_fields
from medvault.api.auth import client_address, require
from medvault.archive import Archive
from medvault.audit import actor_of
from medvault.compliance import erasure
from medvault.compliance.access import write_access_bundle
from medvault.config import RetentionRule, load_settings
from medvault.errors import InvalidInput
from medvault.index.erasure import ErasureRequest, ErasureStore
from medvault.ledger.events import Actor

router = APIRouter(prefix="/api")
Officer = Annotated[Principal, Depends(require(Action.PATIENT_RIGHTS))]
RequestId = Annotated[int, Path(ge=1, le=2**62)]


def _answer(payload: object, status: int = 200) -> JSONResponse:
    return JSONResponse(payload, status_code=status, headers={"Cache-Control": "no-store"})


def _field(fields: dict[str, str], name: str) -> str:
    value = fields.get(name, "").strip()
    if not value:
        raise InvalidInput(f"{name} is required")
    return value


def _rules(request: Request) -> tuple[RetentionRule, ...]:
    """The retention rules in force now (medvault.toml, as the scheduled job reads them)."""
    root: FilePath | None = getattr(request.app.state, "home_root", None)
    return () if root is None else load_settings(root).retention.rules


def _actor(request: Request, who: Principal) -> Actor:
    return actor_of(who, client_address(request))


@router.post("/patients/access", openapi_extra=spec.PATIENT_ACCESS)
async def patient_access(request: Request, who: Officer) -> Response:
    """Right of access: the patient's images as stored and the accounting of their disclosures,
    one ZIP (``patient_id`` and the request's ``reference`` in the body). Ledgered per study."""
    fields = await read_fields(request)
    patient_id, reference = _field(fields, "patient_id"), _field(fields, "reference")
    archive: Archive = request.app.state.archive
    # Inside the home (0700), never the system's temp folder: the bundle holds the patient's images
    # in clear until it is sent, and is removed as soon as it has been (or could not be).
    root: FilePath | None = getattr(request.app.state, "home_root", None)
    spool = None if root is None else root / "run"
    if spool is not None:
        spool.mkdir(mode=0o700, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="access-", dir=spool)  # 0700; the bundle itself is 0600
    target = FilePath(folder) / "access.zip"

    def cleanup() -> None:
        target.unlink(missing_ok=True)
        os.rmdir(folder)

    try:
        await run_in_threadpool(
            write_access_bundle, archive, patient_id, target, actor=_actor(request, who), reference=reference
        )
    except BaseException:
        cleanup()
        raise
    return FileResponse(
        target,
        media_type="application/zip",
        filename=f"access-{reference.replace('/', '-')}.zip",
        headers={"Cache-Control": "no-store"},
        background=BackgroundTask(cleanup),
    )


def _json(request: ErasureRequest) -> dict[str, object]:
    return request.to_json()


@router.post("/erasure-requests", openapi_extra=spec.ERASURE_REQUEST)
async def request_erasure(request: Request, who: Officer) -> Response:
    """Record a patient's erasure request (``patient_id``, ``reference``, ``grounds``)."""
    fields = await read_fields(request)
    made = await run_in_threadpool(
        erasure.request_erasure,
        request.app.state.archive,
        _field(fields, "patient_id"),
        reference=_field(fields, "reference"),
        grounds=_field(fields, "grounds"),
        actor=_actor(request, who),
    )
    return _answer(_json(made), 201)


@router.get("/erasure-requests")
def list_erasure_requests(request: Request, who: Officer) -> Response:
    """Every erasure request and where it stands."""
    store = ErasureStore(request.app.state.archive.index)
    return _answer({"erasure_requests": [_json(r) for r in store.requests()]})


@router.get("/erasure-requests/{request_id}")
def get_erasure_request(request: Request, request_id: RequestId, who: Officer) -> Response:
    return _answer(_json(ErasureStore(request.app.state.archive.index).get(request_id)))


@router.post("/erasure-requests/{request_id}/approve")
def approve_erasure(request: Request, request_id: RequestId, who: Officer) -> Response:
    """The second person's approval (403 for the requester; 403 naming each study while a legal
    hold or a retention minimum applies)."""
    archive: Archive = request.app.state.archive
    done = erasure.approve_erasure(archive, _rules(request), request_id, actor=_actor(request, who))
    return _answer(_json(done))


@router.post("/erasure-requests/{request_id}/execute")
def execute_erasure(request: Request, request_id: RequestId, who: Officer) -> Response:
    """Crypto-shred the patient's studies; the answer is the certificate of erasure."""
    archive: Archive = request.app.state.archive
    erasure.execute_erasure(archive, _rules(request), request_id, actor=_actor(request, who))
    return _answer(erasure.certificate(archive, request_id))


@router.post("/erasure-requests/{request_id}/cancel")
def cancel_erasure(request: Request, request_id: RequestId, who: Officer) -> Response:
    done = erasure.cancel_erasure(request.app.state.archive, request_id, actor=_actor(request, who))
    return _answer(_json(done))


@router.get("/erasure-requests/{request_id}/certificate")
def erasure_certificate(request: Request, request_id: RequestId, who: Officer) -> Response:
    """The certificate of erasure of an executed request (409 before)."""
    return _answer(erasure.certificate(request.app.state.archive, request_id))
