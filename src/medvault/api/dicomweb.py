"""DICOMweb (PS3.18) routes at /dicomweb: STOW-RS, QIDO-RS, WADO-RS, DELETE.

Translation only: parse the request, ask the archive, shape the answer. Authentication and the
policy decision happen in the route dependencies (``CanRead`` / ``CanStore`` / ``CanDelete``).
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydicom import dcmread
from starlette.concurrency import run_in_threadpool

from medvault.access.policy import Action, Principal
from medvault.api.auth import CanDelete, CanRead, CanStore, client_address
from medvault.api.negotiation import (
    ACCEPT_PARAMETER,
    ANY_SYNTAX,
    EXPLICIT_VR_LE,
    negotiate_dicom,
    negotiate_frames,
    negotiate_rendered,
)
from medvault.api.qido import shape_results
from medvault.archive import Archive, StoreOutcome, StoreSession
from medvault.audit import actor_of
from medvault.dicom import multipart as mp
from medvault.dicom.dicomjson import json_to_dataset, with_bulk_data_base
from medvault.dicom.query import parse_query
from medvault.dicom.render import render_frame, uncompressed_frame
from medvault.dicom.transcode import transcode_to_explicit_little_endian
from medvault.errors import (
    InvalidInput,
    MedvaultError,
    NotAcceptable,
    NotFound,
    TooLarge,
    UnsupportedMedia,
)
from medvault.guard import Guard
from medvault.index.store import InstanceRecord, Level

Json = dict[str, Any]
DICOM_JSON = "application/dicom+json"
_BATCH_BYTES = 4 * 1024 * 1024  # instances read per trip to a worker thread while streaming

router = APIRouter(prefix="/dicomweb")


def get_archive(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


ArchiveDep = Annotated[Archive, Depends(get_archive)]


def accept_query(request: Request) -> list[str]:
    """The values of the Accept Query Parameter (PS3.18 §8.3.3.1), which negotiation tries first."""
    return request.query_params.getlist(ACCEPT_PARAMETER)


def base_url(request: Request) -> str:
    """The DICOMweb root for RetrieveURL and BulkDataURI: ``[server] public_url`` when set, else the
    Host header's name with its port, or with the port this server listens on when the header has
    none (a client that drops :8443 from Host must still get URLs that reach the archive)."""
    configured: str = request.app.state.public_url
    if configured:
        return configured.rstrip("/") + "/dicomweb"
    url = request.url
    host = url.hostname or "localhost"
    host = f"[{host}]" if ":" in host else host
    server = request.scope.get("server")
    port = url.port or (server[1] if server else None)
    default = 443 if url.scheme == "https" else 80
    netloc = host if port in (None, default) else f"{host}:{port}"
    return f"{url.scheme}://{netloc}{request.scope.get('root_path', '')}/dicomweb"


def allow_study(request: Request, who: Principal, action: Action, study: str) -> None:
    """The per-study decision; out of scope answers exactly like a missing study (404). A permitted
    read is recorded in the ledger as a disclosure of that study to this subject."""
    guard: Guard = request.app.state.guard
    client = client_address(request)
    facts = guard.study(who, action, study, client=client)
    if action is Action.STUDY_READ:
        archive: Archive = request.app.state.archive
        archive.audit_disclosure("retrieve", actor_of(who, client), [facts], route=request.url.path[:300])


def json_response(payload: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(body, status_code=status_code, media_type=DICOM_JSON, headers=headers)


# -- STOW-RS ---------------------------------------------------------------------------------------


def _ref_item(o: StoreOutcome) -> Json:
    item: Json = {}
    if o.sop_class_uid:
        item["00081150"] = {"vr": "UI", "Value": [o.sop_class_uid]}
    if o.sop_instance_uid:
        item["00081155"] = {"vr": "UI", "Value": [o.sop_instance_uid]}
    return item


def _add_parts(session: StoreSession, parts: Sequence[mp.Part], first: int, limit: int) -> None:
    """Hand complete parts to the write pipeline (on a worker thread: parsing and hashing are CPU)."""
    for number, part in enumerate(parts, start=first):
        part_type = part.content_type
        if part.oversized:
            session.refuse(
                TooLarge(
                    f"part {number} is {part.length} bytes, over the instance limit of {limit} bytes",
                    hint="Raise [server] max_instance_bytes in medvault.toml if such objects are expected.",
                )
            )
        elif part_type is not None and mp.parse_media_type(part_type).type != "application/dicom":
            session.refuse(UnsupportedMedia(f"part {number} is {part_type}, not application/dicom"))
        else:
            session.add(part.body)


_WARNINGS_SHOWN = 3  # failures named in the Warning header; every one is in the body


def _warning_header(failures: list[tuple[int, MedvaultError]]) -> str:
    """A short Warning header (RFC 9111 §5.5 form): the first few failures and a count; each
    failure's reason is in the body (FailedSOPSequence items, ErrorComment)."""
    shown = [f'299 medvault "part {pos}: {error.message[:200]}"' for pos, error in failures[:_WARNINGS_SHOWN]]
    if len(failures) > _WARNINGS_SHOWN:
        shown.append(
            f'299 medvault "{len(failures) - _WARNINGS_SHOWN} more parts failed; see FailedSOPSequence"'
        )
    return ", ".join(w.replace("\r", " ").replace("\n", " ") for w in shown)


async def _stow(request: Request, archive: Archive, who: Principal, study_uid: str | None) -> Response:
    content_type = request.headers.get("content-type")
    if not content_type:
        raise UnsupportedMedia(
            'Content-Type is required: multipart/related; type="application/dicom"; boundary=…'
        )
    reader = mp.MultipartReader(mp.boundary_of(content_type), max_part_bytes=archive.max_instance_bytes)
    guard: Guard = request.app.state.guard
    client = client_address(request)
    session = await run_in_threadpool(
        archive.begin_store,
        study_uid=study_uid,
        actor=actor_of(who, client),
        may_store=guard.store_check(who, client=client),
    )
    try:
        # The body is read as it arrives (the size limit is BodyLimits'); each part is stored
        # when its closing delimiter has arrived, so a request holds about one instance at a time.
        async for chunk in request.stream():
            parts = reader.feed(chunk)
            if parts:
                first = reader.parts_read - len(parts) + 1
                await run_in_threadpool(_add_parts, session, parts, first, archive.max_instance_bytes)
        reader.close()
        final = await run_in_threadpool(session.finish)
    except BaseException:
        await run_in_threadpool(session.abort)
        raise

    root = base_url(request)
    referenced, failed = [], []
    failures: list[tuple[int, MedvaultError]] = []
    for pos, o in enumerate(final, start=1):
        item = _ref_item(o)
        if o.status == "failed":
            error = o.error or MedvaultError("failed")
            item["00081197"] = {"vr": "US", "Value": [error.failure_reason]}
            item["00000902"] = {"vr": "LO", "Value": [f"part {pos}: {error.message}"[:64]]}
            failed.append(item)
            failures.append((pos, error))
        else:
            item["00081190"] = {
                "vr": "UR",
                "Value": [
                    f"{root}/studies/{o.study_uid}/series/{o.series_uid}/instances/{o.sop_instance_uid}"
                ],
            }
            if o.status == "already_present":
                item["00081196"] = {"vr": "US", "Value": [0xB000]}  # Warning: already present, unchanged
            referenced.append(item)
    payload: Json = {}
    study_uids = {o.study_uid for o in final if o.status != "failed" and o.study_uid}
    if study_uid or len(study_uids) == 1:
        payload["00081190"] = {"vr": "UR", "Value": [f"{root}/studies/{study_uid or study_uids.pop()}"]}
    if failed:
        payload["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        payload["00081199"] = {"vr": "SQ", "Value": referenced}
    if not failed:
        status = 200
    elif referenced:
        status = 202
    else:
        codes = {error.http_status for _, error in failures}
        status = codes.pop() if len(codes) == 1 else 409
    headers = {"Warning": _warning_header(failures)} if failures else None
    return json_response(payload, status, headers)


@router.post("/studies")
async def stow_studies(request: Request, archive: ArchiveDep, who: CanStore) -> Response:
    return await _stow(request, archive, who, None)


@router.post("/studies/{study}")
async def stow_study(study: str, request: Request, archive: ArchiveDep, who: CanStore) -> Response:
    return await _stow(request, archive, who, study)


# -- QIDO-RS ---------------------------------------------------------------------------------------


def _qido(
    request: Request,
    archive: Archive,
    who: Principal,
    level: Level,
    study: str | None = None,
    series: str | None = None,
) -> Response:
    query = parse_query(list(request.query_params.multi_items()))
    guard: Guard = request.app.state.guard
    hits = archive.search(
        level,
        query.criteria,
        study_uid=study,
        series_uid=series,
        offset=query.offset,
        limit=query.limit,
        visible=guard.visible(who, Action.STUDY_READ, client=client_address(request)),
    )
    archive.audit_read(
        "query",
        actor_of(who, client_address(request)),
        sorted({h.study_id for h in hits}),
        level=level,
        results=len(hits),
    )
    return json_response(shape_results(level, hits, query, index=archive.index, base_url=base_url(request)))


@router.get("/studies")
def search_studies(request: Request, archive: ArchiveDep, who: CanRead) -> Response:
    return _qido(request, archive, who, "study")


@router.get("/series")
def search_series(request: Request, archive: ArchiveDep, who: CanRead) -> Response:
    return _qido(request, archive, who, "series")


@router.get("/instances")
def search_instances(request: Request, archive: ArchiveDep, who: CanRead) -> Response:
    return _qido(request, archive, who, "instance")


@router.get("/studies/{study}/series")
def search_study_series(study: str, request: Request, archive: ArchiveDep, who: CanRead) -> Response:
    return _qido(request, archive, who, "series", study)


@router.get("/studies/{study}/instances")
def search_study_instances(study: str, request: Request, archive: ArchiveDep, who: CanRead) -> Response:
    return _qido(request, archive, who, "instance", study)


@router.get("/studies/{study}/series/{series}/instances")
def search_series_instances(
    study: str, series: str, request: Request, archive: ArchiveDep, who: CanRead
) -> Response:
    return _qido(request, archive, who, "instance", study, series)


# -- WADO-RS: instances ----------------------------------------------------------------------------


def _serve_bytes(archive: Archive, record: InstanceRecord, transfer_syntax: str) -> bytes:
    data = archive.read(record)
    if transfer_syntax in (ANY_SYNTAX, record.transfer_syntax):
        return data
    return transcode_to_explicit_little_endian(data)


def _retrieve(
    request: Request, archive: Archive, who: Principal, study: str, series: str | None, sop: str | None
) -> Response:
    allow_study(request, who, Action.STUDY_READ, study)
    choice = negotiate_dicom(
        request.headers.get("accept"), single_instance=sop is not None, query=accept_query(request)
    )
    records = archive.instances(study, series, sop)
    if choice.transfer_syntax not in (ANY_SYNTAX, EXPLICIT_VR_LE):
        if {r.transfer_syntax for r in records} != {choice.transfer_syntax}:
            raise _syntax_not_available(choice.transfer_syntax)
    if choice.single_part:
        return Response(
            _serve_bytes(archive, records[0], choice.transfer_syntax), media_type="application/dicom"
        )
    # Read the first instance before answering, so a missing or corrupt object is a clean error.
    first = _serve_bytes(archive, records[0], choice.transfer_syntax)
    boundary = mp.new_boundary()
    heads = [_part_head(boundary, choice.transfer_syntax, r) for r in records]
    closing = mp.closing(boundary)
    headers: dict[str, str] = {}
    as_stored = all(choice.transfer_syntax in (ANY_SYNTAX, r.transfer_syntax) for r in records)
    if as_stored:
        # every part's size is known, so the body needs no chunked framing
        size = sum(len(head) + record.size + 2 for head, record in zip(heads, records, strict=True))
        headers["Content-Length"] = str(size + len(closing))

    def read_batch(batch: Sequence[tuple[bytes, InstanceRecord]]) -> bytes | memoryview:
        if not as_stored:  # transcoding: sizes are known only once done
            return b"".join(
                head + _serve_bytes(archive, record, choice.transfer_syntax) + b"\r\n"
                for head, record in batch
            )
        # as stored: each instance is decrypted straight into its place in the batch buffer
        buffer = memoryview(bytearray(sum(len(head) + record.size + 2 for head, record in batch)))
        pos = 0
        places: list[tuple[InstanceRecord, memoryview]] = []
        for head, record in batch:
            buffer[pos : pos + len(head)] = head
            pos += len(head)
            places.append((record, buffer[pos : pos + record.size]))
            pos += record.size
            buffer[pos : pos + 2] = b"\r\n"
            pos += 2
        archive.read_many_into(places)
        return buffer

    async def stream() -> AsyncIterator[bytes | memoryview]:
        yield heads[0] + first + b"\r\n"
        pending = list(zip(heads[1:], records[1:], strict=True))
        while pending:  # a few MB per trip to a worker thread: reading, decrypting, verifying
            take, batch_bytes = 0, 0
            while take < len(pending) and (take == 0 or batch_bytes < _BATCH_BYTES):
                batch_bytes += pending[take][1].size
                take += 1
            batch, pending = pending[:take], pending[take:]
            yield await anyio.to_thread.run_sync(read_batch, batch)
        yield closing

    return StreamingResponse(
        stream(),
        media_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
        headers=headers,
    )


def _syntax_not_available(syntax: str) -> NotAcceptable:
    return NotAcceptable(
        f"transfer syntax {syntax} is not available; ask for transfer-syntax=* (as stored) "
        "or 1.2.840.10008.1.2.1 (Explicit VR Little Endian)"
    )


def _part_head(boundary: str, requested: str, record: InstanceRecord) -> bytes:
    syntax = record.transfer_syntax if requested == ANY_SYNTAX else requested
    return mp.encode_part_head(boundary, f"application/dicom; transfer-syntax={syntax}")


@router.get("/studies/{study}")
def retrieve_study(study: str, request: Request, archive: ArchiveDep, who: CanRead) -> Response:
    return _retrieve(request, archive, who, study, None, None)


@router.get("/studies/{study}/series/{series}")
def retrieve_series(study: str, series: str, request: Request, archive: ArchiveDep, who: CanRead) -> Response:
    return _retrieve(request, archive, who, study, series, None)


@router.get("/studies/{study}/series/{series}/instances/{sop}")
def retrieve_instance(
    study: str, series: str, sop: str, request: Request, archive: ArchiveDep, who: CanRead
) -> Response:
    return _retrieve(request, archive, who, study, series, sop)


# -- WADO-RS: metadata -----------------------------------------------------------------------------


def _metadata(
    request: Request, archive: Archive, who: Principal, study: str, series: str | None, sop: str | None
) -> Response:
    allow_study(request, who, Action.STUDY_READ, study)
    records = archive.instances(study, series, sop)
    root = base_url(request)
    out = []
    for record, meta in zip(records, archive.metadata(records), strict=True):
        url = f"{root}/studies/{record.study_uid}/series/{record.series_uid}/instances/{record.sop_uid}"
        out.append(with_bulk_data_base(meta, f"{url}/bulkdata"))
    return json_response(out)


@router.get("/studies/{study}/metadata")
def study_metadata(study: str, request: Request, archive: ArchiveDep, who: CanRead) -> Response:
    return _metadata(request, archive, who, study, None, None)


@router.get("/studies/{study}/series/{series}/metadata")
def series_metadata(study: str, series: str, request: Request, archive: ArchiveDep, who: CanRead) -> Response:
    return _metadata(request, archive, who, study, series, None)


@router.get("/studies/{study}/series/{series}/instances/{sop}/metadata")
def instance_metadata(
    study: str, series: str, sop: str, request: Request, archive: ArchiveDep, who: CanRead
) -> Response:
    return _metadata(request, archive, who, study, series, sop)


# -- WADO-RS: frames, bulk data, rendered ----------------------------------------------------------


MAX_FRAME_DIGITS = 9


def _frame_numbers(raw: str) -> list[int]:
    """A frame list (PS3.18 §8.3.3.1.3): positive integers, each at most once (a list that repeats
    frames would make one request serve an instance many times over)."""
    numbers: list[int] = []
    seen: set[int] = set()
    for item in raw.split(","):
        item = item.strip()
        if not (item.isascii() and item.isdigit()) or len(item) > MAX_FRAME_DIGITS or int(item) < 1:
            raise InvalidInput("frame numbers are a comma-separated list of positive integers")
        number = int(item)
        if number in seen:
            raise InvalidInput(f"frame {number} is listed more than once")
        seen.add(number)
        numbers.append(number)
    return numbers


def _metadata_dataset(archive: Archive, record: InstanceRecord) -> Any:
    return json_to_dataset(archive.metadata([record])[0])


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frames}")
def retrieve_frames(
    study: str, series: str, sop: str, frames: str, request: Request, archive: ArchiveDep, who: CanRead
) -> Response:
    allow_study(request, who, Action.STUDY_READ, study)
    numbers = _frame_numbers(frames)
    record = archive.instances(study, series, sop)[0]
    if not record.frames:
        raise NotFound("the instance has no pixel data frames")
    choice = negotiate_frames(
        request.headers.get("accept"), record.transfer_syntax, query=accept_query(request)
    )
    for n in numbers:
        if n > len(record.frames):
            raise NotFound(f"frame {n} does not exist (the instance has {len(record.frames)})")
    syntax = record.transfer_syntax if choice.as_stored else EXPLICIT_VR_LE
    dataset = None if choice.as_stored else _metadata_dataset(archive, record)
    boundary = mp.new_boundary()
    part_type = f"{choice.media_type}; transfer-syntax={syntax}"

    def read_batch(batch: Sequence[int]) -> bytes:
        frames = archive.read_frames(record, batch)
        if dataset is not None:
            frames = [uncompressed_frame(dataset, f, record.transfer_syntax) for f in frames]
        return b"".join(mp.encode_part(boundary, part_type, f) for f in frames)

    # The first frame before answering (a damaged object is a clean error), then a few MB of
    # frames per trip to a worker thread: memory stays bounded however many frames are asked for.
    first = read_batch(numbers[:1])
    per_batch = max(1, _BATCH_BYTES // max(1, record.size // max(1, len(record.frames))))

    async def stream() -> AsyncIterator[bytes]:
        yield first
        for start in range(1, len(numbers), per_batch):
            yield await anyio.to_thread.run_sync(read_batch, numbers[start : start + per_batch])
        yield mp.closing(boundary)

    return StreamingResponse(
        stream(), media_type=f'multipart/related; type="{choice.media_type}"; boundary={boundary}'
    )


@router.get("/studies/{study}/series/{series}/instances/{sop}/bulkdata/{tag_path:path}")
def retrieve_bulkdata(
    study: str, series: str, sop: str, tag_path: str, request: Request, archive: ArchiveDep, who: CanRead
) -> Response:
    allow_study(request, who, Action.STUDY_READ, study)
    record = archive.instances(study, series, sop)[0]
    ds = dcmread(io.BytesIO(archive.read(record)))
    # Paths as written by dicomjson: TAG, or TAG/ITEM/TAG/... through sequences.
    steps = tag_path.split("/")
    if len(steps) % 2 == 0:
        raise NotFound("no such bulk data element")
    container: Any = ds
    try:
        for i in range(0, len(steps) - 1, 2):
            container = container[int(steps[i], 16)].value[int(steps[i + 1])]
        value = container[int(steps[-1], 16)].value
    except (KeyError, ValueError, IndexError, TypeError):
        raise NotFound("no such bulk data element") from None
    if not isinstance(value, bytes):
        raise NotFound("no such bulk data element")
    boundary = mp.new_boundary()
    body = mp.encode_multipart(boundary, [("application/octet-stream", value)])
    return Response(
        body, media_type=f'multipart/related; type="application/octet-stream"; boundary={boundary}'
    )


def _parse_window(raw: str | None) -> tuple[float, float] | None:
    if raw is None:
        return None
    items = raw.split(",")
    try:
        center, width = float(items[0]), float(items[1])
    except (ValueError, IndexError):
        raise InvalidInput("window is center,width[,function]") from None
    if width <= 0:
        raise InvalidInput("window width must be positive")
    return center, width


def _parse_viewport(raw: str | None, default: tuple[int, int] | None = None) -> tuple[int, int] | None:
    if raw is None:
        return default
    items = raw.split(",")
    try:
        size = (int(items[0]), int(items[1]))
    except (ValueError, IndexError):
        raise InvalidInput("viewport is width,height") from None
    if not (0 < size[0] <= 8192 and 0 < size[1] <= 8192):
        raise InvalidInput("viewport width and height must be between 1 and 8192")
    return size


def _render(
    request: Request,
    archive: Archive,
    record: InstanceRecord,
    frame: int,
    *,
    window: str | None,
    viewport: str | None,
    quality: int,
    default_viewport: tuple[int, int] | None = None,
) -> Response:
    media_type = negotiate_rendered(request.headers.get("accept"), query=accept_query(request))
    if not record.frames:
        raise NotAcceptable("the instance has no pixel data to render")
    raw = archive.read_frames(record, [frame])[0]
    image = render_frame(
        _metadata_dataset(archive, record),
        raw,
        record.transfer_syntax,
        media_type=media_type,
        window=_parse_window(window),
        viewport=_parse_viewport(viewport, default_viewport),
        quality=quality,
    )
    return Response(image, media_type=media_type)


Quality = Annotated[int, Query(ge=1, le=100)]


@router.get("/studies/{study}/series/{series}/instances/{sop}/rendered")
def render_instance(
    study: str,
    series: str,
    sop: str,
    request: Request,
    archive: ArchiveDep,
    who: CanRead,
    window: str | None = None,
    viewport: str | None = None,
    quality: Quality = 90,
) -> Response:
    allow_study(request, who, Action.STUDY_READ, study)
    record = archive.instances(study, series, sop)[0]
    return _render(request, archive, record, 1, window=window, viewport=viewport, quality=quality)


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frame}/rendered")
def render_frame_route(
    study: str,
    series: str,
    sop: str,
    frame: int,
    request: Request,
    archive: ArchiveDep,
    who: CanRead,
    window: str | None = None,
    viewport: str | None = None,
    quality: Quality = 90,
) -> Response:
    allow_study(request, who, Action.STUDY_READ, study)
    record = archive.instances(study, series, sop)[0]
    return _render(request, archive, record, frame, window=window, viewport=viewport, quality=quality)


def _thumbnail(
    request: Request, archive: Archive, records: Sequence[InstanceRecord], viewport: str | None
) -> Response:
    with_pixels = [r for r in records if r.frames]
    if not with_pixels:
        raise NotAcceptable("the instance has no pixel data to render")
    record = with_pixels[len(with_pixels) // 2]
    frame = (len(record.frames) + 1) // 2
    return _render(
        request,
        archive,
        record,
        frame,
        window=None,
        viewport=viewport,
        quality=80,
        default_viewport=(128, 128),
    )


@router.get("/studies/{study}/thumbnail")
def study_thumbnail(
    study: str, request: Request, archive: ArchiveDep, who: CanRead, viewport: str | None = None
) -> Response:
    allow_study(request, who, Action.STUDY_READ, study)
    return _thumbnail(request, archive, archive.instances(study), viewport)


@router.get("/studies/{study}/series/{series}/thumbnail")
def series_thumbnail(
    study: str, series: str, request: Request, archive: ArchiveDep, who: CanRead, viewport: str | None = None
) -> Response:
    allow_study(request, who, Action.STUDY_READ, study)
    return _thumbnail(request, archive, archive.instances(study, series), viewport)


@router.get("/studies/{study}/series/{series}/instances/{sop}/thumbnail")
def instance_thumbnail(
    study: str,
    series: str,
    sop: str,
    request: Request,
    archive: ArchiveDep,
    who: CanRead,
    viewport: str | None = None,
) -> Response:
    allow_study(request, who, Action.STUDY_READ, study)
    return _thumbnail(request, archive, archive.instances(study, series, sop), viewport)


# -- DELETE ----------------------------------------------------------------------------------------


@router.delete("/studies/{study}")
def delete_study(study: str, request: Request, archive: ArchiveDep, who: CanDelete) -> Response:
    allow_study(request, who, Action.STUDY_DELETE, study)
    archive.delete(study, actor=actor_of(who, client_address(request)))
    return Response(status_code=204)


@router.delete("/studies/{study}/series/{series}")
def delete_series(study: str, series: str, request: Request, archive: ArchiveDep, who: CanDelete) -> Response:
    allow_study(request, who, Action.STUDY_DELETE, study)
    archive.delete(study, series, actor=actor_of(who, client_address(request)))
    return Response(status_code=204)


@router.delete("/studies/{study}/series/{series}/instances/{sop}")
def delete_instance(
    study: str, series: str, sop: str, request: Request, archive: ArchiveDep, who: CanDelete
) -> Response:
    allow_study(request, who, Action.STUDY_DELETE, study)
    archive.delete(study, series, sop, actor=actor_of(who, client_address(request)))
    return Response(status_code=204)
