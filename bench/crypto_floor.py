#!/usr/bin/env python3
"""The CPU that medvault's mandated cryptography costs per GB on this machine, before any other work.

Every read must decrypt (AES-256-GCM), re-check the SHA-256 recorded at ingest and go out over TLS;
every write pays the same three in the other direction. This times each primitive alone, on one
core, and medvault's own envelope code over CT-sized objects, so that a server's measured CPU per
GB (``bench/wado_cpu.py``) can be set against the floor no implementation of these rules goes below:

    .venv/bin/python bench/crypto_floor.py            # 512 MiB per figure
    .venv/bin/python bench/crypto_floor.py --mib 2048

TLS is approximated by AES-256-GCM over 16 KiB records (TLS 1.3's record size and the cipher
Python's default context negotiates first); the kernel's socket copies are not counted, as a
plain-HTTP server pays those too.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medvault.api.server import keep_freed_memory
from medvault.crypto.envelope import decrypt_object_into, encrypt_object, plaintext_length

GB = 1e9
OBJECT = 512 * 512 * 2 + 1_500  # a 512x512 16-bit CT instance and its header, as bench/generate.py makes
SEGMENT = 64 * 1024  # medvault's envelope segment
RECORD = 16 * 1024  # TLS's largest record


def cpu_per_gb(nbytes: int, work: Callable[[], None]) -> float:
    """Single-thread CPU seconds of ``work`` (which handles ``nbytes``), scaled to one GB."""
    work()  # warm: first-touch page faults are not the primitive's cost
    start = time.thread_time()
    work()
    return (time.thread_time() - start) / nbytes * GB


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=int, default=512, help="data per figure (default 512)")
    args = parser.parse_args()
    keep_freed_memory()  # as `medvault serve` does: without it each fresh 525 KB buffer costs page faults
    total = args.mib * 1024 * 1024
    count = total // OBJECT
    distinct = [os.urandom(OBJECT) for _ in range(min(count, 64))]  # more would only fill memory
    objects = [distinct[i % len(distinct)] for i in range(count)]
    nbytes = count * OBJECT
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    nonce = os.urandom(12)

    def sha256() -> None:
        for o in objects:
            hashlib.sha256(o).digest()

    def gcm(size: int) -> Callable[[], None]:
        def run() -> None:
            for o in objects:
                view = memoryview(o)
                for at in range(0, len(o), size):
                    aead.encrypt(nonce, view[at : at + size], None)

        return run

    key, object_id = os.urandom(32), os.urandom(16)
    sealed = [encrypt_object(o, key, object_id=object_id) for o in distinct]
    blobs = [sealed[i % len(sealed)] for i in range(count)]
    out = bytearray(OBJECT)

    def envelope_encrypt() -> None:
        for o in objects:
            encrypt_object(o, key, object_id=object_id)

    def envelope_decrypt() -> None:
        view = memoryview(out)
        for b in blobs:
            decrypt_object_into(b, key, object_id=object_id, out=view[: plaintext_length(b)])

    rows = [
        ("SHA-256 (integrity record, checked on every read)", cpu_per_gb(nbytes, sha256)),
        ("AES-256-GCM over 64 KiB segments (at rest)", cpu_per_gb(nbytes, gcm(SEGMENT))),
        ("AES-256-GCM over 16 KiB records (TLS on the wire)", cpu_per_gb(nbytes, gcm(RECORD))),
        ("medvault envelope encrypt (one object at a time)", cpu_per_gb(nbytes, envelope_encrypt)),
        ("medvault envelope decrypt_into", cpu_per_gb(nbytes, envelope_decrypt)),
    ]
    rows.append(("floor of one retrieval or store: the first three", sum(v for _, v in rows[:3])))
    width = max(len(name) for name, _ in rows)
    print(f"{nbytes / 2**20:.0f} MiB in {OBJECT / 1000:.0f} kB objects; CPU seconds per GB, one core:")
    for name, value in rows:
        print(f"  {name:<{width}}  {value:5.2f}")


if __name__ == "__main__":
    main()
