"""kombu's Sentinel channel asks first the Sentinel that answered last (``ops.sentinel_order``).

kombu makes a new ``redis.sentinel.Sentinel`` client, in the URL's order, for each
connection pool of a channel; the wrapper makes it reorder itself at every discovery. Only the
order of the Sentinels changes, never which are asked. ``install`` wraps a private method
(``SentinelChannel._sentinel_managed_pool``), so only on the kombu versions
``closed_channel`` was tested with.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

from workerguard.ops import sentinel_order
from workerguard.tasks.closed_channel import applies

_ORIGINAL = kombu_redis.SentinelChannel._sentinel_managed_pool


def _sentinel_managed_pool(self: Any, asynchronous: bool = False) -> Any:
    pool = _ORIGINAL(self, asynchronous)
    sentinel_order.follow(getattr(pool, "sentinel_manager", None))
    return pool


def install() -> bool:
    """Wrap kombu's method (idempotent); False where kombu is not a tested version."""
    if not applies():
        return False
    kombu_redis.SentinelChannel._sentinel_managed_pool = _sentinel_managed_pool  # type: ignore[method-assign]
    return True
