"""A child process for the multi-process and kill -9 tests: appends events, prints each acknowledged index.

Usage: python ledger_child.py PATH COUNT [checkpoint-every]   (COUNT 0 = forever)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root, for tests.*

from tests.unit.ledger.conftest import ORIGIN, SEED, make_event

from medvault.ledger import EventKind, Ledger, Signer


def main() -> None:
    path, count = sys.argv[1], int(sys.argv[2])
    every = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    signer = Signer.from_private_bytes(name=ORIGIN, seed=SEED)
    with Ledger.open(path, signer=signer, origin=ORIGIN) as ledger:
        n = 0
        while count == 0 or n < count:
            if n % 3 == 2:
                indices = ledger.append_many([make_event(n, EventKind.QUERY) for _ in range(8)])
            else:
                indices = [ledger.append(make_event(n, EventKind.STORE))]
            # acknowledged: durable before we say so
            sys.stdout.write("".join(f"{i}\n" for i in indices))
            sys.stdout.flush()
            n += 1
            if every and n % every == 0:
                ledger.checkpoint()


if __name__ == "__main__":
    main()
