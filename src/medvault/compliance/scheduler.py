"""The scheduled retention job of ``serve``: applies the rules every ``[retention]
schedule_seconds`` while ``enabled`` (one process or thread of the server runs it).

The time of the last run is kept in ``HOME/run/retention-last``, so a server restarted more
often than the schedule still runs it. The rules are read from medvault.toml at every run (a
PUT /api/retention takes effect at the next one). With no rules a run does nothing at all (no
ledger event either): a hospital never loses data to a default.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from medvault.compliance.retention import RunReport, run_retention
from medvault.config import load_settings
from medvault.home import OpenHome
from medvault.ledger.events import Actor, ActorKind

log = logging.getLogger("medvault.retention")

RETENTION_ACTOR = Actor(kind=ActorKind.SYSTEM, id="medvault-retention")
STAMP = "run/retention-last"
FIRST_CHECK_SECONDS = 5.0
MAX_POLL_SECONDS = 60.0


class RetentionJob:
    def __init__(self, opened: OpenHome, *, clock: Callable[[], float] = time.time) -> None:
        self._opened = opened
        self._clock = clock
        self._stamp: Path = opened.root / STAMP

    def last_run(self) -> float | None:
        try:
            return float(self._stamp.read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            return None

    def due(self, schedule_seconds: int) -> bool:
        last = self.last_run()
        return last is None or self._clock() - last >= schedule_seconds

    def run_once(self) -> RunReport | None:
        """Run now if enabled, due and there are rules; the report, or None when nothing ran."""
        settings = load_settings(self._opened.root).retention
        if not settings.enabled or not settings.rules or not self.due(settings.schedule_seconds):
            return None
        report = run_retention(self._opened.archive, settings.rules, dry_run=False, actor=RETENTION_ACTOR)
        self._stamp.parent.mkdir(parents=True, exist_ok=True)
        self._stamp.write_text(f"{self._clock():.3f}\n", encoding="ascii")
        log.info(
            "retention run: %d studies examined, %d expired, %d held, %d undetermined, %d failed",
            report.examined,
            len(report.expired),
            len(report.held),
            len(report.undetermined),
            len(report.failed),
        )
        return report

    def run(self, stop: threading.Event) -> None:
        wait = FIRST_CHECK_SECONDS
        while not stop.wait(wait):
            try:
                self.run_once()
                wait = min(
                    MAX_POLL_SECONDS, float(load_settings(self._opened.root).retention.schedule_seconds)
                )
            except Exception as exc:  # keep serving; the next round tries again (no PHI in the log)
                log.error("retention run failed: %s", type(exc).__name__)
                wait = MAX_POLL_SECONDS
