"""The archive's side of witnessing: submit each new checkpoint to the configured witnesses (C2SP
tlog-witness), keep the cosignatures they return, and raise an alert when one cannot be had.

It runs in ``serve``'s checkpoint thread and never blocks a write: a witness that is down is
retried at every round until it answers, and alerted on after a few failed rounds; a witness that
*refuses* (another root for a size it cosigned, a consistency proof that does not verify, a larger
tree than this ledger holds) is evidence that this ledger was rewritten or rolled back, and raises
a critical alert at once. Every problem is also ledgered (``ledger.witness.problem``).

What a witness is told (the old size it last cosigned, the consistency proof from there) comes from
its own answers: a 409 carries the size it holds, so a restarted archive or a second worker learns
it in one round trip.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from medvault.audit import publish
from medvault.errors import ConfigError, InvalidInput, NoteInvalid
from medvault.home import OpenHome
from medvault.index.alerts import AlertStore, NewAlert
from medvault.index.outbox import process_tag
from medvault.index.store import Index
from medvault.ledger.cosignature import add_signature_lines, cosignatures
from medvault.ledger.events import (
    Actor,
    ActorKind,
    AuditEvent,
    EventKind,
    ObjectRef,
    Outcome,
    canonical_bytes,
)
from medvault.ledger.note import Verifier
from medvault.ledger.policy import WitnessEntry, WitnessPolicy, majority, parse_witness_entry
from medvault.ledger.store import Ledger
from medvault.ledger.witness import format_add_checkpoint

__all__ = ["UNREACHABLE_ROUNDS", "WitnessProblem", "Witnessing", "alert_on_problem", "witness_policy"]

log = logging.getLogger("medvault.witnessing")

UNREACHABLE_ROUNDS = 3  # failed rounds in a row before an unreachable witness is alerted on
SIZE_MEDIA_TYPE = "text/x.tlog.size"
WITNESSING_ACTOR = Actor(kind=ActorKind.SYSTEM, id="ledger-witnessing")
_ATTEMPTS = 3  # per witness per round: a 409 with its size, then the retry, then one spare


@dataclass(frozen=True)
class WitnessProblem:
    """Why a witness gave no cosignature this round."""

    witness: str
    kind: str  # "unreachable", "misconfigured" or "refused"
    severity: str  # "high" or "critical"
    message: str
    size: int


def witness_policy(
    log_key: str, entries: Sequence[str], quorum: int, *, where: str = "[ledger] witnesses"
) -> WitnessPolicy:
    """The policy an archive's settings describe: its own key, its witnesses, the quorum."""
    witnesses = tuple(parse_witness_entry(e, f"{where} entry {i + 1}") for i, e in enumerate(entries))
    for w in witnesses:
        if not w.url:
            raise ConfigError(
                f"{where}: witness {w.verifier.name} has no URL", hint='Write "<key> https://host:port".'
            )
    try:
        return WitnessPolicy((Verifier.from_key_text(log_key),), witnesses, quorum or majority(witnesses))
    except InvalidInput as exc:
        raise ConfigError(
            f"{where}: {exc.message}", hint="witness_quorum is at most the number of witnesses."
        ) from None


MAX_ANSWER_BYTES = 64 * 1024  # a witness's answer, or its view: a checkpoint with signatures


def bounded_request(client: httpx.Client, method: str, url: str, limit: int, **kwargs: Any) -> httpx.Response:
    """A request whose answer is read up to ``limit`` bytes (:class:`InvalidInput` beyond): a
    witness or an archive that answers without end must not exhaust this process's memory."""
    with client.stream(method, url, **kwargs) as answer:
        body = bytearray()
        for chunk in answer.iter_bytes():
            body += chunk
            if len(body) > limit:
                raise InvalidInput(f"{url} answered more than {limit} bytes")
        return httpx.Response(answer.status_code, headers=answer.headers, content=bytes(body))


class Witnessing:
    """Gathers cosignatures for the newest checkpoint of ``ledger`` from the policy's witnesses."""

    def __init__(
        self,
        ledger: Ledger,
        policy: WitnessPolicy,
        *,
        report: Callable[[WitnessProblem], None],
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 5.0,
        transport: httpx.BaseTransport | None = None,  # tests: a witness that misbehaves
    ) -> None:
        self.ledger = ledger
        self.policy = policy
        self._report = report
        self._held: dict[str, int] = {}  # what each witness said it holds
        self._failed_rounds: dict[str, int] = {}
        self._reported: set[tuple[str, str]] = set()
        self._client = httpx.Client(
            verify=ssl_context if ssl_context is not None else True,
            timeout=timeout,
            headers={"content-type": "text/plain; charset=utf-8"},
            follow_redirects=False,
            transport=transport,
        )
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, len(policy.witnesses)), thread_name_prefix="witness"
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()

    def pending(self) -> bool:
        """Whether the newest checkpoint still lacks a cosignature from some witness."""
        record = self.ledger.latest_checkpoint_record()
        if record is None:
            return False
        return len(self.ledger.cosigners(record[0])) < len(self.policy.witnesses)

    def submit_latest(self) -> int:
        """One round: ask every witness that has not cosigned the newest checkpoint. Returns how
        many witnesses have cosigned it afterwards."""
        record = self.ledger.latest_checkpoint_record()
        if record is None:
            return 0
        checkpoint_id, size, note = record
        done = self.ledger.cosigners(checkpoint_id)
        todo = [w for w in self.policy.witnesses if w.verifier.name not in done]
        answers = list(self._pool.map(lambda w: self._ask(w, size, note), todo))
        lines = {w.verifier.name: line for w, line in zip(todo, answers, strict=True) if line is not None}
        if lines:
            self.ledger.add_cosignatures(checkpoint_id, lines)
        return len(done) + len(lines)

    # --- one witness ----------------------------------------------------------------------------

    def _ask(self, witness: WitnessEntry, size: int, note: bytes) -> str | None:
        name = witness.verifier.name
        try:
            line = self._exchange(witness, size, note)
        except _Problem as problem:
            self._failed(witness, problem.kind, problem.severity, problem.message, size)
            return None
        self._failed_rounds[name] = 0
        self._reported = {r for r in self._reported if r[0] != name}
        return line

    def _exchange(self, witness: WitnessEntry, size: int, note: bytes) -> str | None:
        name = witness.verifier.name
        for _ in range(_ATTEMPTS):
            held = self._held.get(name, 0)
            old = min(held, size)
            if held > size:
                if held <= self.ledger.size:
                    return None  # another worker's newer checkpoint got there first: not a problem
                raise _Problem(
                    "refused",
                    "critical",
                    f"witness {name} has cosigned a tree of {held} entries; this ledger holds "
                    f"{self.ledger.size}: the ledger was rolled back or replaced",
                )
            proof = self.ledger.consistency_proof(old, size).hashes if 0 < old < size else ()
            try:
                answer = bounded_request(
                    self._client,
                    "POST",
                    f"{witness.url}/add-checkpoint",
                    MAX_ANSWER_BYTES,
                    content=format_add_checkpoint(old, proof, note),
                )
            except InvalidInput:
                raise _Problem("refused", "high", f"witness {name} answered more than 64 KiB") from None
            except httpx.HTTPError as exc:
                raise _Problem(
                    "unreachable", "high", f"witness {name} unreachable: {type(exc).__name__}"
                ) from None
            if answer.status_code == 200:
                return self._cosignature(witness, note, answer.content, size)
            if answer.status_code == 409 and answer.headers.get("content-type", "").startswith(
                SIZE_MEDIA_TYPE
            ):
                text = answer.text.strip()
                if not text.isdigit():
                    raise _Problem("refused", "high", f"witness {name} sent a malformed size")
                self._held[name] = int(text)
                continue
            reason = answer.text.strip().splitlines()[0][:200] if answer.text.strip() else ""
            if answer.status_code in (409, 422):
                raise _Problem(
                    "refused",
                    "critical",
                    f"witness {name} refused checkpoint {size} ({answer.status_code} {reason}): this ledger "
                    "is not consistent with what the witness cosigned before",
                )
            if answer.status_code in (403, 404):
                raise _Problem(
                    "misconfigured",
                    "high",
                    f"witness {name} does not witness this log ({answer.status_code} {reason}); "
                    "its operator must run `medvault witness add-log` with this archive's /ledger/key",
                )
            raise _Problem("unreachable", "high", f"witness {name} answered {answer.status_code} {reason}")
        raise _Problem("refused", "high", f"witness {name} kept changing its size")

    def _cosignature(self, witness: WitnessEntry, note: bytes, body: bytes, size: int) -> str:
        """The witness's own line among those it answered, verified against the checkpoint."""
        name = witness.verifier.name
        try:
            for line in body.decode("utf-8").splitlines():
                if line.startswith(f"\u2014 {name} "):
                    line = line + "\n"
                    if cosignatures(add_signature_lines(note, line.encode()), [witness.verifier]):
                        self._held[name] = size
                        return line
        except (UnicodeDecodeError, NoteInvalid) as exc:
            reason = exc.message if isinstance(exc, NoteInvalid) else "not UTF-8"
            raise _Problem(
                "refused", "critical", f"witness {name} sent an invalid cosignature: {reason}"
            ) from None
        raise _Problem("refused", "high", f"witness {name} answered without its cosignature")

    def _failed(self, witness: WitnessEntry, kind: str, severity: str, message: str, size: int) -> None:
        name = witness.verifier.name
        rounds = self._failed_rounds.get(name, 0) + 1
        self._failed_rounds[name] = rounds
        log.warning("%s", message)
        if kind == "unreachable" and rounds < UNREACHABLE_ROUNDS:
            return
        if (name, kind) in self._reported:
            return
        self._reported.add((name, kind))
        try:
            self._report(WitnessProblem(name, kind, severity, message, size))
        except Exception as exc:  # the next round reports again
            self._reported.discard((name, kind))
            log.error("witness problem could not be recorded: %s", type(exc).__name__)


class _Problem(Exception):
    def __init__(self, kind: str, severity: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.severity, self.message = kind, severity, message


def alert_on_problem(ledger: Ledger, index: Index, alerts: AlertStore) -> Callable[[WitnessProblem], None]:
    """Ledger a witness problem and raise an alert for the officers (subject ``system:witness …``:
    no automatic response applies to it, the notification does)."""

    def report(problem: WitnessProblem) -> None:
        now = datetime.now(UTC)
        subject = f"system:witness {problem.witness}"
        source = ledger.append(
            AuditEvent(
                kind=EventKind.ALERT,
                time=now,
                actor=WITNESSING_ACTOR,
                action="ledger.witness.problem",
                outcome=Outcome.FAILURE,
                object=ObjectRef(type="witness", id=problem.witness[:200]),
                reason=problem.message[:2000],
                details={"problem": problem.kind, "severity": problem.severity, "tree_size": problem.size},
            )
        )
        alert = NewAlert(
            source_index=source,
            event_time=now,
            subject=subject,
            severity=problem.severity,
            score=1.0,
            incident_id=None,
            patient=None,
            study_uid=None,
            reasons=(problem.message,),
            points={f"witness_{problem.kind}": 1.0},
            features={},
            incident=None,
        )
        leaf = canonical_bytes(
            AuditEvent(
                kind=EventKind.ALERT,
                time=now,
                actor=WITNESSING_ACTOR,
                action="ledger.witness.alert",
                outcome=Outcome.SUCCESS,
                reason=problem.message[:2000],
                details={
                    "source_index": source,
                    "subject": subject,
                    "severity": problem.severity,
                    "score_milli": 1000,
                    "rules": f"witness_{problem.kind}",
                },
            )
        )
        _, outbox = alerts.add_alerts([(alert, leaf)], now=now, owner=process_tag(), after_size=ledger.size)
        publish(ledger, index, outbox)

    return report


def witness_ssl_context(root: Path, ca_file: str) -> ssl.SSLContext | None:
    """The TLS trust for witnesses: the PEM file named by [ledger] witness_ca, else the system's."""
    if not ca_file:
        return None
    from medvault.crypto.tls import client_ssl_context

    return client_ssl_context(root / ca_file)


def read_policy(path: Path) -> WitnessPolicy:
    """A policy file, with errors naming the file and line."""
    from medvault.ledger.policy import parse_policy

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read the witness policy {path}: {exc}") from None
    try:
        return parse_policy(text)
    except InvalidInput as exc:
        raise InvalidInput(f"{path}: {exc.message}") from None


def fetch_views(
    policy: WitnessPolicy,
    origin: str,
    ssl_context: ssl.SSLContext | None,
    *,
    warn: Callable[[str], object],
    timeout: float = 5.0,
) -> list[bytes]:
    """What each witness with a URL holds for ``origin`` now (its cosigned checkpoint). A witness
    that cannot be reached is warned about, not fatal: the stored cosignatures still count."""
    views: list[bytes] = []
    with httpx.Client(verify=ssl_context if ssl_context is not None else True, timeout=timeout) as client:
        for w in policy.witnesses:
            if not w.url:
                continue
            try:
                answer = bounded_request(
                    client, "GET", f"{w.url}/latest", MAX_ANSWER_BYTES, params={"origin": origin}
                )
            except (httpx.HTTPError, InvalidInput) as exc:
                warn(f"witness {w.verifier.name} unreachable ({type(exc).__name__}): its view is not checked")
                continue
            if answer.status_code == 404:
                warn(f"witness {w.verifier.name} holds no checkpoint of this log yet")
            elif answer.status_code != 200:
                warn(f"witness {w.verifier.name} answered {answer.status_code}: its view is not checked")
            else:
                views.append(answer.content)
    return views


def witnessed_checkpoint(opened: OpenHome) -> bytes:
    """A checkpoint covering the ledger now, cosigned by the quorum if witnesses are configured
    (one witness round is run for it): what receipts and auditors are given."""
    ledger = opened.ledger
    ledger.flush()
    ledger.checkpoint()
    settings = opened.settings.ledger
    if not settings.witnesses:
        note = ledger.latest_checkpoint()
        assert note is not None
        return note
    policy = witness_policy(ledger.verifier_key_text(), settings.witnesses, settings.witness_quorum)
    witnessing = Witnessing(
        ledger,
        policy,
        report=alert_on_problem(ledger, opened.archive.index, opened.alerts),
        ssl_context=witness_ssl_context(opened.root, settings.witness_ca),
    )
    try:
        witnessing.submit_latest()
    finally:
        witnessing.close()
    note = ledger.cosigned_checkpoint(policy.quorum)
    if note is None:
        raise InvalidInput(
            f"no checkpoint is cosigned by {policy.quorum} witnesses yet",
            hint="Check that the witnesses are up (`medvault alerts list`), then try again.",
        )
    return note
