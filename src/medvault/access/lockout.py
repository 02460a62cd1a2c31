"""Lockout with growing back-off after repeated sign-in failures. Pure: the store keeps counters.

Counters are kept per account name (known or not, so a lockout reveals nothing about which names
exist) and per client address. After :attr:`LockoutPolicy.threshold` failures in a row, the key is
locked for ``base``, doubling with every further failure, capped at ``cap``. A success clears the
account's counter but not the client's (an attacker with one valid account cannot wash an address
clean); a counter is forgotten ``forget_after`` after its last failure. Attempts while locked are
refused without checking the password and do not count.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from medvault.errors import Unauthenticated

__all__ = ["DEFAULT_LOCKOUT", "Counter", "LockoutPolicy", "TooManyAttempts"]


class TooManyAttempts(Unauthenticated):
    """Too many failed sign-ins: refused until ``retry_after`` seconds have passed (HTTP 429)."""

    http_status = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            "too many failed sign-in attempts; try again later",
            hint=f"Wait {retry_after} seconds before trying again.",
        )
        self.retry_after = retry_after


@dataclass(frozen=True)
class Counter:
    failures: int
    last_failure: datetime


@dataclass(frozen=True, kw_only=True)
class LockoutPolicy:
    threshold: int = 5
    base: timedelta = timedelta(minutes=1)
    cap: timedelta = timedelta(hours=1)
    forget_after: timedelta = timedelta(hours=24)

    def delay(self, failures: int) -> timedelta:
        """How long a key is locked after its ``failures``-th failure in a row."""
        if failures < self.threshold:
            return timedelta(0)
        doublings = min(failures - self.threshold, 32)
        return min(self.base * (1 << doublings), self.cap)

    def current(self, counter: Counter | None, now: datetime) -> int:
        """The failure count still in force at ``now``."""
        if counter is None or now - counter.last_failure >= self.forget_after:
            return 0
        return counter.failures

    def locked_for(self, counter: Counter | None, now: datetime) -> int:
        """Seconds until the key may try again (0: not locked)."""
        failures = self.current(counter, now)
        delay = self.delay(failures)
        if counter is None or not delay:
            return 0
        until = counter.last_failure + delay
        remaining = (until - now).total_seconds()
        return max(0, int(remaining + 0.999))

    def after_failure(self, counter: Counter | None, now: datetime) -> Counter:
        return Counter(self.current(counter, now) + 1, now)


DEFAULT_LOCKOUT: Final = LockoutPolicy()
