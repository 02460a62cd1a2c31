"""Every sh/bash/python snippet of README.md and docs/*.md runs as written (issue 20, item 4).

The snippets run against a quickstart archive, from a folder laid out as the README leaves a
reader's checkout after command 1: ``.venv`` (this interpreter's environment) and ``medvault-demo``
(made by `medvault quickstart`), with ``MEDVAULT_HOME`` and ``KEY`` set as the README says. The
one change made to a snippet: the server listens on a free port, not 8443 (tests never bind fixed
ports), so ``127.0.0.1:8443`` is pointed there.

A snippet that is not run here says why, in an HTML comment on the line above its fence:

* ``<!-- snippet: run by PATH … -->``: another test or script runs it (PATH must exist);
* ``<!-- snippet: benchmark -->``: a measurement that takes minutes (the bench/ files it names
  must exist);
* ``<!-- snippet: illustrative (why) -->``: an API overview or a site's own values, not meant to be
  run as written. Kept few: see ``MAX_ILLUSTRATIVE``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Home, Server, free_port, start_server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = {"sh": "bash", "bash": "bash", "python": "python"}
MARK = re.compile(r"^<!--\s*snippet:\s*(?P<kind>run by|benchmark|illustrative)\b(?P<rest>.*?)-->\s*$")
MAX_ILLUSTRATIVE = 8
SNIPPET_SECONDS = 60


@dataclass(frozen=True)
class Snippet:
    document: Path
    line: int  # of the opening fence
    language: str
    code: str
    mark: str | None  # "run by …", "benchmark", "illustrative …"; None: run here

    @property
    def name(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


def snippets() -> Iterator[Snippet]:
    for document in DOCUMENTS:
        lines = document.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            fence = re.match(r"^```(\w*)\s*$", lines[i])
            if fence is None:
                i += 1
                continue
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            language = fence.group(1)
            if language in RUNNABLE:
                above = lines[i - 1] if i else ""
                mark = MARK.match(above)
                text = f"{mark.group('kind')}{mark.group('rest')}".strip() if mark else None
                yield Snippet(document, i + 1, language, "\n".join(lines[i + 1 : end]) + "\n", text)
            i = end + 1


SNIPPETS = list(snippets())
TO_RUN = [s for s in SNIPPETS if s.mark is None]


def test_every_snippet_not_run_here_says_why() -> None:
    assert TO_RUN, "no snippet is run"
    illustrative = [s.name for s in SNIPPETS if s.mark and s.mark.startswith("illustrative")]
    assert len(illustrative) <= MAX_ILLUSTRATIVE, illustrative
    for snippet in SNIPPETS:
        if snippet.mark is None:
            continue
        if snippet.mark.startswith("illustrative"):
            assert "(" in snippet.mark, f"{snippet.name}: say why it is illustrative"
        elif snippet.mark.startswith("run by"):
            runner = snippet.mark.removeprefix("run by").split()[0]
            assert (ROOT / runner).is_file(), f"{snippet.name}: {runner} does not exist"
        else:  # benchmark
            named = re.findall(r"\bbench/[\w./-]+\.(?:py|sh)\b", snippet.code)
            assert named, f"{snippet.name}: a benchmark snippet names its bench/ script"
            for path in named:
                assert (ROOT / path).is_file(), f"{snippet.name}: {path} does not exist"


@dataclass
class Reader:
    """A reader's folder after README command 1, and the served quickstart archive."""

    folder: Path
    server: Server
    key: str

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVAULT_")}
        bin_dir = str(self.folder / ".venv" / "bin")
        return {**env, "PATH": f"{bin_dir}:{env.get('PATH', '')}", "MEDVAULT_HOME": "medvault-demo",
                "KEY": self.key}  # fmt: skip


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reader]:
    folder = tmp_path_factory.mktemp("reader")
    (folder / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    medvault = str(folder / ".venv" / "bin" / "medvault")
    made = subprocess.run(
        [medvault, "quickstart", "--no-serve", "--dimse-port", str(free_port())],
        cwd=folder, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("MEDVAULT_")},
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    key = re.search(r"API key\s*:\s*(mvk_\S+)", made.stdout)
    assert key is not None, made.stdout
    demo = folder / "medvault-demo"
    passphrase = (folder / "medvault-demo.passphrase").read_text().strip()
    server = start_server(Home(demo, key.group(1), passphrase=passphrase))
    try:
        yield Reader(folder, server, key.group(1))
    finally:
        server.stop()


@pytest.mark.parametrize("snippet", TO_RUN, ids=[s.name for s in TO_RUN])
def test_the_snippet_runs_as_written(reader: Reader, snippet: Snippet) -> None:
    code = snippet.code.replace("127.0.0.1:8443", f"127.0.0.1:{reader.server.port}")
    if RUNNABLE[snippet.language] == "bash":
        argv = ["bash", "-euo", "pipefail", "-c", code]
    else:
        argv = [str(reader.folder / ".venv" / "bin" / "python"), "-c", code]
    result = subprocess.run(
        argv, cwd=reader.folder, env=reader.env(), capture_output=True, text=True, timeout=SNIPPET_SECONDS,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, f"{snippet.name} failed:\n{result.stdout}\n{result.stderr}"
