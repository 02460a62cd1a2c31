"""Backup benchmark: create, verify and restore a home of synthetic CT (docs/compliance.md).

    .venv/bin/python bench/backup_bench.py                      # 200 instances of 256 x 256
    .venv/bin/python bench/backup_bench.py --instances 2000 --size 512

Through the Python API (no command start-up); every object is fsynced as the command does.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from medvault.audit import SYSTEM
from medvault.compliance.backup import create_backup, restore_backup, verify_backup
from medvault.crypto.keyring import TEST_SCRYPT
from medvault.home import init_home, open_home
from medvault.sample import generate_study

PASSPHRASE = "benchmark passphrase, not for production"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=200, help="instances (4 series)")
    parser.add_argument("--size", type=int, default=256, help="rows and columns of each image")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        init_home(root / "home", PASSPHRASE, scrypt=TEST_SCRYPT)
        opened = open_home(root / "home", PASSPHRASE)
        try:
            files = generate_study(
                root / "in",
                seed=3,
                series=4,
                instances=max(1, args.instances // 4),
                rows=args.size,
                cols=args.size,
                patient_name="BENCH^BACKUP",
                patient_id="BENCH-1",
            )
            opened.archive.store_batch([p.read_bytes() for p in files])
            start = time.perf_counter()
            result = create_backup(opened, root / "backup", actor=SYSTEM)
            created = time.perf_counter() - start
        finally:
            opened.close()
        start = time.perf_counter()
        checked = verify_backup(root / "backup", home=root / "home")
        verified = time.perf_counter() - start
        start = time.perf_counter()
        restore_backup(root / "backup", root / "restored", passphrase=PASSPHRASE, actor=SYSTEM)
        restored = time.perf_counter() - start
        mb = result.manifest.total_bytes / 1e6
        print(
            f"{len(result.manifest.objects)} objects, {mb:.1f} MB: create {created:.2f} s "
            f"({mb / created:.0f} MB/s), verify {verified:.2f} s (ok={checked.ok}), restore {restored:.2f} s"
        )


if __name__ == "__main__":
    main()
