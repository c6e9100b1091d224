"""The per-host sweep slot: one sweep of a host per half-interval.

Nothing locks Celery beat: two beats running by mistake send each sweep twice,
milliseconds apart (docs/pitfalls.md). The first sweep takes the slot (``SET NX PX``);
the second finds it taken and is skipped.
"""

from __future__ import annotations

import redis

from workerguard.store import keys


def claim(client: redis.Redis, host: str, interval: float) -> bool:
    """True for the first sweep of ``host`` in the current half-interval."""
    return bool(client.set(keys.sweep(host), "1", nx=True, px=max(1, int(interval * 500))))
