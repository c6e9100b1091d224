"""Crash-loop backoff: failed starts in a row, and when the next start may be tried.

Stored per profile as a hash (``failures``, ``next_attempt``, ``delay``). After ``start_retries``
failures in a row the delay doubles from 1 s up to ``backoff_max``; a good start
resets it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis

from workerguard.store import keys


@dataclass(frozen=True)
class Backoff:
    failures: int = 0
    next_attempt: float = 0.0
    delay: float = 0.0
    """The delay that set ``next_attempt``: a clock set back never makes the wait longer."""

    def remaining(self, now: float, cap: float | None = None) -> float:
        """Seconds until the next start may be tried, never more than ``delay`` or ``cap``
        whatever the wall clock did since (``next_attempt`` is a wall-clock time)."""
        left = self.next_attempt - now
        bound = self.delay if self.delay > 0 else left
        if cap is not None:
            bound = min(bound, cap)
        return max(0.0, min(left, bound))

    def active(self, now: float, cap: float | None = None) -> bool:
        return self.remaining(now, cap) > 0

    def clock_went_back(self, now: float) -> bool:
        """``next_attempt`` lies further ahead than the delay that set it: the wall clock
        was set back since the failure. Its wait is then re-anchored to ``now``."""
        return self.delay > 0 and self.next_attempt - now > self.delay + 0.001


def delay(failures: int, start_retries: int, backoff_max: float) -> float:
    """Seconds to wait after ``failures`` failed starts in a row: 0, then 1, 2, 4 ..."""
    if failures < start_retries:
        return 0.0
    return min(float(2 ** min(failures - start_retries, 30)), backoff_max)


class Backoffs:
    """The crash-loop state of one host's profiles."""

    def __init__(self, client: redis.Redis, host: str) -> None:
        self.client = client
        self.host = host

    def read(self, profiles: Sequence[str]) -> dict[str, Backoff]:
        """The backoff of each profile, in one round trip."""
        if not profiles:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for p in profiles:
            pipe.hgetall(keys.backoff(self.host, p))
        return {p: decode(raw) for p, raw in zip(profiles, pipe.execute(), strict=True)}

    def record_failure(self, profile: str, start_retries: int, backoff_max: float,
                       now: float) -> Backoff:
        """Count a failed start; after ``start_retries`` in a row, delay 1, 2, 4 ... s."""
        key = keys.backoff(self.host, profile)
        failures = int(self.client.hincrby(key, "failures", 1))
        wait = delay(failures, start_retries, backoff_max)
        backoff = Backoff(failures, now + wait if wait else 0.0, wait)
        self.client.hset(key, mapping={"next_attempt": backoff.next_attempt, "delay": wait})
        return backoff

    def reanchor(self, profile: str, backoff: Backoff, now: float, cap: float) -> Backoff:
        """After the clock was set back: the next attempt ``delay`` (at most ``cap``) from
        ``now``, so the wait never outlasts the delay however far the clock jumped."""
        moved = Backoff(backoff.failures, now + min(backoff.delay, cap), backoff.delay)
        self.client.hset(keys.backoff(self.host, profile), "next_attempt", moved.next_attempt)
        return moved

    def reset(self, profile: str) -> None:
        """A good start: the count starts afresh."""
        self.client.delete(keys.backoff(self.host, profile))


def decode(raw: dict[bytes, bytes]) -> Backoff:
    return Backoff(int(raw.get(b"failures", 0)), float(raw.get(b"next_attempt", 0)),
                   float(raw.get(b"delay", 0)))
