"""``GET /metrics``: Prometheus text format (exposition format 0.0.4), behind ``metrics.read``
(the ``monitoring`` role: `medvault apikeys create prometheus --role monitoring`).

HTTP counters are kept per process (several workers serve one port) and written every second to
``HOME/run/metrics/<pid>.json``; a scrape sums every process's file, so counts survive a worker's
restart like Prometheus's own multiprocess mode. Everything else is read from the archive at
scrape time. Labels are bounded and never carry PHI or user names: the route *template*
(``/dicomweb/studies/{study}``, never the UIDs), the method and the status code.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from medvault.access.policy import Action, Principal
from medvault.api.auth import require

router = APIRouter()
ReadsMetrics = Annotated[Principal, Depends(require(Action.METRICS_READ))]
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, math.inf)
_FLUSH_SECONDS = 1.0


class RequestMetrics:
    """This process's request counts and latency histogram per route template."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.requests: dict[tuple[str, str, int], int] = {}
        self.buckets: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}
        self._flushed = 0.0
        self._dirty = False

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        counts = self.buckets.setdefault(route, [0] * len(BUCKETS))
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                counts[i] += 1
                break
        self.sums[route] = self.sums.get(route, 0.0) + seconds
        self._dirty = True
        if self.folder is not None and time.monotonic() - self._flushed >= _FLUSH_SECONDS:
            self.flush()

    def to_json(self) -> dict[str, object]:
        return {
            "requests": [[m, r, s, n] for (m, r, s), n in sorted(self.requests.items())],
            "buckets": self.buckets,
            "sums": self.sums,
        }

    def flush(self) -> None:
        if self.folder is None or not self._dirty:
            return
        for folder in (self.folder.parent, self.folder):  # owner-only, like the rest of the home
            folder.mkdir(mode=0o700, exist_ok=True)
        path = self.folder / f"{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(self.to_json()))
        os.replace(tmp, path)
        self._flushed, self._dirty = time.monotonic(), False


def merged(folder: Path | None, own: RequestMetrics) -> RequestMetrics:
    """Every process's counters summed (this process's live ones instead of its file)."""
    total = RequestMetrics(None)
    docs: list[dict[str, object]] = [own.to_json()]
    if folder is not None and folder.is_dir():
        for path in folder.glob("*.json"):
            if path.stem == str(os.getpid()):
                continue
            try:
                docs.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
    for doc in docs:
        for m, r, s, n in doc.get("requests", []):  # type: ignore[attr-defined]
            key = (str(m), str(r), int(s))
            total.requests[key] = total.requests.get(key, 0) + int(n)
        for route, counts in dict(doc.get("buckets", {})).items():  # type: ignore[call-overload]
            mine = total.buckets.setdefault(route, [0] * len(BUCKETS))
            for i, c in enumerate(counts[: len(BUCKETS)]):
                mine[i] += int(c)
        for route, value in dict(doc.get("sums", {})).items():  # type: ignore[call-overload]
            total.sums[route] = total.sums.get(route, 0.0) + float(value)
    return total


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float]]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [
        f"{name}{labels} {value:g}" if value != math.inf else f"{name}{labels} +Inf"
        for labels, value in samples
    ]
    return lines


def render(request: Request) -> str:
    """The exposition text of this archive."""
    state = request.app.state
    own: RequestMetrics = state.metrics
    total = merged(own.folder, own)
    out: list[str] = []
    out += _family(
        "medvault_http_requests_total",
        "counter",
        "HTTP requests answered, by method, route template and status.",
        (
            (f'{{method="{_label(m)}",route="{_label(r)}",status="{s}"}}', float(n))
            for (m, r, s), n in sorted(total.requests.items())
        ),
    )
    hist: list[tuple[str, float]] = []
    for route, counts in sorted(total.buckets.items()):
        running = 0
        for bound, count in zip(BUCKETS, counts, strict=True):
            running += count
            le = "+Inf" if bound == math.inf else f"{bound:g}"
            hist.append((f'_bucket{{route="{_label(route)}",le="{le}"}}', float(running)))
        hist.append((f'_sum{{route="{_label(route)}"}}', total.sums.get(route, 0.0)))
        hist.append((f'_count{{route="{_label(route)}"}}', float(running)))
    out += [
        "# HELP medvault_http_request_duration_seconds Time to answer an HTTP request, by route template.",
        "# TYPE medvault_http_request_duration_seconds histogram",
        *(f"medvault_http_request_duration_seconds{suffix} {value:g}" for suffix, value in hist),
    ]
    archive = state.archive
    instances, stored = archive.index.storage_totals()
    out += _family("medvault_instances", "gauge", "Instances stored.", [("", float(instances))])
    out += _family(
        "medvault_stored_bytes", "gauge", "Bytes of stored instances (plaintext size).", [("", float(stored))]
    )
    size = archive.audit.ledger.size if archive.audit is not None else 0
    out += _family("medvault_ledger_entries", "gauge", "Entries in the audit ledger.", [("", float(size))])
    alerts = getattr(state, "alerts", None)
    if alerts is not None:
        out += _family(
            "medvault_alerts_open",
            "gauge",
            "Alerts not resolved yet, by severity.",
            ((f'{{severity="{k}"}}', float(v)) for k, v in alerts.open_counts().items()),
        )
        out += _family(
            "medvault_alerts_total",
            "counter",
            "Alerts raised, by severity.",
            ((f'{{severity="{k}"}}', float(v)) for k, v in alerts.total_counts().items()),
        )
        live, beat = alerts.progress()
        out += _family(
            "medvault_monitor_lag_entries", "gauge", "Ledger entries the monitor has not scored yet.",
            [("", float(max(0, size - live)))],
        )  # fmt: skip
        age = (datetime.now(UTC) - beat).total_seconds() if beat is not None else math.inf
        out += _family(
            "medvault_monitor_heartbeat_age_seconds", "gauge", "Seconds since the monitor's last step.",
            [("", age)],
        )  # fmt: skip
        out += _family(
            "medvault_security_holds",
            "gauge",
            "Automatic responses in force.",
            [("", float(len(alerts.holds())))],
        )
    return "\n".join(out) + "\n"


@router.get("/metrics")
def metrics(request: Request, who: ReadsMetrics) -> Response:
    return Response(render(request), media_type="text/plain; version=0.0.4; charset=utf-8")
