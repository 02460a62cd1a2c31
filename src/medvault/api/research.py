"""Research exports over HTTP: ``POST /research/exports`` returns a ZIP of de-identified instances.

For the ``researcher`` role (``deid.read`` + ``deid.export``, never PHI): the route requires
``deid.export``; every study is checked through the policy decision point for that subject
(studies outside its grants are silently left out, as a search would), and every permitted
decision must carry the ``deidentify`` obligation, which :func:`medvault.export.export_studies`
honours (every output goes through the PS3.15 engine and is checked for its marks). Nothing in
the answer names an original UID or a patient: file names are the new UIDs, the counts are in
``X-Medvault-*`` headers.

Body (``application/x-www-form-urlencoded`` or ``application/json``):

* ``project`` (required), ``options`` (comma list of PS3.15 option names, may be empty),
  ``keep_map`` (``true`` keeps the re-identification map, encrypted, for the site only);
* every other field is a QIDO-RS query parameter (``PatientID``, ``StudyDate``, ``ModalitiesInStudy``,
  ``limit`` …). JSON: ``{"project": "p", "options": "a,b" | ["a", "b"], "query": {"StudyDate": "2020-"}}``
  (``query`` may also be a list of ``[key, value]`` pairs).

The ZIP is built in a spooled temporary file (memory, then disk) and streamed; an export whose
stored size exceeds ``app.state.research_max_export_bytes`` (default 2 GiB) is refused with 413
before any work. The state is set by :func:`install` (``app.state.export_source``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from medvault.access.policy import OBLIGATION_DEIDENTIFY, Action, Context, Principal
from medvault.api import openapi as spec
from medvault.api.auth import client_address, require
from medvault.api.bodies import read_pairs
from medvault.audit import actor_of
from medvault.errors import ConfigError, IntegrityError, InvalidInput
from medvault.export import DEFAULT_MAX_EXPORT_BYTES, ExportSource, ExportSummary, ZipSink, export_studies
from medvault.guard import Guard, resource_of
from medvault.home import OpenHome
from medvault.index.store import StudyFacts

__all__ = ["CanExport", "install", "router"]

router = APIRouter(prefix="/research")
MAX_BODY_BYTES = 64 * 1024
_CONTROL = frozenset({"project", "options", "keep_map"})
_CHUNK = 1024 * 1024

CanExport = Annotated[Principal, Depends(require(Action.DEID_EXPORT))]


def install(
    app: FastAPI, opened: OpenHome | ExportSource, *, max_export_bytes: int = DEFAULT_MAX_EXPORT_BYTES
) -> None:
    """Give the app what research exports need (the project keys' source) and include the router
    (once). ``create_app`` can include :data:`router` itself; then this only sets the state."""
    app.state.export_source = opened if isinstance(opened, ExportSource) else ExportSource.of(opened)
    app.state.research_max_export_bytes = max_export_bytes
    if not any(getattr(r, "path", "").startswith(router.prefix) for r in app.routes):
        app.include_router(router)


async def _read_body(request: Request) -> list[tuple[str, str]]:
    kind, data = await read_pairs(request, MAX_BODY_BYTES)
    return _json_pairs(data) if kind == "json" else list(data)


def _json_pairs(data: Any) -> list[tuple[str, str]]:
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object")
    pairs: list[tuple[str, str]] = []
    for key in ("project", "keep_map"):
        if key in data:
            value = data[key]
            if isinstance(value, bool):
                value = "true" if value else "false"
            if not isinstance(value, str):
                raise InvalidInput(f"{key} must be a string")
            pairs.append((key, value))
    options = data.get("options", "")
    if isinstance(options, list) and all(isinstance(o, str) for o in options):
        options = ",".join(options)
    if not isinstance(options, str):
        raise InvalidInput("options must be a comma list or a list of strings")
    pairs.append(("options", options))
    query = data.get("query", {})
    items = query.items() if isinstance(query, dict) else query
    try:
        for key, value in items:
            if not isinstance(key, str) or not isinstance(value, str | int):
                raise InvalidInput("query values must be strings")
            pairs.append((key, str(value)))
    except (TypeError, ValueError):
        raise InvalidInput("query must be an object or a list of [key, value] pairs") from None
    unknown = set(data) - {"project", "keep_map", "options", "query"}
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
    return pairs


def _split(pairs: list[tuple[str, str]]) -> tuple[str, list[str], bool, list[tuple[str, str]]]:
    fields: dict[str, str] = {}
    query: list[tuple[str, str]] = []
    for key, value in pairs:
        if key in _CONTROL:
            if key in fields:
                raise InvalidInput(f"{key} is given twice")
            fields[key] = value
        else:
            query.append((key, value))
    project = fields.get("project", "").strip()
    if not project:
        raise InvalidInput("missing field: project")
    options = [o.strip() for o in fields.get("options", "").split(",") if o.strip()]
    keep = fields.get("keep_map", "false").strip().lower()
    if keep not in ("true", "false", "1", "0", "yes", "no", ""):
        raise InvalidInput("keep_map must be true or false")
    return project, options, keep in ("true", "1", "yes"), query


def export_filter(guard: Guard, who: Principal, client: str | None) -> Callable[[StudyFacts], bool]:
    """Per-study ``deid.export`` decisions for this subject (each recorded by the decision point):
    a study passes only when permitted **with** the ``deidentify`` obligation."""
    context = Context(now=datetime.now(UTC), client=client)

    def check(facts: StudyFacts) -> bool:
        decision = guard.pdp.decide(who, Action.DEID_EXPORT, resource_of(facts), context)
        if not decision.allowed:
            return False
        if OBLIGATION_DEIDENTIFY not in decision.obligations:
            # The policy must bind every research export to the engine; anything else is a bug.
            raise IntegrityError("a research export was permitted without the de-identify obligation")
        return True

    return check


def _stream(sink: ZipSink) -> Iterator[bytes]:
    try:
        while chunk := sink.file.read(_CHUNK):
            yield chunk
    finally:
        sink.discard()


def _headers(summary: ExportSummary, size: int) -> dict[str, str]:
    return {
        "Content-Disposition": f'attachment; filename="{summary.project}-{summary.export_id}.zip"',
        "Content-Length": str(size),
        "X-Medvault-Export-Id": summary.export_id,
        "X-Medvault-Studies": str(len(summary.studies)),
        "X-Medvault-Instances": str(summary.exported),
        "X-Medvault-Excluded": str(summary.excluded),
        "X-Medvault-Failed": str(summary.failed),
    }


@router.post("/exports", openapi_extra=spec.EXPORT)
async def create_export(request: Request, who: CanExport) -> Response:
    """De-identify the matching studies within the caller's grants and return them as a ZIP."""
    pairs = await _read_body(request)
    project, options, keep_map, query = _split(pairs)
    source: ExportSource | None = getattr(request.app.state, "export_source", None)
    if source is None:
        raise ConfigError("research exports are not configured on this server")
    limit: int = getattr(request.app.state, "research_max_export_bytes", DEFAULT_MAX_EXPORT_BYTES)
    guard: Guard = request.app.state.guard
    client = client_address(request)
    sink = ZipSink(max_bytes=limit)

    def run() -> ExportSummary:
        return export_studies(
            source,
            query_params=query,
            project=project,
            options=options,
            sink=sink,
            actor=actor_of(who, client),
            keep_map=keep_map,
            study_filter=export_filter(guard, who, client),
            max_bytes=limit,
        )

    try:
        summary = await run_in_threadpool(run)
    except BaseException:
        sink.discard()
        raise
    return StreamingResponse(
        _stream(sink), media_type="application/zip", headers=_headers(summary, sink.size)
    )
