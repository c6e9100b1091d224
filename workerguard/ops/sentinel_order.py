"""Every Sentinel client of the process asks first the Sentinel that answered last.

redis-py asks the Sentinels of a ``Sentinel`` client in order and moves the one that
answered to the front, but only in that client. kombu (broker) and Celery (result
backend) make a new ``Sentinel`` client for each connection pool they open, always in
the URL's order. After a partition the first Sentinel asked may be the one cut off
with the old primary (a black hole): each discovery then waits
``SENTINEL_CONNECT_TIMEOUT`` (a new connection) or ``SENTINEL_SOCKET_TIMEOUT`` (one
already open) before asking the next, and the Celery consumer opens several one after
the other while it reconnects (measured: the guard answered 9-20 s after an isolated
primary's failover, against 3-6 s after a crash).

``remember`` records the Sentinel whose answer was confirmed: a reading on the primary it
named said ``role: master`` (the Redis watch, every 2 s; the cluster loop, every renew
period). ``follow`` makes a client ask that one first at every discovery (``prefer``), not
only when the client is made: a client made before a failover, whose first Sentinel is
now the one cut off, cost a publish and a converge a second each on the boxed Sentinel
bed (``SENTINEL_SOCKET_TIMEOUT``) while the cluster loop, which asks every Sentinel,
already knew which one answers. Process-wide, one value: the Sentinels of one process all
watch the same primary.

A Sentinel is remembered only once its answer is confirmed, never merely for answering:
right after a heal, the Sentinel that was cut off still names the old primary (now a
replica, or about to be) until the others' hello messages reach it; remembered for that
answer, it would be asked first by every reconnect, each landing on the old primary
(``The previous master is now a slave``), and remembered again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

PREFERENCE_SECONDS = 10.0
"""A confirmation counts this long. The watch confirms every 2 s and the cluster loop every
renew period while their primary answers, so a preference holds in steady state and right
after a cut; one no reading has confirmed for this long is dropped, and the Sentinels are
asked in the URL's order again: a Sentinel that answered right once is not asked first for
ever."""

_lock = threading.Lock()
_last: list[tuple[tuple[str, int], float]] = []
"""The confirmed Sentinel's address, and ``time.monotonic()`` of its confirmation."""


def _address(sentinel_client: Any) -> tuple[str, int] | None:
    kwargs = getattr(getattr(sentinel_client, "connection_pool", None), "connection_kwargs", {})
    host, port = kwargs.get("host"), kwargs.get("port")
    return (str(host), int(port)) if host is not None and port is not None else None


def remember(manager: Any) -> None:
    """After a reading through ``manager`` (a ``redis.sentinel.Sentinel``) found the primary
    it discovered to be one: its first Sentinel is the one that answered (redis-py moves it
    there; so does ``ops.connect.NewestEpochSentinel``)."""
    sentinels = getattr(manager, "sentinels", None)
    if not sentinels:
        return
    address = _address(sentinels[0])
    if address is not None:
        with _lock:
            _last[:] = [(address, time.monotonic())]


def prefer(manager: Any) -> Any:
    """Put the Sentinel confirmed last first in ``manager``, if its confirmation is not
    older than ``PREFERENCE_SECONDS``; returns it."""
    with _lock:
        fresh = _last and time.monotonic() - _last[0][1] <= PREFERENCE_SECONDS
        last = _last[0][0] if fresh else None
    sentinels = getattr(manager, "sentinels", None)
    if last is None or not sentinels:
        return manager
    for number, sentinel in enumerate(sentinels):
        if _address(sentinel) == last:
            sentinels[0], sentinels[number] = sentinel, sentinels[0]
            break
    return manager


def follow(manager: Any) -> Any:
    """Make ``manager`` (a ``redis.sentinel.Sentinel``) ``prefer`` before each discovery;
    returns it. Only the order in which the Sentinels are asked changes, never which are
    asked or what they say."""
    if manager is None or getattr(manager, "_follows_order", False):
        return manager
    discover: Callable[[str], Any] = manager.discover_master

    def discover_master(service_name: str) -> Any:
        prefer(manager)
        return discover(service_name)

    manager.discover_master = discover_master
    manager._follows_order = True
    return manager


def forget() -> None:
    """No preference (tests)."""
    with _lock:
        _last.clear()
