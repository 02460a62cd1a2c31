"""The ledger at /ledger (DESIGN.md "Interfaces"): entries exactly as hashed, the latest signed
checkpoint, the note verifier key, and RFC 9162 proofs. Reading it needs ledger.read."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from medvault.access.policy import Action, Principal
from medvault.api.auth import require
from medvault.archive import Archive
from medvault.errors import NotFound
from medvault.ledger.bundle import BUNDLE_MEDIA_TYPE, MAX_BUNDLE_ENTRIES, encode_bundle
from medvault.ledger.store import Ledger

router = APIRouter(prefix="/ledger")
ReadsLedger = Annotated[Principal, Depends(require(Action.LEDGER_READ))]
_MAX_INDEX = 2**63 - 1  # SQLite's INTEGER: a larger number is no index of any log
NonNegative = Annotated[int, Query(ge=0, le=_MAX_INDEX)]


def _ledger(request: Request) -> Ledger:
    archive: Archive = request.app.state.archive
    if archive.audit is None:
        raise NotFound("this archive keeps no ledger")
    return archive.audit.ledger


@router.get("/entries")
def entry_bundle(
    request: Request,
    who: ReadsLedger,
    start: NonNegative,
    count: Annotated[int, Query(ge=1, le=MAX_BUNDLE_ENTRIES)] = 256,
) -> Response:
    """Consecutive entries from ``start`` as an entry bundle (docs/ledger.md): at most ``count``
    and 4 MiB; the ``Medvault-Entry-Count`` header says how many. For mirrors copying the log."""
    ledger = _ledger(request)
    entries = ledger.entries(start, min(start + count, ledger.size))
    body, n = encode_bundle(entries)
    return Response(body, media_type=BUNDLE_MEDIA_TYPE, headers={"Medvault-Entry-Count": str(n)})


@router.get("/entries/{index}")
def entry(index: Annotated[int, Path(le=_MAX_INDEX)], request: Request, who: ReadsLedger) -> Response:
    """The leaf bytes exactly as hashed into the tree (canonical JSON, RFC 8785)."""
    if index < 0:
        raise NotFound("no such entry")
    return Response(_ledger(request).entry(index), media_type="application/json")


@router.get("/checkpoint")
def checkpoint(request: Request, who: ReadsLedger) -> Response:
    """The latest signed checkpoint (C2SP tlog-checkpoint as a signed note). With witnesses
    configured, the newest one a quorum of them cosigned (with their cosignatures), until then the
    newest with the cosignatures it has."""
    ledger = _ledger(request)
    quorum = getattr(request.app.state, "witness_quorum", 0)
    note = ledger.cosigned_checkpoint(quorum) if quorum else None
    if note is None:
        note = ledger.latest_checkpoint()
    if note is None or not note:
        note = ledger.checkpoint()
    return Response(note, media_type="text/plain; charset=utf-8")


@router.get("/key")
def key(request: Request, who: ReadsLedger) -> Response:
    """The note verifier key: <name>+<hex key hash>+<base64(0x01 || Ed25519 public key)>."""
    return Response(_ledger(request).verifier_key_text() + "\n", media_type="text/plain; charset=utf-8")


@router.get("/proof/inclusion")
def inclusion(index: NonNegative, tree_size: NonNegative, request: Request, who: ReadsLedger) -> Response:
    return JSONResponse(_ledger(request).inclusion_proof(index, tree_size).to_json())


@router.get("/proof/consistency")
def consistency(first: NonNegative, second: NonNegative, request: Request, who: ReadsLedger) -> Response:
    return JSONResponse(_ledger(request).consistency_proof(first, second).to_json())


@router.get("/disclosures")
def disclosures_report(
    patient_id: Annotated[str, Query(min_length=1, max_length=64)],
    request: Request,
    who: ReadsLedger,
    since: str | None = None,
) -> Response:
    """Accounting of disclosures (45 CFR 164.528): who accessed which of this patient's studies,
    when, how and why. The patient ID travels in the query string, which is never logged."""
    from datetime import UTC, date, datetime

    from medvault.errors import InvalidInput
    from medvault.reports import disclosures

    archive: Archive = request.app.state.archive
    try:
        start = datetime.combine(date.fromisoformat(since), datetime.min.time(), UTC) if since else None
    except ValueError:
        raise InvalidInput("since must be a date (YYYY-MM-DD)") from None
    rows = disclosures(archive, patient_id, since=start)
    return JSONResponse([r.as_dict() for r in rows], headers={"Cache-Control": "no-store"})
