"""The archive's witness client against witnesses that misbehave (httpx.MockTransport stands in
for the network; the real witness processes are in tests/integration/test_witness.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from tests.unit.ledger.conftest import make_event

from medvault.ledger.cosignature import Cosigner
from medvault.ledger.note import Signer, split_note
from medvault.ledger.policy import WitnessEntry, WitnessPolicy
from medvault.ledger.store import Ledger
from medvault.ledger.witness import AddCheckpoint, Recorded, check_add_checkpoint, parse_add_checkpoint
from medvault.witnessing import UNREACHABLE_ROUNDS, Witnessing, WitnessProblem

ORIGIN = "medvault.test/ledger"
SIGNER = Signer.from_private_bytes(name=ORIGIN, seed=bytes(range(32)))
WITNESS = Cosigner.from_private_bytes(name="w.example/w", seed=bytes([9]) * 32)


class HonestWitness:
    """The witness decision over a dict: what a correct witness answers."""

    def __init__(self) -> None:
        self.held: Recorded | None = None
        self.requests: list[AddCheckpoint] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        from medvault.errors import WitnessRefused

        parsed = parse_add_checkpoint(request.content)
        self.requests.append(parsed)
        try:
            self.held = check_add_checkpoint(parsed, {ORIGIN: [SIGNER.verifier]}, self.held)
        except WitnessRefused as exc:
            if exc.latest_size is not None:
                return httpx.Response(
                    409, text=f"{exc.latest_size}\n", headers={"content-type": "text/x.tlog.size"}
                )
            return httpx.Response(exc.http_status, text=exc.message)
        return httpx.Response(200, text=WITNESS.cosign(split_note(parsed.note)[0], 1_700_000_000))


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    opened = Ledger.open(tmp_path / "l.db", signer=SIGNER, origin=ORIGIN)
    opened.append_many([make_event(i) for i in range(5)])
    opened.checkpoint()
    return opened


def witnessing(
    ledger: Ledger, handler: Callable[[httpx.Request], httpx.Response]
) -> tuple[Witnessing, list[WitnessProblem]]:
    problems: list[WitnessProblem] = []
    policy = WitnessPolicy((SIGNER.verifier,), (WitnessEntry(WITNESS.verifier, "https://w.example"),), 1)
    return Witnessing(
        ledger, policy, report=problems.append, transport=httpx.MockTransport(handler)
    ), problems


def test_an_honest_witness_cosigns_and_a_restarted_client_learns_its_size(ledger: Ledger) -> None:
    witness = HonestWitness()
    client, problems = witnessing(ledger, witness)
    assert client.submit_latest() == 1 and not client.pending()
    ledger.append(make_event(9))
    ledger.checkpoint()
    fresh, _ = witnessing(ledger, witness)  # knows nothing of the witness: 409 with its size first
    assert fresh.submit_latest() == 1
    assert [r.old_size for r in witness.requests] == [0, 0, 5] and not problems
    assert ledger.cosigned_checkpoint(1) is not None


@pytest.mark.parametrize(
    ("answer", "kind", "severity"),
    [
        (httpx.Response(422, text="consistency proof does not verify"), "refused", "critical"),
        (httpx.Response(409, text="a different root for size 5"), "refused", "critical"),
        (httpx.Response(404, text="unknown log origin"), "misconfigured", "high"),
        (httpx.Response(200, text="\u2014 w.example/w AAAA\n"), "refused", "critical"),  # forged line
        (httpx.Response(200, text="nothing useful\n"), "refused", "high"),
        (httpx.Response(200, content=b"x" * 100_000), "refused", "high"),  # answers without end
        (
            httpx.Response(409, text="not a size", headers={"content-type": "text/x.tlog.size"}),
            "refused",
            "high",
        ),
    ],
)
def test_a_witness_that_refuses_or_misbehaves_is_reported_at_once(
    ledger: Ledger, answer: httpx.Response, kind: str, severity: str
) -> None:
    client, problems = witnessing(ledger, lambda request: answer)
    assert client.submit_latest() == 0
    assert [(p.kind, p.severity) for p in problems] == [(kind, severity)]
    client.submit_latest()
    assert len(problems) == 1  # reported once, not every round


def test_an_unreachable_witness_is_reported_after_some_rounds_and_writes_go_on(ledger: Ledger) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    client, problems = witnessing(ledger, down)
    for _ in range(UNREACHABLE_ROUNDS - 1):
        assert client.submit_latest() == 0
    assert problems == []
    client.submit_latest()
    assert [p.kind for p in problems] == ["unreachable"]
    ledger.append(make_event(10))  # the ledger never waited


def test_a_witness_ahead_of_this_ledger_means_a_rollback(ledger: Ledger) -> None:
    answer = httpx.Response(409, text="900\n", headers={"content-type": "text/x.tlog.size"})
    client, problems = witnessing(ledger, lambda request: answer)
    client.submit_latest()
    assert [(p.kind, p.severity) for p in problems] == [("refused", "critical")]
    assert "rolled back" in problems[0].message
