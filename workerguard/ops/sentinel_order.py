"""Every new Sentinel client of the process asks first the Sentinel that answered last.

redis-py asks the Sentinels of a ``Sentinel`` client in order and moves the one that
answered to the front, but only in that client. kombu (broker) and Celery (result
backend) make a new ``Sentinel`` client for each connection pool they open, always in
the URL's order. After a partition the first Sentinel of the URL may be the one cut off
with the old primary (a black hole): each new connection then waits
``SENTINEL_CONNECT_TIMEOUT`` before asking the next, and the Celery consumer opens
several one after the other while it reconnects (measured: the guard answered 9-20 s
after an isolated primary's failover, against 3-6 s after a crash).

``remember`` records which Sentinel answered the guard's Redis watch (it reads every
2 s); ``prefer`` puts that one first in a new ``Sentinel`` client. Process-wide, one
value: the Sentinels of one process all watch the same primary.
"""

from __future__ import annotations

import threading
from typing import Any

_lock = threading.Lock()
_last: list[tuple[str, int]] = []


def _address(sentinel_client: Any) -> tuple[str, int] | None:
    kwargs = getattr(getattr(sentinel_client, "connection_pool", None), "connection_kwargs", {})
    host, port = kwargs.get("host"), kwargs.get("port")
    return (str(host), int(port)) if host is not None and port is not None else None


def remember(manager: Any) -> None:
    """After a discovery through ``manager`` (a ``redis.sentinel.Sentinel``) succeeded:
    its first Sentinel is the one that answered."""
    sentinels = getattr(manager, "sentinels", None)
    if not sentinels:
        return
    address = _address(sentinels[0])
    if address is not None:
        with _lock:
            _last[:] = [address]


def prefer(manager: Any) -> Any:
    """Put the Sentinel that answered last first in ``manager``; returns it."""
    with _lock:
        last = _last[0] if _last else None
    sentinels = getattr(manager, "sentinels", None)
    if last is None or not sentinels:
        return manager
    for number, sentinel in enumerate(sentinels):
        if _address(sentinel) == last:
            sentinels[0], sentinels[number] = sentinel, sentinels[0]
            break
    return manager


def forget() -> None:
    """No preference (tests)."""
    with _lock:
        _last.clear()
