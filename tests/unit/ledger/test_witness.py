"""The witness core: cosignatures (C2SP tlog-cosignature), the add-checkpoint wire format, and the
decision state machine (C2SP tlog-witness), with property tests over honest and forked logs."""

from __future__ import annotations

import base64
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from medvault.errors import NoteInvalid, WitnessRefused
from medvault.ledger.cosignature import (
    CosignatureVerifier,
    Cosigner,
    add_signature_lines,
    cosignatures,
)
from medvault.ledger.merkle import EMPTY_ROOT, consistency_proof, leaf_hash, root_from_leaf_hashes
from medvault.ledger.note import Signer, Verifier, split_note
from medvault.ledger.witness import (
    MAX_PROOF_LINES,
    AddCheckpoint,
    Recorded,
    check_add_checkpoint,
    format_add_checkpoint,
    parse_add_checkpoint,
)
from medvault.ledger.witness_store import WitnessStore

ORIGIN = "hospital.example/ledger"
LOG = Signer.from_private_bytes(name=ORIGIN, seed=bytes(range(32)))
OTHER = Signer.from_private_bytes(name=ORIGIN, seed=bytes(range(1, 33)))  # same name, another key
WITNESS = Cosigner.from_private_bytes(name="regulator.example/w1", seed=bytes(range(2, 34)))
LOGS: dict[str, list[Verifier]] = {ORIGIN: [LOG.verifier]}


def leaves(n: int, fork_at: int | None = None) -> list[bytes]:
    return [
        leaf_hash(b"entry %d%s" % (i, b"!" if fork_at is not None and i >= fork_at else b""))
        for i in range(n)
    ]


def note_for(hashes: list[bytes], signer: Signer = LOG) -> bytes:
    return signer.sign_checkpoint(ORIGIN, len(hashes), root_from_leaf_hashes(hashes))


def request(hashes: list[bytes], old: int, signer: Signer = LOG) -> AddCheckpoint:
    proof = consistency_proof(old, hashes) if 0 < old < len(hashes) else []
    return AddCheckpoint(old, tuple(proof), note_for(hashes, signer))


def recorded(hashes: list[bytes]) -> Recorded:
    return Recorded(origin=ORIGIN, size=len(hashes), root_hash=root_from_leaf_hashes(hashes), note=b"")


def refusal(req: AddCheckpoint, current: Recorded | None, logs: dict[str, list[Verifier]] = LOGS) -> int:
    with pytest.raises(WitnessRefused) as info:
        check_add_checkpoint(req, logs, current)
    return info.value.http_status


# --- cosignatures -------------------------------------------------------------------------------


def test_a_cosignature_verifies_and_carries_its_timestamp() -> None:
    note = note_for(leaves(5))
    text, _ = split_note(note)
    line = WITNESS.cosign(text, 1_700_000_000)
    cosigned = add_signature_lines(note, line.encode())
    [cosig] = cosignatures(cosigned, [WITNESS.verifier])
    assert (cosig.name, cosig.timestamp) == ("regulator.example/w1", 1_700_000_000)
    # the log's own signature still verifies on the merged note
    assert Verifier.from_key_text(LOG.verifier_key_text()).name == ORIGIN


def test_the_signed_message_is_the_spec_s() -> None:
    note = note_for(leaves(3))
    text, _ = split_note(note)
    _, [(_, raw)] = split_note(b"x\n\n" + WITNESS.cosign(text, 42).encode())
    assert raw[:4] == WITNESS.verifier.key_id and struct.unpack(">Q", raw[4:12]) == (42,)
    message = b"cosignature/v1\ntime 42\n" + text.encode()
    WITNESS.verifier.public_key.verify(raw[12:], message)  # raises if not exactly this message


def test_verifier_key_text_round_trips_and_types_do_not_mix() -> None:
    text = WITNESS.verifier_key_text()
    assert base64.b64decode(text.split("+", 2)[2])[0] == 0x04
    assert CosignatureVerifier.from_key_text(text) == WITNESS.verifier
    with pytest.raises(NoteInvalid):
        CosignatureVerifier.from_key_text(LOG.verifier_key_text())  # a note key (0x01) is no cosigner
    with pytest.raises(NoteInvalid):
        Verifier.from_key_text(text)


def test_unknown_cosigners_are_ignored_and_a_forged_one_is_an_error() -> None:
    note = note_for(leaves(4))
    text, _ = split_note(note)
    stranger = Cosigner.from_private_bytes(name="stranger.example/w", seed=bytes(32))
    merged = add_signature_lines(note, stranger.cosign(text, 7).encode())
    assert cosignatures(merged, [WITNESS.verifier]) == []
    forged = WITNESS.cosign(note_for(leaves(5)).decode().split("\n\n")[0] + "\n", 7)  # for another tree
    with pytest.raises(NoteInvalid, match="does not verify"):
        cosignatures(add_signature_lines(note, forged.encode()), [WITNESS.verifier])


def test_adding_the_same_lines_twice_keeps_one_copy() -> None:
    note = note_for(leaves(2))
    line = WITNESS.cosign(split_note(note)[0], 9).encode()
    once = add_signature_lines(note, line)
    assert add_signature_lines(once, line) == once


# --- the wire format ----------------------------------------------------------------------------


@given(
    old=st.integers(0, 2**64 - 1),
    proof=st.lists(st.binary(min_size=32, max_size=32), max_size=MAX_PROOF_LINES),
)
def test_request_bodies_round_trip(old: int, proof: list[bytes]) -> None:
    note = note_for(leaves(1))
    assert parse_add_checkpoint(format_add_checkpoint(old, proof, note)) == AddCheckpoint(
        old, tuple(proof), note
    )


@pytest.mark.parametrize(
    "body",
    [
        b"old 3\n",  # no empty line
        b"old 03\n\nnote",  # leading zero
        b"old -1\n\nnote",
        b"new 3\n\nnote",
        b"old 3\nnot base64!\n\nnote",
        b"old 3\n" + base64.b64encode(b"short") + b"\n\nnote",
        b"old 3\n" + b"".join(base64.b64encode(bytes(32)) + b"\n" for _ in range(64)) + b"\nnote",
        b"old \xff\n\nnote",
        b"old 18446744073709551616\n\nnote",  # 2^64
        b"x" * 70_000,
    ],
)
def test_malformed_requests_are_400(body: bytes) -> None:
    with pytest.raises(WitnessRefused) as info:
        parse_add_checkpoint(body)
    assert info.value.http_status == 400


@given(st.binary(max_size=300))
def test_any_bytes_get_a_refusal_or_a_request_never_a_crash(body: bytes) -> None:
    try:
        req = parse_add_checkpoint(body)
    except WitnessRefused as exc:
        assert exc.http_status == 400
        return
    try:
        check_add_checkpoint(req, LOGS, None)
    except WitnessRefused as exc:
        assert exc.http_status in (400, 403, 404, 409, 422)


# --- the decision -------------------------------------------------------------------------------


def test_honest_growth_is_cosigned_from_nothing_then_step_by_step() -> None:
    first = check_add_checkpoint(request(leaves(5), 0), LOGS, None)
    assert (first.size, first.root_hash) == (5, root_from_leaf_hashes(leaves(5)))
    second = check_add_checkpoint(request(leaves(12), 5), LOGS, first)
    assert second.size == 12
    again = check_add_checkpoint(request(leaves(12), 12), LOGS, second)  # same tree: cosigned again
    assert again.root_hash == second.root_hash


def test_each_refusal_has_the_protocol_s_status() -> None:
    five = recorded(leaves(5))
    assert refusal(request(leaves(5), 0), None, {"other.example/log": [LOG.verifier]}) == 404
    assert refusal(request(leaves(5), 0, OTHER), None) == 403  # right name, wrong key
    assert refusal(AddCheckpoint(6, (), note_for(leaves(5))), None) == 400  # old above the size
    with pytest.raises(WitnessRefused) as info:
        check_add_checkpoint(request(leaves(9), 3), LOGS, five)  # client thinks we hold 3
    assert (info.value.http_status, info.value.latest_size) == (409, 5)
    bad = request(leaves(9), 5)
    bad = AddCheckpoint(5, (bytes(32), *bad.proof[1:]), bad.note)
    assert refusal(bad, five) == 422
    assert refusal(AddCheckpoint(0, (bytes(32),), note_for(leaves(4))), None) == 422  # proof from 0
    assert refusal(request(leaves(5, fork_at=2), 5), five) == 409  # another root for size 5


def test_a_rewritten_history_is_refused_and_a_rollback_too() -> None:
    honest = recorded(leaves(20))
    forked = leaves(30, fork_at=10)  # entries from 10 on rewritten, then re-signed by the log's key
    assert refusal(request(forked, 20), honest) == 422
    assert refusal(request(leaves(15), 20), honest) == 400  # old 20 > size 15
    assert refusal(request(leaves(15), 15), honest) == 409  # old size is not what we hold


def test_an_empty_tree_must_have_the_empty_root() -> None:
    assert check_add_checkpoint(AddCheckpoint(0, (), LOG.sign_checkpoint(ORIGIN, 0, EMPTY_ROOT)), LOGS, None)
    assert refusal(AddCheckpoint(0, (), LOG.sign_checkpoint(ORIGIN, 0, bytes(32))), None) == 422


class WitnessMachine(RuleBasedStateMachine):
    """Any mix of honest and forked submissions, with any claimed old size: the witness's view only
    grows, never holds two roots for one size, and each step is consistent with the last."""

    def __init__(self) -> None:
        super().__init__()
        self.current: Recorded | None = None
        self.seen: dict[int, bytes] = {}
        self.history: list[Recorded] = []

    @rule(
        size=st.integers(0, 40),
        fork_at=st.one_of(st.none(), st.integers(0, 39)),
        old=st.one_of(st.just(-1), st.integers(0, 40)),
    )
    def submit(self, size: int, fork_at: int | None, old: int) -> None:
        hashes = leaves(size, fork_at)
        held = 0 if self.current is None else self.current.size
        claimed = held if old == -1 else old  # -1: the client knows what we hold
        if claimed > size:
            claimed = size
        proof = consistency_proof(claimed, hashes) if 0 < claimed < size else []
        try:
            new = check_add_checkpoint(
                AddCheckpoint(claimed, tuple(proof), note_for(hashes)), LOGS, self.current
            )
        except WitnessRefused as exc:
            assert exc.http_status in (400, 409, 422)
            return
        if self.current is not None:
            assert new.size >= self.current.size
            honest_prefix = fork_at is None or fork_at >= self.current.size
            assert honest_prefix or self.current.root_hash == root_from_leaf_hashes(
                hashes[: self.current.size]
            )
        self.current = new
        self.history.append(new)

    @invariant()
    def one_root_per_size(self) -> None:
        for rec in self.history:
            assert self.seen.setdefault(rec.size, rec.root_hash) == rec.root_hash

    @invariant()
    def never_shrinks(self) -> None:
        sizes = [r.size for r in self.history]
        assert sizes == sorted(sizes)


TestWitnessMachine = WitnessMachine.TestCase
TestWitnessMachine.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)


# --- the durable store --------------------------------------------------------------------------


def cosign_at(ts: int) -> Callable[[Recorded], str]:
    def cosign(rec: Recorded) -> str:
        return WITNESS.cosign(split_note(rec.note)[0], ts)

    return cosign


def test_the_store_records_before_it_answers_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "witness.db"
    with WitnessStore(path) as store:
        line = store.add_checkpoint(request(leaves(8), 0), LOGS, cosign_at(1), now=1)
        assert cosignatures(add_signature_lines(note_for(leaves(8)), line.encode()), [WITNESS.verifier])
    assert (path.stat().st_mode & 0o777) == 0o600
    with WitnessStore(path) as store:
        held = store.latest(ORIGIN)
        assert held is not None and held.size == 8
        with pytest.raises(WitnessRefused) as info:
            store.add_checkpoint(request(leaves(8, fork_at=3), 8), LOGS, cosign_at(2), now=2)
        assert info.value.http_status == 409
        [evidence] = store.refusals()
        assert evidence.status == 409 and evidence.note == note_for(leaves(8, fork_at=3))
        held_after = store.latest(ORIGIN)
        assert held_after is not None and held_after.root_hash == root_from_leaf_hashes(leaves(8))


def test_a_cosigning_failure_records_nothing(tmp_path: Path) -> None:
    def broken(rec: Recorded) -> str:
        raise RuntimeError("signer unavailable")

    with WitnessStore(tmp_path / "w.db") as store:
        with pytest.raises(RuntimeError):
            store.add_checkpoint(request(leaves(3), 0), LOGS, broken, now=1)
        assert store.latest(ORIGIN) is None


def test_concurrent_submissions_cannot_roll_the_view_back(tmp_path: Path) -> None:
    """The spec's race: requests for N and N+K checked, then stored out of order."""
    with WitnessStore(tmp_path / "w.db") as store:
        store.add_checkpoint(request(leaves(10), 0), LOGS, cosign_at(1), now=1)
        outcomes: list[int] = []

        def submit(size: int) -> None:
            try:
                store.add_checkpoint(request(leaves(size), 10), LOGS, cosign_at(2), now=2)
                outcomes.append(size)
            except WitnessRefused as exc:
                outcomes.append(-exc.http_status)

        threads = [threading.Thread(target=submit, args=(n,)) for n in (11, 20, 30, 40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        accepted = [n for n in outcomes if n > 0]
        assert len(accepted) == 1  # every other one claimed old 10 after the view moved: 409
        held = store.latest(ORIGIN)
        assert held is not None and held.size == accepted[0]
        assert sorted(n for n in outcomes if n < 0) == [-409, -409, -409]
