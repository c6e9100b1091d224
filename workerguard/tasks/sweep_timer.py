"""The guard's own sweep clock: its host is swept on time with no beat, or a dead one.

Beat sends the periodic sweeps and Flower shows them; but beat is one process on one
host. Every guard worker therefore also runs this timer: ``sweep_interval`` times a draw
from ``SWEEP_JITTER`` after its host's last sweep (on the Redis clock, whatever triggered
it: ``store.sweep_claim``), it sends a ``workerguard.sweep`` with ``trigger="timer"`` to
its own host's queue. The sweep is a task like beat's: Flower shows it, the guard runs it
in its pool, and its claim drops it if a beat's sweep came first. With a live beat the
timer mostly finds the host freshly swept and sends nothing.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

import kombu.exceptions
import redis
from celery import Celery

from workerguard.redact import redact_text
from workerguard.store.sweep_claim import SweepClaims
from workerguard.tasks.routing import SWEEP_TASK, to_host
from workerguard.timing import SWEEP_JITTER, SWEEP_TIMER_RETRY

log = logging.getLogger("workerguard.sweep_timer")


def due_in(age: float | None, interval: float, draw: float) -> float:
    """Seconds until the timer should sweep: ``interval * draw`` after the last sweep
    (``age`` seconds ago); now if the host has no remembered sweep."""
    return 0.0 if age is None else max(0.0, interval * draw - age)


class SweepTimer:
    """A daemon thread; ``stop()`` ends it at its next wake."""

    def __init__(self, app: Celery, claims: SweepClaims, host: str, interval: float, *,
                 draw: Callable[[], float] = lambda: random.uniform(*SWEEP_JITTER)) -> None:
        self.app = app
        self.claims = claims
        self.host = host
        self.interval = interval
        self.draw = draw
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="workerguard-sweep-timer", daemon=True)
        self._failing = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        wait = self.interval * self.draw()
        while not self._stopped.wait(wait):
            wait = self._turn()

    def _turn(self) -> float:
        """One look: send a sweep if one is due; return how long to wait for the next look."""
        draw = self.draw()
        try:
            wait = due_in(self.claims.age(), self.interval, draw)
            if wait == 0.0:
                self.app.send_task(SWEEP_TASK, kwargs={"trigger": "timer"},
                                   expires=self.interval, **to_host(self.host))
                wait = self.interval * draw
        except (redis.exceptions.RedisError, kombu.exceptions.OperationalError, OSError) as exc:
            if not self._failing:  # said once per outage, not every retry
                log.warning("sweep timer: cannot reach Redis (%s); retrying every %.0f s",
                            redact_text(str(exc)), min(SWEEP_TIMER_RETRY, self.interval))
            self._failing = True
            return min(SWEEP_TIMER_RETRY, self.interval)
        if self._failing:
            log.info("sweep timer: Redis reachable again")
            self._failing = False
        return wait
