"""The server keeps freed request buffers for reuse instead of faulting in fresh pages each time."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

PROGRAM = """
import resource, sys, threading
from medvault.api.server import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def requests():  # like STOW/WADO requests: a few instance-sized buffers, written, then freed
    for _ in range(50):
        buffers = [bytes(600_000) + b"x" for _ in range(8)]
        del buffers
requests()  # the heap grows once
before = faults()
requests()
worker = threading.Thread(target=requests)  # and in a worker thread's arena
worker.start()
worker.join()
print(faults() - before)
"""


def _page_faults(mode: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True, timeout=60
    )
    return int(result.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_freed_buffers_are_reused_instead_of_faulted_in_again() -> None:
    # 2 x 50 x 8 buffers of 600 kB are ~58,000 pages when each is a fresh mapping
    assert _page_faults("default") > 20_000
    assert _page_faults("tuned") < 5_000
