"""Witness benchmark (issue 18): cosigning latency, mirror speed, receipt time, against the targets.

    .venv/bin/python bench/witness_bench.py                   # all three (~2 minutes)
    .venv/bin/python bench/witness_bench.py --entries 100000  # a smaller mirror run

1. A checkpoint cosigned by 3 witnesses (target < 50 ms on loopback): three real `medvault witness
   serve` processes on free ports; a ledger grows by 100 entries between checkpoints and
   `Witnessing.submit_latest` asks all three in parallel (HTTPS keep-alive, one consistency proof
   each). Timed: the whole round, from sending to holding three verified cosignatures.
2. A mirror keeps up with >= 20,000 new entries/s: a real `medvault serve` over a ledger of
   --entries entries; `medvault.mirroring.sync` copies it all in entry bundles and recomputes the
   tree. Timed: entries copied and verified per second.
3. Receipts for a patient with 1,000 accesses (target < 1 s): an archive whose ledger holds 1,000
   reads of one patient among --noise other events; `patient_receipt` (disclosure scan + 1,000
   inclusion proofs + the JSON). Timed: the call.
Each figure is printed with its ratio to the target (> 1 is better than the target).
"""

from __future__ import annotations

import argparse
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from medvault.crypto.keyring import TEST_SCRYPT
from medvault.ledger import Actor, ActorKind, AuditEvent, EventKind, Ledger, ObjectRef, Outcome, Signer
from medvault.ledger.events import canonical_bytes
from medvault.ledger.policy import WitnessEntry, WitnessPolicy
from medvault.witness_home import init_witness, open_witness
from medvault.witnessing import Witnessing

PASSPHRASE = "bench passphrase"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def leaf(n: int, patient: str | None = None) -> bytes:
    return canonical_bytes(
        AuditEvent(
            kind=EventKind.RETRIEVE,
            time=T0 + timedelta(milliseconds=n),
            actor=Actor(kind=ActorKind.USER, id=f"user-{n % 50}", address="10.0.0.1", auth="password+totp"),
            action="study.read",
            outcome=Outcome.SUCCESS,
            object=ObjectRef(type="study", id=f"1.2.826.0.1.3680043.8.498.{n}"),
            patient=patient,
        )
    )


def wait_up(url: str, context: ssl.SSLContext, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url} exited: {process.stderr.read().decode() if process.stderr else ''}")
        try:
            if httpx.get(f"{url}/healthz", verify=context, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not start")


def bench_cosigning(work: Path, rounds: int) -> list[float]:
    origin = "bench.example/ledger"
    signer = Signer.generate(name=origin)
    processes, entries = [], []
    ca_bundle = work / "cas.pem"
    try:
        for i in range(3):
            root, port = work / f"w{i}", free_port()
            cosigner = init_witness(
                root, name=f"w{i}.bench/w", passphrase=PASSPHRASE, port=port, scrypt=TEST_SCRYPT
            )
            opened = open_witness(root, PASSPHRASE)
            opened.add_log(signer.verifier_key_text())
            opened.close()
            env = {**os.environ, "MEDVAULT_PASSPHRASE": PASSPHRASE}
            process = subprocess.Popen(
                [sys.executable, "-m", "medvault.cli", "witness", "serve", "--home", str(root)],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            processes.append(process)
            url = f"https://localhost:{port}"
            wait_up(url, ssl.create_default_context(cafile=str(root / "tls/ca.pem")), process)
            entries.append(WitnessEntry(cosigner.verifier, url))
        ca_bundle.write_bytes(b"".join((work / f"w{i}" / "tls/ca.pem").read_bytes() for i in range(3)))
        ledger = Ledger.open(work / "ledger.db", signer=signer, origin=origin)
        policy = WitnessPolicy((signer.verifier,), tuple(entries), 2)
        problems: list[object] = []
        witnessing = Witnessing(
            ledger,
            policy,
            report=problems.append,
            ssl_context=ssl.create_default_context(cafile=str(ca_bundle)),
        )
        times = []
        n = 0
        for r in range(rounds + 3):
            ledger.append_leaves([leaf(n + i) for i in range(100)])
            n += 100
            ledger.checkpoint()
            start = time.perf_counter()
            got = witnessing.submit_latest()
            elapsed = time.perf_counter() - start
            if got != 3:
                raise SystemExit(f"round {r}: {got} cosignatures ({problems})")
            if r >= 3:  # the first rounds open connections and learn the witnesses' sizes
                times.append(elapsed)
        witnessing.close()
        ledger.close()
        return times
    finally:
        for process in processes:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=10)


def bench_mirror(work: Path, count: int) -> tuple[float, int]:
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from medvault.home import init_home, open_home
    from medvault.ledger.mirror import Mirror
    from medvault.mirroring import sync
    from medvault.witnessing import witness_policy

    root = work / "archive"
    init_home(root, PASSPHRASE, scrypt=TEST_SCRYPT)
    opened = open_home(root, PASSPHRASE)
    key = opened.api_keys.create("bench", role="auditor")
    ledger = opened.ledger
    for start in range(0, count, 10_000):
        ledger.append_leaves([leaf(i) for i in range(start, min(count, start + 10_000))])
    ledger.checkpoint()
    policy = witness_policy(ledger.verifier_key_text(), (), 0)
    opened.close()
    # The monitor of a fresh `serve` first scores the whole backlog (here every entry at once), in
    # the worker that also answers: off, so that what is timed is serving and copying the ledger.
    text = (root / "medvault.toml").read_text().replace("port = 2762", f"port = {free_port()}")
    text = text.replace("[monitor]", "[monitor]\nenabled = false", 1)
    text = text.replace("enabled = true\npoll_ms", "poll_ms")
    (root / "medvault.toml").write_text(text)
    port = free_port()
    env = {**os.environ, "MEDVAULT_PASSPHRASE": PASSPHRASE}
    process = subprocess.Popen(
        [sys.executable, "-m", "medvault.cli", "serve", "--home", str(root), "--port", str(port),
         "--workers", "1"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        context = ssl.create_default_context(cafile=str(root / "tls/ca.crt"))
        wait_up(f"https://127.0.0.1:{port}", context, process)
        mirror = Mirror(work / "mirror", policy)
        with httpx.Client(
            base_url=f"https://127.0.0.1:{port}",
            verify=context,
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        ) as client:
            start = time.perf_counter()
            result = sync(client, mirror)
            elapsed = time.perf_counter() - start
        mirror.close()
        if result.alerts:
            raise SystemExit(f"mirror alerts: {result.alerts}")
        return result.fetched / elapsed, result.fetched
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)


def bench_receipt(work: Path, accesses: int, noise: int) -> float:
    from medvault.compliance.receipts import patient_receipt
    from medvault.home import init_home, open_home
    from medvault.index.store import TAG_PATIENT_ID

    root = work / "receipts"
    init_home(root, PASSPHRASE, scrypt=TEST_SCRYPT)
    opened = open_home(root, PASSPHRASE)
    try:
        pseudonym = opened.archive.index.pseudonym(TAG_PATIENT_ID, "PAT-BENCH")
        others = [opened.archive.index.pseudonym(TAG_PATIENT_ID, f"OTHER-{i}") for i in range(50)]
        total = accesses + noise
        every = max(1, total // accesses)
        leaves, mine = [], 0
        for n in range(total):
            if n % every == 0 and mine < accesses:
                leaves.append(leaf(n, pseudonym))
                mine += 1
            else:
                leaves.append(leaf(n, others[n % 50]))
        for s in range(0, len(leaves), 10_000):
            opened.ledger.append_leaves(leaves[s : s + 10_000])
        note = opened.ledger.checkpoint()
        actor = Actor(kind=ActorKind.USER, id="cli:bench", auth="home-passphrase")
        start = time.perf_counter()
        receipt = patient_receipt(
            opened.archive, opened.ledger, "PAT-BENCH", checkpoint=note, actor=actor, reference="BENCH-1"
        )
        elapsed = time.perf_counter() - start
        if receipt.witnessed != accesses:
            raise SystemExit(f"receipt holds {receipt.witnessed} accesses, not {accesses}")
        return elapsed
    finally:
        opened.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50, help="cosigning rounds timed")
    parser.add_argument("--entries", type=int, default=300_000, help="ledger entries the mirror copies")
    parser.add_argument("--noise", type=int, default=100_000, help="other events around the 1,000 accesses")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="witness-bench-") as tmp:
        work = Path(tmp)
        times = bench_cosigning(work / "cosign", args.rounds)
        p50, p95 = statistics.median(times) * 1000, sorted(times)[int(0.95 * len(times)) - 1] * 1000
        print(f"cosigned by 3 witnesses: p50 {p50:.1f} ms, p95 {p95:.1f} ms over {len(times)} rounds "
              f"(target < 50 ms: {50 / p50:.1f}x better at p50)")  # fmt: skip
        rate, fetched = bench_mirror(work / "mirror", args.entries)
        print(f"mirror: {fetched} entries copied and verified at {rate:,.0f} entries/s "
              f"(target >= 20,000/s: {rate / 20_000:.2f}x)")  # fmt: skip
        seconds = bench_receipt(work / "receipt", 1000, args.noise)
        print(f"receipt for 1,000 accesses among {args.noise:,} other events: {seconds * 1000:.0f} ms "
              f"(target < 1 s: {1 / seconds:.1f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
