"""Options documented with an environment variable read it (typer 0.26 with current click did not:
issue 12 item 8's floors run caught `MEDVAULT_HOME` being ignored)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_medvault_home_from_the_environment_is_the_home(tmp_path: Path) -> None:
    home = tmp_path / "no-home-here"
    env = {**os.environ, "MEDVAULT_HOME": str(home), "MEDVAULT_PASSPHRASE": "x"}
    result = subprocess.run(
        [sys.executable, "-m", "medvault.cli", "ledger", "key"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"{home}/medvault.toml does not exist" in result.stderr.replace("\n", "")
