"""Single-flight for identical requests inside one guard process.

Requests with the same key that arrive while an earlier one is still waiting to start
share one run: the first becomes the leader, the others wait for its result. Runs of
one key never overlap, and a request never joins a run that has already started (that
run's discovery might predate the request), so every answer comes from a converge that
began after the request arrived.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class _Flight(Generic[T]):
    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: T | None = None
        self.error: BaseException | None = None


class Coalescer(Generic[T]):
    """``on_join(key)`` is told of each request that waits for another's run (metrics)."""

    def __init__(self, on_join: Callable[[Hashable], None] | None = None) -> None:
        self.on_join = on_join
        self._lock = threading.Lock()
        self._pending: dict[Hashable, _Flight[T]] = {}
        self._gates: dict[Hashable, threading.Lock] = {}

    def run(self, key: Hashable, fn: Callable[[], T]) -> T:
        """``fn()``, or the result of the run of ``key`` that has not started yet."""
        with self._lock:
            flight = self._pending.get(key)
            if flight is not None:
                leader = False
            else:
                flight = self._pending[key] = _Flight()
                gate = self._gates.setdefault(key, threading.Lock())
                leader = True
        if not leader:
            if self.on_join is not None:
                self.on_join(key)
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return copy.deepcopy(flight.value)  # type: ignore[return-value]
        with gate:  # the previous run of this key is over
            with self._lock:
                del self._pending[key]  # from here on, newcomers wait for the next run
            try:
                value = fn()
            except BaseException as exc:
                flight.error = exc
                raise
            else:
                flight.value = value
            finally:
                flight.done.set()
        return value
