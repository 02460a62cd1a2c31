"""Ledger benchmark: durable appends, group commit, proofs at 1M entries, verify over 1M entries.

    .venv/bin/python bench/ledger_bench.py                  # the full run (~1M entries, a few minutes)
    .venv/bin/python bench/ledger_bench.py --entries 200000 # quicker

Events are built before the clock starts for the append figures (building them is the caller's
cost; the "incl. building" figure adds it back). Everything is durable: WAL + synchronous=FULL.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from medvault.ledger import (
    Actor,
    ActorKind,
    AuditEvent,
    EventKind,
    Ledger,
    ObjectRef,
    Outcome,
    Signer,
    leaf_hash,
    verify_ledger,
)

ORIGIN = "medvault.bench/ledger"
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def event(n: int) -> AuditEvent:
    return AuditEvent(
        kind=EventKind.RETRIEVE if n % 5 else EventKind.STORE,
        time=T0 + timedelta(microseconds=n),
        actor=Actor(
            kind=ActorKind.USER, id=f"user-{n % 97}", address=f"10.0.{n % 250}.7", auth="password+totp"
        ),
        action="wado-rs retrieve instance",
        outcome=Outcome.SUCCESS,
        object=ObjectRef(type="instance", id=f"1.2.826.0.1.3680043.8.498.{n}"),
        patient=f"{n % 100_000:032x}",
        details={"bytes": 500_000 + n % 1000, "frames": 1},
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--sustained", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--single", type=int, default=2_000)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="ledger-bench-"))
    path = workdir / "ledger.sqlite"
    signer = Signer.generate(name=ORIGIN)
    ledger = Ledger.open(path, signer=signer, origin=ORIGIN)
    n = 0

    events = [event(i) for i in range(args.single)]
    t = time.perf_counter()
    for e in events:
        ledger.append(e)
    dt = time.perf_counter() - t
    n += args.single
    print(
        f"durable single append:        {args.single / dt:10,.0f} events/s"
        f"  ({dt / args.single * 1e6:.0f} us each)"
    )

    t_build = time.perf_counter()
    events = [event(n + i) for i in range(args.sustained)]
    build = time.perf_counter() - t_build
    t = time.perf_counter()
    for k in range(0, args.sustained, args.batch):
        ledger.append_many(events[k : k + args.batch])
    dt = time.perf_counter() - t
    n += args.sustained
    print(
        f"append_many (batch {args.batch}), {args.sustained:,} events sustained:"
        f" {args.sustained / dt:10,.0f} events/s"
        f"  (incl. building events: {args.sustained / (dt + build):,.0f}/s)"
    )
    del events

    t = time.perf_counter()
    while n < args.entries:
        chunk = min(100_000, args.entries - n)
        evs = [event(n + i) for i in range(chunk)]
        for k in range(0, chunk, 4096):
            ledger.append_many(evs[k : k + 4096])
        n += chunk
    print(f"filled to {n:,} entries in {time.perf_counter() - t:.1f} s (batches of 4096, incl. building)")
    ledger.checkpoint()
    size = ledger.size

    rng = random.Random(1)
    lat_i, lat_c = [], []
    root = ledger.root(size)
    for _ in range(500):
        i = rng.randrange(size)
        t = time.perf_counter()
        proof = ledger.inclusion_proof(i, size)
        lat_i.append(time.perf_counter() - t)
        proof.verify(leaf_hash(ledger.entry(i)), root)
        m = rng.randrange(1, size)
        t = time.perf_counter()
        ledger.consistency_proof(m, size)
        lat_c.append(time.perf_counter() - t)
    print(
        f"inclusion proof at {size:,}:  median {statistics.median(lat_i) * 1e6:.0f} us,"
        f" p99 {sorted(lat_i)[494] * 1e6:.0f} us ({len(proof.hashes)} hashes)"
    )
    print(
        f"consistency proof at {size:,}: median {statistics.median(lat_c) * 1e6:.0f} us,"
        f" p99 {sorted(lat_c)[494] * 1e6:.0f} us"
    )
    ledger.close()

    t = time.perf_counter()
    report = verify_ledger(path, verifier_key=signer.verifier_key_text())
    dt = time.perf_counter() - t
    print(f"verify over {report.size:,} entries: {dt:.1f} s  ({'OK' if report.ok else 'FAILED'})")
    print(f"file: {path} ({path.stat().st_size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
