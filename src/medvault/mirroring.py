"""``medvault ledger mirror``: copy a remote archive's ledger, verify it continuously, and compare
what it shows with what its witnesses saw (docs/witness.md, "Mirrors").

One round (:func:`sync`): fetch the log's checkpoint and verify it; copy the entries up to it in
bundles (``GET /ledger/entries``); recompute and compare every recorded checkpoint the copy now
covers; then ask each witness of the policy that has a URL for its view (``GET /latest``) and check
that too — the witnesses are the gossip channel through which a split view shows.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from medvault.errors import InvalidInput, MedvaultError
from medvault.ledger.bundle import BUNDLE_MEDIA_TYPE, MAX_BUNDLE_BYTES, MAX_BUNDLE_ENTRIES, decode_bundle
from medvault.ledger.mirror import Mirror, MirrorAlert
from medvault.witnessing import bounded_request

__all__ = ["SyncResult", "sync"]

MAX_NOTE_BYTES = 64 * 1024


@dataclass(frozen=True)
class SyncResult:
    size: int  # entries held after the round
    fetched: int  # entries copied this round
    witnessed: int  # the largest size a quorum of witnesses cosigned, as far as verified
    alerts: list[MirrorAlert]


def _bounded(client: httpx.Client, url: str, limit: int, **params: str | int) -> httpx.Response:
    return bounded_request(client, "GET", url, limit, params=params)


def _bundle(client: httpx.Client, start: int, target: int) -> list[bytes]:
    answer = _bounded(
        client, "/ledger/entries", MAX_BUNDLE_BYTES + 4 * MAX_BUNDLE_ENTRIES + 1024,
        start=start, count=min(MAX_BUNDLE_ENTRIES, target - start),
    )  # fmt: skip
    if answer.status_code != 200 or not answer.headers.get("content-type", "").startswith(BUNDLE_MEDIA_TYPE):
        raise InvalidInput(f"GET /ledger/entries answered {answer.status_code}")
    entries = decode_bundle(answer.content)[: target - start]
    if not entries:
        raise InvalidInput(f"the log has no entry {start} although its checkpoint covers {target}")
    return entries


def _fetch_to(client: httpx.Client, mirror: Mirror, target: int, progress: Callable[[int], None]) -> int:
    """Copy entries up to ``target``: the next bundle is fetched while this one is hashed in."""
    fetched = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mirror-fetch") as pool:
        start = mirror.size
        upcoming = pool.submit(_bundle, client, start, target) if start < target else None
        while upcoming is not None:
            entries = upcoming.result()
            following = start + len(entries)
            upcoming = pool.submit(_bundle, client, following, target) if following < target else None
            mirror.append(start, entries)
            fetched += len(entries)
            progress(len(entries))
            start = following
    return fetched


def sync(
    client: httpx.Client,
    mirror: Mirror,
    *,
    witness_context: ssl.SSLContext | None = None,
    progress: Callable[[int], None] = lambda n: None,
) -> SyncResult:
    """One round against the archive ``client`` points at (base URL and credentials set)."""
    seen = mirror.alerts()
    after = seen[-1][0] if seen else 0
    answer = _bounded(client, "/ledger/checkpoint", MAX_NOTE_BYTES)
    if answer.status_code != 200:
        raise InvalidInput(f"GET /ledger/checkpoint answered {answer.status_code}: check the API key's role")
    result = mirror.verify(answer.content, "the log")
    fetched = _fetch_to(client, mirror, result.checkpoint.size, progress) if result else 0
    mirror.recheck()
    views = []
    with httpx.Client(
        verify=witness_context if witness_context is not None else True, timeout=10
    ) as witnesses:
        for w in mirror.policy.witnesses:
            if not w.url:
                continue
            try:
                view = _bounded(witnesses, f"{w.url}/latest", MAX_NOTE_BYTES, origin=mirror.origin)
            except (httpx.HTTPError, MedvaultError):
                continue  # a witness down hides nothing: the next round asks again
            if view.status_code == 200:
                views.append((w.verifier.name, view.content))
    for name, note in views:
        verified = mirror.verify(note, f"witness {name}")
        if verified is not None and verified.checkpoint.size > mirror.size:
            fetched += _fetch_to(client, mirror, verified.checkpoint.size, progress)
    mirror.recheck()
    witnessed = result.checkpoint.size if result is not None and result.met else 0
    return SyncResult(mirror.size, fetched, witnessed, [a for _, a in mirror.alerts(after)])
