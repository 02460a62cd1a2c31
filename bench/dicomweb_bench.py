#!/usr/bin/env python3
"""Benchmark one or more DICOMweb servers side by side: STOW-RS, QIDO-RS, WADO-RS.

    .venv/bin/python bench/dicomweb_bench.py bench/data/ct2000 \\
        --target medvault=https://127.0.0.1:19044/dicomweb --auth medvault=bearer-env:MEDVAULT_KEY \\
        --ca medvault=/path/home/tls/ca.crt \\
        --target orthanc=http://127.0.0.1:19042/dicom-web --auth orthanc=basic:bench:bench-password \\
        --json bench/results/side_by_side.json

Targets run one after the other (all phases of the first, then the next), each with its own
HTTP/1.1 keep-alive clients (one httpx.Client per worker thread). Ratios in the tables are
FIRST/OTHER: for throughput (higher is better) a ratio > 1 means the first target is faster,
for latency (lower is better) a ratio < 1 means the first target is faster.

Phases (--phases, default all):
  stow  POST {URL}/studies, multipart/related; type="application/dicom", --batch files per request,
        --concurrency requests in flight -> instances/s, MB/s (1 MB = 10^6 bytes of DICOM files sent);
        failures = HTTP errors + FailedSOPSequence (0008,1198) entries.
  qido  --repeats sequential requests of each query (one in flight: latency, not throughput),
        result counts checked against the data set.
  wado  every study retrieved (GET {URL}/studies/{uid}, transfer-syntax=*, --concurrency in flight),
        parts counted and checked for a DICM preamble -> MB/s, instances/s; then --repeats sequential
        single-frame (frames/1) and study-metadata requests -> latency.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import email.message
import json
import os
import platform
import resource
import secrets
import ssl
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pydicom
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

MB = 1_000_000
DICOM_JSON = "application/dicom+json"
ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_FRAME = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
FAILED_SOP_SEQ = "00081198"
REFERENCED_SOP_SEQ = "00081199"

err = Console(stderr=True, soft_wrap=True)
out = Console(width=None if sys.stdout.isatty() else 160)


# --------------------------------------------------------------------------- data set


@dataclass
class Instance:
    path: Path
    size: int
    study: str
    series: str
    sop: str
    rows: int
    cols: int
    bits: int
    samples: int
    frames: int
    transfer_syntax: str


@dataclass
class Study:
    uid: str
    patient_id: str
    patient_name: str
    date: str
    series: dict[str, list[Instance]] = field(default_factory=dict)

    @property
    def instances(self) -> int:
        return sum(len(v) for v in self.series.values())


@dataclass
class DataSet:
    root: Path
    instances: list[Instance]
    studies: dict[str, Study]

    @property
    def bytes(self) -> int:
        return sum(i.size for i in self.instances)


def load_dataset(root: Path) -> DataSet:
    """Read the headers of every DICOM Part 10 file under ``root`` (files with DICM at offset 128)."""
    tags = [
        "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientID", "PatientName", "StudyDate",
        "Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "NumberOfFrames",
    ]  # fmt: skip
    instances: list[Instance] = []
    studies: dict[str, Study] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        with path.open("rb") as f:
            head = f.read(132)
        if len(head) < 132 or head[128:132] != b"DICM":
            continue
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
        inst = Instance(
            path=path,
            size=path.stat().st_size,
            study=str(ds.StudyInstanceUID),
            series=str(ds.SeriesInstanceUID),
            sop=str(ds.SOPInstanceUID),
            rows=int(ds.get("Rows", 0)),
            cols=int(ds.get("Columns", 0)),
            bits=int(ds.get("BitsAllocated", 0)),
            samples=int(ds.get("SamplesPerPixel", 1)),
            frames=int(ds.get("NumberOfFrames", 1) or 1),
            transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
        )
        instances.append(inst)
        st = studies.setdefault(
            inst.study,
            Study(
                inst.study,
                str(ds.get("PatientID", "")),
                str(ds.get("PatientName", "")),
                ds.get("StudyDate", ""),
            ),
        )
        st.series.setdefault(inst.series, []).append(inst)
    if not instances:
        raise SystemExit(f"no DICOM Part 10 files under {root}")
    return DataSet(root, instances, studies)


# --------------------------------------------------------------------------- multipart


def content_type_params(content_type: str) -> tuple[str, dict[str, str]]:
    msg = email.message.Message()
    msg["content-type"] = content_type
    params = {k.lower(): str(v) for k, v in msg.get_params(failobj=[])[1:]}
    return msg.get_content_type(), params


def parse_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], memoryview]]:
    """Split a multipart/related body into (headers, content) parts; the boundary comes from Content-Type."""
    mtype, params = content_type_params(content_type)
    if not mtype.startswith("multipart/"):
        raise ValueError(f"not multipart: {content_type!r}")
    boundary = params.get("boundary")
    if not boundary:
        raise ValueError(f"no boundary in {content_type!r}")
    delim = b"--" + boundary.encode("latin-1")
    view = memoryview(body)
    if body.startswith(delim):
        pos = 0
    else:
        pos = body.find(b"\r\n" + delim)
        if pos < 0:
            raise ValueError("no opening boundary")
        pos += 2
    parts: list[tuple[dict[str, str], memoryview]] = []
    while True:
        pos += len(delim)
        if body[pos : pos + 2] == b"--":
            return parts  # close delimiter
        eol = body.find(b"\r\n", pos)  # skip transport padding
        if eol < 0:
            raise ValueError("truncated multipart body")
        hstart = eol + 2
        if body[hstart : hstart + 2] == b"\r\n":
            headers_raw, cstart = b"", hstart + 2
        else:
            hend = body.find(b"\r\n\r\n", hstart)
            if hend < 0:
                raise ValueError("truncated part headers")
            headers_raw, cstart = body[hstart:hend], hend + 4
        nxt = body.find(b"\r\n" + delim, cstart)
        if nxt < 0:
            raise ValueError("missing closing boundary")
        headers: dict[str, str] = {}
        for line in headers_raw.decode("latin-1").split("\r\n"):
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        parts.append((headers, view[cstart:nxt]))
        pos = nxt + 2


def build_multipart(payloads: Iterable[bytes], part_type: str = "application/dicom") -> tuple[bytes, str]:
    boundary = "medvault-bench-" + secrets.token_hex(16)
    delim = b"--" + boundary.encode()
    chunks: list[bytes] = []
    for data in payloads:
        chunks += [delim, b"\r\nContent-Type: ", part_type.encode(), b"\r\n\r\n", data, b"\r\n"]
    chunks += [delim, b"--\r\n"]
    return b"".join(chunks), f'multipart/related; type="{part_type}"; boundary={boundary}'


# --------------------------------------------------------------------------- targets / clients


@dataclass
class Target:
    name: str
    url: str
    headers: dict[str, str]
    verify: ssl.SSLContext | bool
    timeout: float
    _local: threading.local = field(default_factory=threading.local)
    _clients: list[httpx.Client] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self) -> httpx.Client:
        """The calling worker thread's own keep-alive client (HTTP/1.1)."""
        c: httpx.Client | None = getattr(self._local, "client", None)
        if c is None:
            c = httpx.Client(
                base_url=self.url.rstrip("/"),
                headers={**self.headers, "Accept-Encoding": "identity"},
                verify=self.verify,
                timeout=self.timeout,
                http1=True,
                http2=False,
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            )
            self._local.client = c
            with self._lock:
                self._clients.append(c)
        return c

    def close(self) -> None:
        with self._lock:
            for c in self._clients:
                c.close()
            self._clients.clear()
        self._local = threading.local()


def _split_opt(value: str, opt: str) -> tuple[str, str]:
    name, sep, rest = value.partition("=")
    if not sep or not name:
        raise SystemExit(f"{opt} expects NAME=VALUE, got {value!r}")
    return name, rest


def auth_header(spec: str) -> dict[str, str]:
    """bearer:TOKEN | bearer:@FILE | bearer-env:VAR | basic:USER:PASSWORD | none."""
    kind, _, rest = spec.partition(":")
    if kind == "none":
        return {}
    if kind == "bearer-env":
        token = os.environ.get(rest)
        if not token:
            raise SystemExit(f"--auth bearer-env:{rest}: the environment variable is empty or unset")
        return {"Authorization": f"Bearer {token}"}
    if kind == "bearer":
        token = Path(rest[1:]).read_text().strip() if rest.startswith("@") else rest
        return {"Authorization": f"Bearer {token}"}
    if kind == "basic":
        user, sep, pw = rest.partition(":")
        if not sep:
            raise SystemExit("--auth NAME=basic:USER:PASSWORD")
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}
    raise SystemExit(f"unknown auth kind {kind!r} (bearer, bearer-env, basic, none)")


def build_targets(args: argparse.Namespace) -> list[Target]:
    urls: dict[str, str] = {}
    for t in args.target:
        name, url = _split_opt(t, "--target")
        if name in urls:
            raise SystemExit(f"duplicate target {name!r}")
        urls[name] = url
    auths = dict(_split_opt(a, "--auth") for a in args.auth)
    cas = dict(_split_opt(c, "--ca") for c in args.ca)
    for name in [*auths, *cas, *args.insecure]:
        if name not in urls:
            raise SystemExit(f"--auth/--ca/--insecure name {name!r} is not a --target")
    targets = []
    for name, url in urls.items():
        verify: ssl.SSLContext | bool = True
        if name in cas:
            verify = ssl.create_default_context(cafile=cas[name])
        elif name in args.insecure:
            verify = False
        headers = auth_header(auths[name]) if name in auths else {}
        targets.append(Target(name, url, headers, verify, args.timeout))
    return targets


# --------------------------------------------------------------------------- stats helpers


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def latency_summary(ms: Sequence[float]) -> dict[str, float]:
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 50), 2),
        "p95_ms": round(pct(ms, 95), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
        "min_ms": round(min(ms), 2),
        "max_ms": round(max(ms), 2),
    }


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


def run_pool(
    items: Sequence[Any], fn: Callable[[Any], Any], workers: int, label: str, weight: Callable[[Any], int]
) -> list[Any]:
    results: list[Any] = []
    with progress_bar() as prog, ThreadPoolExecutor(max_workers=workers) as pool:
        task = prog.add_task(label, total=sum(weight(i) for i in items))
        for item, res in zip(items, pool.map(fn, items), strict=True):
            results.append(res)
            prog.advance(task, weight(item))
    return results


# --------------------------------------------------------------------------- phases


def _sop_count(payload: Any, tag: str) -> int:
    if isinstance(payload, dict):
        return len((payload.get(tag) or {}).get("Value") or [])
    return 0


def settle_disk() -> None:
    """Flush dirty pages left by earlier work (data generation, the previous target's store), so
    no target's ingest pays for another's write-back."""
    os.sync()
    time.sleep(2)


def phase_stow(target: Target, data: DataSet, batch: int, concurrency: int) -> dict[str, Any]:
    batches = [data.instances[i : i + batch] for i in range(0, len(data.instances), batch)]

    def send(items: list[Instance]) -> dict[str, Any]:
        payloads = [i.path.read_bytes() for i in items]
        body, ctype = build_multipart(payloads)
        t0 = time.perf_counter()
        try:
            r = target.client().post(
                "/studies", content=body, headers={"Content-Type": ctype, "Accept": DICOM_JSON}
            )
            status = r.status_code
            content = r.content
            rtype = r.headers.get("content-type", "")
        except httpx.HTTPError as exc:
            return {
                "ms": (time.perf_counter() - t0) * 1000,
                "ok": 0,
                "failed": len(items),
                "status": type(exc).__name__,
            }
        ms = (time.perf_counter() - t0) * 1000
        payload: Any = None
        if "json" in rtype and content:
            try:
                payload = json.loads(content)
            except ValueError:
                payload = None
        failed = _sop_count(payload, FAILED_SOP_SEQ)
        referenced = _sop_count(payload, REFERENCED_SOP_SEQ)
        if status == 200:
            ok = referenced if payload is not None else len(items)
            failed = max(failed, len(items) - ok)
        elif status == 202:  # some stored, some failed
            ok = referenced
            failed = len(items) - ok
        else:  # 4xx/5xx (409: none stored)
            ok, failed = 0, len(items)
        sent = sum(map(len, payloads))
        return {"ms": ms, "ok": ok, "failed": failed, "status": status, "bytes": sent * ok // len(items)}

    t0, cpu0 = time.perf_counter(), client_cpu()
    res = run_pool(batches, send, concurrency, f"[{target.name}] STOW", len)
    elapsed, cpu = time.perf_counter() - t0, client_cpu() - cpu0
    ok = sum(r["ok"] for r in res)
    sent = sum(r.get("bytes", 0) for r in res)  # bytes of the instances the server accepted
    statuses = Counter(str(r["status"]) for r in res)
    return {
        "instances": len(data.instances),
        "stored": ok,
        "failed": sum(r["failed"] for r in res),
        "requests": len(batches),
        "batch": batch,
        "concurrency": concurrency,
        "http_status": dict(statuses),
        "seconds": round(elapsed, 3),
        "bytes_stored": sent,
        "instances_per_s": round(ok / elapsed, 2),
        "mb_per_s": round(sent / MB / elapsed, 2),
        "client_cpu_s_per_gb": round(cpu / (sent / 1e9), 2) if sent else None,
        "request_latency": latency_summary([r["ms"] for r in res]),
    }


def client_cpu() -> float:
    """CPU seconds this client process has used (all threads): what the client itself costs,
    which on a shared machine is taken from the server under test (TLS costs the client too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def query_string(params: dict[str, str]) -> str:
    """Query string that leaves DICOM matching characters (* ? ^ - , .) unescaped.

    httpx's ``params=`` turns ``*`` into ``%2A``; Orthanc 1.10 does not percent-decode QIDO values,
    so a wildcard sent that way silently matches nothing. Sending them raw is legal and fair to all.
    """
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='*?^-,.:_~')}" for k, v in params.items())


def _timed_get(
    target: Target, path: str, params: dict[str, str] | None, accept: str
) -> tuple[float, httpx.Response | str]:
    if params:
        path += "?" + query_string(params)
    t0 = time.perf_counter()
    try:
        r = target.client().get(path, headers={"Accept": accept})
        _ = r.content
    except httpx.HTTPError as exc:
        return (time.perf_counter() - t0) * 1000, type(exc).__name__
    return (time.perf_counter() - t0) * 1000, r


def _json_count(r: httpx.Response) -> int | None:
    if r.status_code == 204:
        return 0
    if r.status_code != 200:
        return None
    try:
        v = json.loads(r.content)
    except ValueError:
        return None
    return len(v) if isinstance(v, list) else None


@dataclass
class Probe:
    """One request of a latency series: path, query parameters, and the expected result count."""

    path: str
    params: dict[str, str] | None
    expected: int


def qido_probes(data: DataSet, repeats: int) -> dict[str, list[Probe]]:
    studies = sorted(data.studies.values(), key=lambda s: s.uid)
    pids = sorted({s.patient_id for s in studies})
    by_pid = Counter(s.patient_id for s in studies)
    letters = sorted({s.patient_name[:1] for s in studies if s.patient_name})
    dates = sorted(s.date for s in studies)
    span = max(1, len(dates) // 4)
    series = [(s, se) for s in studies for se in sorted(s.series)]

    def date_probe(k: int) -> Probe:
        a = k % len(dates)
        b = min(a + span - 1, len(dates) - 1)
        lo, hi = dates[a], dates[b]
        return Probe("/studies", {"StudyDate": f"{lo}-{hi}"}, sum(lo <= d <= hi for d in dates))

    return {
        "studies?PatientID=": [
            Probe("/studies", {"PatientID": pids[k % len(pids)]}, by_pid[pids[k % len(pids)]])
            for k in range(repeats)
        ],
        "studies?PatientName=X*": [
            Probe(
                "/studies",
                {"PatientName": letters[k % len(letters)] + "*"},
                sum(s.patient_name.startswith(letters[k % len(letters)]) for s in studies),
            )
            for k in range(repeats)
        ],
        "studies?StudyDate=A-B": [date_probe(k) for k in range(repeats)],
        "studies/{uid}/series": [
            Probe(
                f"/studies/{studies[k % len(studies)].uid}/series",
                None,
                len(studies[k % len(studies)].series),
            )
            for k in range(repeats)
        ],
        "studies/{uid}/series/{uid}/instances": [
            Probe(
                f"/studies/{series[k % len(series)][0].uid}/series/{series[k % len(series)][1]}/instances",
                None,
                len(series[k % len(series)][0].series[series[k % len(series)][1]]),
            )
            for k in range(repeats)
        ],
    }


def latency_series(
    target: Target,
    probes: list[Probe],
    accept: str,
    check: Callable[[httpx.Response, Probe], bool],
    warmup: int,
    concurrency: int,
) -> dict[str, Any]:
    for p in probes[:warmup]:
        _timed_get(target, p.path, p.params, accept)

    def one(p: Probe) -> tuple[float, str, bool]:
        ms, r = _timed_get(target, p.path, p.params, accept)
        if isinstance(r, str):
            return ms, r, False
        return ms, str(r.status_code), r.status_code < 300 and check(r, p)

    if concurrency <= 1:
        res = [one(p) for p in probes]
    else:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            res = list(pool.map(one, probes))
    statuses = Counter(s for _, s, _ in res)
    errors = sum(1 for _, s, _ in res if not s.isdigit() or int(s) >= 300)
    summary = latency_summary([ms for ms, _, _ in res])
    summary.update(
        {
            "errors": errors,
            "mismatches": sum(1 for _, s, ok in res if not ok) - errors,
            "http_status": dict(statuses),
        }
    )
    return summary


def phase_qido(target: Target, data: DataSet, repeats: int, warmup: int, concurrency: int) -> dict[str, Any]:
    def check(r: httpx.Response, p: Probe) -> bool:
        return _json_count(r) == p.expected

    result = {}
    for kind, probes in qido_probes(data, repeats).items():
        result[kind] = latency_series(target, probes, DICOM_JSON, check, warmup, concurrency)
        err.print(f"  [{target.name}] QIDO {kind}: p50 {result[kind].get('p50_ms')} ms")
    return result


def phase_wado(
    target: Target, data: DataSet, repeats: int, warmup: int, concurrency: int, latency_concurrency: int
) -> dict[str, Any]:
    studies = sorted(data.studies.values(), key=lambda s: s.uid)

    def fetch(study: Study) -> dict[str, Any]:
        ms, r = _timed_get(target, f"/studies/{study.uid}", None, ACCEPT_DICOM)
        if isinstance(r, str) or r.status_code != 200:
            return {"ms": ms, "ok": False, "status": r if isinstance(r, str) else r.status_code, "bytes": 0,
                    "parts": 0, "bad_parts": 0}  # fmt: skip
        parts = parse_multipart(r.content, r.headers.get("content-type", ""))
        bad = sum(1 for _, c in parts if len(c) < 132 or bytes(c[128:132]) != b"DICM")
        return {
            "ms": ms,
            "ok": len(parts) == study.instances and bad == 0,
            "status": r.status_code,
            "bytes": len(r.content),
            "payload": sum(len(c) for _, c in parts),
            "parts": len(parts),
            "bad_parts": bad,
        }

    t0, cpu0 = time.perf_counter(), client_cpu()
    res = run_pool(studies, fetch, concurrency, f"[{target.name}] WADO studies", lambda s: s.instances)
    elapsed, cpu = time.perf_counter() - t0, client_cpu() - cpu0
    received = sum(r["bytes"] for r in res)
    parts = sum(r["parts"] for r in res)
    retrieve = {
        "studies": len(studies),
        "instances_expected": len(data.instances),
        "parts": parts,
        "bad_parts": sum(r["bad_parts"] for r in res),
        "studies_wrong": sum(1 for r in res if not r["ok"]),
        "http_status": dict(Counter(str(r["status"]) for r in res)),
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "bytes_received": received,
        "mb_per_s": round(received / MB / elapsed, 2),
        "instances_per_s": round(parts / elapsed, 2),
        "client_cpu_s_per_gb": round(cpu / (received / 1e9), 2) if received else None,
        "request_latency": latency_summary([r["ms"] for r in res]),
    }
    err.print(
        f"  [{target.name}] WADO studies: {retrieve['mb_per_s']} MB/s, {retrieve['instances_per_s']} inst/s"
    )

    # single frames: spread over the whole data set
    n = len(data.instances)
    picks = [data.instances[(k * n) // repeats % n] for k in range(repeats)]
    frame_probes = [Probe(f"/studies/{i.study}/series/{i.series}/instances/{i.sop}/frames/1", None,
                          i.rows * i.cols * i.samples * i.bits // 8) for i in picks]  # fmt: skip
    native = all(i.transfer_syntax in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1") for i in picks)

    def check_frame(r: httpx.Response, p: Probe) -> bool:
        try:
            fparts = parse_multipart(r.content, r.headers.get("content-type", ""))
        except ValueError:
            return False
        return len(fparts) == 1 and (not native or len(fparts[0][1]) == p.expected)

    frames = latency_series(target, frame_probes, ACCEPT_FRAME, check_frame, warmup, latency_concurrency)
    err.print(f"  [{target.name}] WADO frame: p50 {frames.get('p50_ms')} ms")

    meta_probes = [Probe(f"/studies/{studies[k % len(studies)].uid}/metadata", None,
                         studies[k % len(studies)].instances) for k in range(repeats)]  # fmt: skip

    def check_meta(r: httpx.Response, p: Probe) -> bool:
        return _json_count(r) == p.expected

    metadata = latency_series(target, meta_probes, DICOM_JSON, check_meta, warmup, latency_concurrency)
    err.print(f"  [{target.name}] WADO metadata: p50 {metadata.get('p50_ms')} ms")
    return {"retrieve_study": retrieve, "frame": frames, "metadata": metadata}


# --------------------------------------------------------------------------- report


@dataclass
class Metric:
    phase: str
    label: str
    path: tuple[str, ...]
    better: str  # "higher" | "lower" | ""
    unit: str = ""


def metrics(results: dict[str, dict[str, Any]]) -> list[Metric]:
    any_result = next(iter(results.values()))
    rows = [
        Metric("stow", "instances/s", ("stow", "instances_per_s"), "higher"),
        Metric("stow", "MB/s", ("stow", "mb_per_s"), "higher"),
        Metric("stow", "seconds", ("stow", "seconds"), "lower"),
        Metric("stow", "request p50 ms", ("stow", "request_latency", "p50_ms"), "lower"),
        Metric("stow", "request p95 ms", ("stow", "request_latency", "p95_ms"), "lower"),
        Metric("stow", "client CPU s/GB", ("stow", "client_cpu_s_per_gb"), ""),
        Metric("stow", "stored", ("stow", "stored"), ""),
        Metric("stow", "failed", ("stow", "failed"), ""),
    ]
    for kind in any_result.get("qido", {}):
        for stat in ("p50_ms", "p95_ms", "mean_ms"):
            rows.append(Metric("qido", f"{kind} {stat[:-3]} ms", ("qido", kind, stat), "lower"))
        rows.append(Metric("qido", f"{kind} errors+mismatches", ("qido", kind, "_bad"), ""))
    rows += [
        Metric("wado", "study retrieve MB/s", ("wado", "retrieve_study", "mb_per_s"), "higher"),
        Metric("wado", "study retrieve instances/s", ("wado", "retrieve_study", "instances_per_s"), "higher"),
        Metric(
            "wado", "study request p50 ms", ("wado", "retrieve_study", "request_latency", "p50_ms"), "lower"
        ),
        Metric("wado", "client CPU s/GB", ("wado", "retrieve_study", "client_cpu_s_per_gb"), ""),
        Metric("wado", "parts received", ("wado", "retrieve_study", "parts"), ""),
        Metric("wado", "studies wrong", ("wado", "retrieve_study", "studies_wrong"), ""),
    ]
    for kind in ("frame", "metadata"):
        for stat in ("p50_ms", "p95_ms", "mean_ms"):
            rows.append(Metric("wado", f"{kind} {stat[:-3]} ms", ("wado", kind, stat), "lower"))
        rows.append(Metric("wado", f"{kind} errors+mismatches", ("wado", kind, "_bad"), ""))
    return rows


def lookup(result: dict[str, Any], path: tuple[str, ...]) -> float | None:
    cur: Any = result
    for key in path[:-1]:
        if not isinstance(cur, dict) or key not in cur:
            return None
        cur = cur[key]
    if not isinstance(cur, dict):
        return None
    if path[-1] == "_bad":
        if "errors" not in cur:
            return None
        return float(cur.get("errors", 0) + cur.get("mismatches", 0))
    v = cur.get(path[-1])
    return float(v) if isinstance(v, int | float) else None


def flagged(result: dict[str, Any], path: tuple[str, ...]) -> bool:
    """True when the figure at ``path`` comes from failed or wrong requests (then it gets no ratio)."""
    phase = result.get(path[0])
    if not isinstance(phase, dict):
        return False
    if path[0] == "stow":
        return bool(phase.get("failed"))
    section = phase.get(path[1])
    if not isinstance(section, dict):
        return False
    return bool(section.get("errors") or section.get("mismatches") or section.get("studies_wrong"))


def fmt(v: float | None) -> str:
    if v is None or v != v:
        return "-"
    if abs(v) >= 100 or v == int(v):
        return f"{v:,.0f}"
    return f"{v:,.2f}"


def ratios(results: dict[str, dict[str, Any]], rows: list[Metric]) -> dict[str, dict[str, float | None]]:
    names = list(results)
    first = names[0]
    out_: dict[str, dict[str, float | None]] = {}
    for other in names[1:]:
        key = f"{first}/{other}"
        out_[key] = {}
        for m in rows:
            if not m.better:
                continue
            a, b = lookup(results[first], m.path), lookup(results[other], m.path)
            valid = (
                a is not None
                and b
                and not flagged(results[first], m.path)
                and not flagged(results[other], m.path)
            )
            out_[key][".".join(m.path)] = round(a / b, 3) if valid else None
    return out_


def print_tables(results: dict[str, dict[str, Any]]) -> None:
    names = list(results)
    rows = metrics(results)
    titles = {"stow": "STOW-RS (store)", "qido": "QIDO-RS (search latency)", "wado": "WADO-RS (retrieve)"}
    for phase, title in titles.items():
        phase_rows = [
            m for m in rows if m.phase == phase and any(lookup(results[n], m.path) is not None for n in names)
        ]
        if not phase_rows:
            continue
        table = Table(title=title, title_justify="left")
        table.add_column("metric")
        table.add_column("better", justify="center")
        for n in names:
            table.add_column(n, justify="right")
        for other in names[1:]:
            table.add_column(f"{names[0]}/{other}", justify="right")
        for m in phase_rows:
            vals = [lookup(results[n], m.path) for n in names]
            bad = [m.better != "" and flagged(results[n], m.path) for n in names]
            cells = [fmt(v) + (" [red]![/]" if b else "") for v, b in zip(vals, bad, strict=True)]
            rcells = []
            for v, b in zip(vals[1:], bad[1:], strict=True):
                if m.better and vals[0] is not None and v and not bad[0] and not b:
                    r = vals[0] / v
                    good = (r >= 1) if m.better == "higher" else (r <= 1)
                    rcells.append(f"[{'green' if good else 'red'}]{r:.2f}x[/]")
                else:
                    rcells.append("")
            arrow = {"higher": "↑", "lower": "↓"}.get(m.better, "")
            table.add_row(m.label, arrow, *cells, *rcells)
        out.print(table)


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dicomweb_bench.py",
        description="Benchmark DICOMweb servers side by side (STOW-RS, QIDO-RS, WADO-RS).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "auth specs: bearer:TOKEN | bearer:@FILE | bearer-env:VAR | basic:USER:PASSWORD | none\n"
            "example: --target mv=https://127.0.0.1:19044/dicomweb --auth mv=bearer-env:KEY \\\n"
            "         --ca mv=ca.crt --target orthanc=http://127.0.0.1:19042/dicom-web \\\n"
            "         --auth orthanc=basic:u:pw\n"
            "ratio columns are FIRST/OTHER (first --target vs each other one)."
        ),
    )
    p.add_argument(
        "datadir", type=Path, help="folder of DICOM Part 10 files (e.g. made by bench/generate.py)"
    )
    p.add_argument("--target", action="append", required=True, metavar="NAME=URL",
                   help="DICOMweb root URL, repeatable; the first is the reference for ratios")  # fmt: skip
    p.add_argument("--auth", action="append", default=[], metavar="NAME=SPEC", help="credentials of a target")
    p.add_argument(
        "--ca", action="append", default=[], metavar="NAME=PEM", help="CA bundle to trust for a target"
    )
    p.add_argument("--insecure", action="append", default=[], metavar="NAME", help="skip TLS verification")
    p.add_argument(
        "--concurrency", type=int, default=4, help="requests in flight for STOW and study retrieval"
    )
    p.add_argument("--batch", type=int, default=10, help="instances per STOW request")
    p.add_argument(
        "--repeats", type=int, default=50, help="requests per latency series (QIDO, frame, metadata)"
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed requests before each latency series")
    p.add_argument("--latency-concurrency", type=int, default=1,
                   help="requests in flight in latency series (1 = pure latency)")  # fmt: skip
    p.add_argument("--phases", default="stow,qido,wado", help="comma list of stow,qido,wado")
    p.add_argument("--timeout", type=float, default=300.0, help="per-request timeout, seconds")
    p.add_argument("--json", type=Path, help="write every figure to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    phases = {x.strip() for x in args.phases.split(",") if x.strip()}
    if not phases <= {"stow", "qido", "wado"}:
        raise SystemExit(f"unknown phase in {args.phases!r}")
    if args.concurrency < 1 or args.batch < 1 or args.repeats < 1:
        raise SystemExit("--concurrency, --batch and --repeats must be >= 1")
    targets = build_targets(args)
    t0 = time.perf_counter()
    data = load_dataset(args.datadir)
    err.print(
        f"data set {args.datadir}: {len(data.instances)} instances, {len(data.studies)} studies, "
        f"{data.bytes / MB:.1f} MB (headers read in {time.perf_counter() - t0:.1f} s)"
    )
    for inst in data.instances:  # warm the page cache so the first target does not pay for cold reads
        inst.path.read_bytes()

    results: dict[str, dict[str, Any]] = {}
    for target in targets:
        err.rule(f"{target.name}  {target.url}")
        res: dict[str, Any] = {"url": target.url}
        try:
            if "stow" in phases:
                settle_disk()
                res["stow"] = phase_stow(target, data, args.batch, args.concurrency)
                s = res["stow"]
                err.print(f"  [{target.name}] STOW: {s['instances_per_s']} inst/s, {s['mb_per_s']} MB/s, "
                          f"stored {s['stored']}, failed {s['failed']}, HTTP {s['http_status']}")  # fmt: skip
            if "qido" in phases:
                res["qido"] = phase_qido(target, data, args.repeats, args.warmup, args.latency_concurrency)
            if "wado" in phases:
                res["wado"] = phase_wado(
                    target, data, args.repeats, args.warmup, args.concurrency, args.latency_concurrency
                )
        finally:
            target.close()
        results[target.name] = res

    print_tables(results)
    report = {
        "meta": {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "host": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
            },
            "client": {
                "httpx": httpx.__version__,
                "pydicom": pydicom.__version__,
                "http": "HTTP/1.1 keep-alive",
            },
            "params": {
                "concurrency": args.concurrency,
                "batch": args.batch,
                "repeats": args.repeats,
                "warmup": args.warmup,
                "latency_concurrency": args.latency_concurrency,
                "phases": sorted(phases),
            },
            "dataset": {
                "path": str(args.datadir),
                "instances": len(data.instances),
                "studies": len(data.studies),
                "series": sum(len(s.series) for s in data.studies.values()),
                "bytes": data.bytes,
            },
            "units": {"MB": "10^6 bytes", "latency": "milliseconds, wall clock per request incl. body read"},
            "ratio": "first target / other target",
        },
        "targets": results,
        "ratios": ratios(results, metrics(results)) if len(results) > 1 else {},
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        err.print(f"wrote {args.json}")
    problems = []
    for name, res in results.items():
        stow = res.get("stow", {})
        if stow.get("failed"):
            problems.append(
                f"{name}: STOW failed {stow['failed']} of {stow['instances']} ({stow['http_status']})"
            )
        retr = res.get("wado", {}).get("retrieve_study", {})
        if retr.get("studies_wrong"):
            problems.append(
                f"{name}: {retr['studies_wrong']} studies retrieved wrong ({retr['http_status']})"
            )
        series = {f"QIDO {k}": v for k, v in res.get("qido", {}).items()}
        series |= {f"WADO {k}": res["wado"][k] for k in ("frame", "metadata") if k in res.get("wado", {})}
        for label, v in series.items():
            if v.get("errors") or v.get("mismatches"):
                problems.append(
                    f"{name}: {label}: {v['errors']} HTTP errors, {v['mismatches']} wrong answers "
                    f"({v['http_status']})"
                )
    for p in problems:
        err.print(f"[red]PROBLEM[/] {p}")
    if problems:
        err.print("(figures marked ! come from failed or wrong requests and get no ratio)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
