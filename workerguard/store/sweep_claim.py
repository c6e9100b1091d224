"""When this host was last swept, on the Redis clock: one sweep per interval, whoever asks.

Sweeps of a host come from every beat that runs (one per host is allowed: beat is no
single point of failure) and from the guard's own timer (``tasks.sweep_timer``). Each
sweep first *claims* the host's slot: the claim succeeds only if the last sweep of the
host began at least ``SWEEP_SPACING`` intervals ago, and then records "now". Three beats
at different phases and a timer therefore sweep a host about once per interval, not four
times. "Now" and "ago" are Redis ``TIME``, read inside the script: every guard and beat
compares against one clock, and no local wall clock (stepped by NTP, say) takes part.
"""

from __future__ import annotations

from typing import cast

import redis

from workerguard.store import keys
from workerguard.timing import SWEEP_KEEP_INTERVALS, SWEEP_SPACING

_NOW_MS = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) "
_CLAIM = _NOW_MS + """
local last = tonumber(redis.call('GET', KEYS[1]))
if last and last <= now and now - last < tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], now, 'PX', ARGV[2])
return 1
"""
_AGE = _NOW_MS + """
local last = tonumber(redis.call('GET', KEYS[1]))
if not last then return -1 end
return math.max(0, now - last)
"""


class SweepClaims:
    """The sweep slot of one host."""

    def __init__(self, client: redis.Redis, host: str) -> None:
        self.client = client
        self.host = host
        self._claim = client.register_script(_CLAIM)
        self._age = client.register_script(_AGE)

    def claim(self, interval: float, *, spacing: float = SWEEP_SPACING) -> bool:
        """True if no sweep of the host began in the last ``spacing`` intervals; the
        sweep that gets True is recorded as the host's last. ``spacing=0`` always claims
        (a guard's startup sweep: it must run, and the next ones count from it)."""
        return bool(self._claim(keys=[keys.sweep(self.host)],
                                args=[int(interval * spacing * 1000), self._keep_ms(interval)]))

    def age(self) -> float | None:
        """Seconds since the last sweep of the host began (Redis clock); None if none is
        remembered (never swept, or not for ``SWEEP_KEEP_INTERVALS`` intervals)."""
        ms = cast(int, self._age(keys=[keys.sweep(self.host)]))
        return None if ms < 0 else ms / 1000

    @staticmethod
    def _keep_ms(interval: float) -> int:
        return max(1000, int(interval * SWEEP_KEEP_INTERVALS * 1000))
