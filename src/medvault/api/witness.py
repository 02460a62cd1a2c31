"""The witness's HTTP interface (C2SP tlog-witness), served by ``medvault witness serve``.

    POST /add-checkpoint          old size, consistency proof, signed checkpoint -> cosignature lines
    GET  /latest?origin=ORIGIN    the latest checkpoint cosigned for a log, with a fresh cosignature
    GET  /healthz                 {"status": "ok", "name": ..., "logs": n}

There is no authentication beyond the log's signature on the checkpoint (as the spec says): the
witness only ever signs what it verified, so anyone may submit. Bodies are bounded before they are
read; each refusal carries the spec's status code and a one-line reason.
"""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from medvault.errors import WitnessRefused
from medvault.ledger.note import split_note
from medvault.ledger.witness import MAX_REQUEST_BYTES, Recorded, parse_add_checkpoint
from medvault.witness_home import OpenWitness

__all__ = ["witness_app"]

SIZE_MEDIA_TYPE = "text/x.tlog.size"  # SPEC: the body of a 409 for an old-size mismatch


async def _bounded_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_REQUEST_BYTES):
        raise WitnessRefused(413, f"request body over {MAX_REQUEST_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_REQUEST_BYTES:
            raise WitnessRefused(413, f"request body over {MAX_REQUEST_BYTES} bytes")
    return bytes(body)


def _refusal(exc: WitnessRefused) -> Response:
    if exc.http_status == 409 and exc.latest_size is not None:
        # Set as a header: starlette would add "; charset=utf-8" to a text/* media type.
        return Response(f"{exc.latest_size}\n", status_code=409, headers={"content-type": SIZE_MEDIA_TYPE})
    return PlainTextResponse(exc.message + "\n", status_code=exc.http_status)


def witness_app(witness: OpenWitness) -> FastAPI:
    """The ASGI app of one opened witness home."""
    app = FastAPI(title="medvault witness", openapi_url=None, docs_url=None, redoc_url=None)
    logs = witness.config.verifiers()  # parsed once: `add-log` takes effect at the next start

    def cosign(recorded: Recorded) -> str:
        return witness.cosigner.cosign(split_note(recorded.note)[0], int(time.time()))

    @app.post("/add-checkpoint")
    async def add_checkpoint(request: Request) -> Response:
        try:
            parsed = parse_add_checkpoint(await _bounded_body(request))
            lines = await run_in_threadpool(
                witness.store.add_checkpoint, parsed, logs, cosign, now=int(time.time())
            )
        except WitnessRefused as exc:
            return _refusal(exc)
        return PlainTextResponse(lines, media_type="text/plain; charset=utf-8")

    @app.get("/latest")
    async def latest(origin: str) -> Response:
        recorded = await run_in_threadpool(witness.store.latest, origin)
        if recorded is None or origin not in logs:
            return PlainTextResponse("no checkpoint cosigned for this origin\n", status_code=404)
        return Response(recorded.note + cosign(recorded).encode(), media_type="text/plain; charset=utf-8")

    @app.get("/healthz")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok", "name": witness.config.name, "logs": len(witness.config.logs)})

    return app
