"""The per-host sweep slot: one sweep of a host per half-interval.

Nothing locks Celery beat: two beats running by mistake send each sweep twice,
milliseconds apart (docs/pitfalls.md). The first sweep takes the slot (``SET NX PX``);
the second finds it taken and is skipped.
"""

from __future__ import annotations

import redis

from workerguard.store import keys


class SweepClaims:
    """The sweep slot of one host."""

    def __init__(self, client: redis.Redis, host: str) -> None:
        self.client = client
        self.host = host

    def claim(self, interval: float) -> bool:
        """True for the first sweep of the host in the current half-interval."""
        return bool(self.client.set(keys.sweep(self.host), "1", nx=True,
                                    px=max(1, int(interval * 500))))
