"""Fewer wakeups of an idle guard worker's event loop, each without delaying a request.

kombu's Redis transport wakes Celery's event loop of an idle worker about five times a
second: its BRPOP returns empty every second and is sent again, and a timer checks every
second whether a binding table needs its expiry pushed back. Each turn of the loop costs
~0.25 ms of Python; they were most of an idle guard's CPU (docs/benchmarks.md, "What an
idle guard costs"). In the guard worker's process only (``install``, from
``ops.runners.start_celery_worker``), never in a caller's:

* the BRPOP waits ``timing.GUARD_BRPOP_TIMEOUT`` in Redis. A request is delivered the
  moment it is pushed whatever the timeout; it bounds only how soon kombu drops a
  black-holed BRPOP connection (its reply overdue by the timeout plus the health-check
  interval). kombu reads the timeout from the transport class: ``polling_interval``, the
  one option that sets it, would also make kombu's synchronous ``drain_events`` sleep
  that long between polls.
* the binding-expiry check runs every ``BINDING_CHECK_INTERVAL``. It refreshes a table
  every third of its lifetime, and kombu gives none a lifetime under an hour
  (``MIN_BINDING_TTL``): checked every 10 s, a refresh is at most 10 s late, and
  kombu's sweep of other consumers' overdue tables (every minute) at most 10 s.

The second wraps a method of kombu's transport and replaces a private timer, so it
follows ``closed_channel.TESTED_KOMBU``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kombu.transport import redis as kombu_redis

from workerguard.tasks.closed_channel import applies
from workerguard.timing import GUARD_BRPOP_TIMEOUT

BINDING_CHECK_INTERVAL = 10.0
"""Seconds between kombu's checks of the binding tables' expiry (kombu: 1)."""
_REGISTER: Callable[..., Any] = kombu_redis.Transport.register_with_event_loop
"""kombu's own ``register_with_event_loop`` (the Sentinel transport inherits it)."""


def _register_with_event_loop(self: Any, connection: Any, loop: Any) -> None:
    _REGISTER(self, connection, loop)
    cycle = self.cycle
    timer = getattr(cycle, "_binding_expiry_tref", None)
    if timer is not None:  # kombu cancels it under this name at the next registration
        timer.cancel()
        cycle._binding_expiry_tref = loop.call_repeatedly(
            BINDING_CHECK_INTERVAL, cycle.maybe_refresh_binding_expiry)


def install() -> None:
    """Set the guard worker's BRPOP timeout and, on a tested kombu, slow the binding
    check (idempotent)."""
    kombu_redis.Transport.brpop_timeout = GUARD_BRPOP_TIMEOUT
    if applies() and hasattr(kombu_redis, "MIN_BINDING_TTL"):
        setattr(kombu_redis.Transport, "register_with_event_loop",  # noqa: B010
                _register_with_event_loop)


def uninstall() -> None:
    """kombu's own timeout and method back (tests)."""
    kombu_redis.Transport.brpop_timeout = 1
    setattr(kombu_redis.Transport, "register_with_event_loop", _REGISTER)  # noqa: B010
