"""Heals sent off the cluster loop's thread: a slow broker never delays a renewal.

The cluster loop asks for a ``workerguard.heal`` after a win, a loss, a pause or a spec
change. Sending one is a publish to the broker, and right after a Redis failover the
producer's connection can be a black hole until it is shut down, or redis-py can wait out
a backoff before it reconnects. A loop that sent inline sat in such calls for seconds on
the boxed Sentinel bed (tests/test_cluster_isolation.py): its renewals stalled (a holder
misses its renew deadline that way) and a slot it had just won started late.

One daemon thread sends instead. Requests for a profile that is still waiting to be sent
merge into one (a heal converges the whole profile, whatever asked for it), so a broker
that is away never builds a backlog; each is sent once, as before (the next sweep heals
what a lost heal left).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from workerguard.redact import redact_text

log = logging.getLogger("workerguard.ops.heal_sender")

SLOW_SEND = 0.5
"""Seconds a send may take before the log says so."""


def send_heal(send: Callable[[str, str], None], profile: str, why: str) -> None:
    """Send one heal; a broker that refuses it is logged, never raised (the next sweep heals)."""
    began = time.monotonic()
    try:
        send(profile, why)
    except Exception as exc:  # the broker is down: the next sweep heals
        log.warning("cluster: %s: heal not sent (%s): %s", profile, why, redact_text(str(exc)))
        return
    took = time.monotonic() - began
    if took > SLOW_SEND:
        log.warning("cluster: %s: sending the heal (%s) took %.1f s", profile, why, took)


class HealSender:
    """``request(profile, why)`` returns at once; the thread calls ``send(profile, why)``."""

    def __init__(self, send: Callable[[str, str], None]) -> None:
        self.send = send
        self._waiting: dict[str, list[str]] = {}
        """Profile -> the reasons not sent yet, in the order they came."""
        self._changed = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="workerguard-heal-sender",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify()

    def request(self, profile: str, why: str) -> None:
        with self._changed:
            reasons = self._waiting.setdefault(profile, [])
            if why not in reasons:
                reasons.append(why)
            self._changed.notify()

    def waiting(self) -> dict[str, list[str]]:
        """What is not sent yet (a copy)."""
        with self._changed:
            return {profile: list(reasons) for profile, reasons in self._waiting.items()}

    def _next(self) -> tuple[str, str] | None:
        with self._changed:
            while not self._waiting and not self._stopped:
                self._changed.wait()
            if self._stopped:
                return None
            profile = next(iter(self._waiting))
            return profile, ", ".join(self._waiting.pop(profile))

    def _run(self) -> None:
        while (item := self._next()) is not None:
            send_heal(self.send, *item)
