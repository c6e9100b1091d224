"""The guard's hooks: what metrics, the Celery edge (or anything else) learn from the guard.

One style, dramatiq's middleware: ``GuardHooks`` has a named method per event, each a
no-op; a hook subclasses it and overrides what it needs, and the guard calls every hook
it was given (``Guard(hooks=[...])``), in order. ``guard`` knows nothing of Prometheus
or Celery: ``ops.metrics.GuardMetrics`` and ``tasks.heal_requests.HealRequests`` are
hooks. A guard without hooks pays a loop over an empty tuple.

Hooks are called on the guard's threads (a request's, a sweep's, the exit and probe
hand-over thread): they must be quick and must not raise.
"""

from __future__ import annotations

from collections.abc import Sequence

from workerguard.policy.outcome import Outcome
from workerguard.probes.liveness import Unhealthy


class GuardHooks:
    """Every hook of the guard, each doing nothing: override the ones you need."""

    def lock_waited(self, profile: str, seconds: float) -> None:
        """A converge waited ``seconds`` for the profile's lock (also when it timed out)."""

    def acted(self, mode: str, result: Outcome) -> None:
        """An ``ensure`` / ``heal`` / ``replace`` / ``enforce`` / ``stop_all`` request
        finished with ``result``."""

    def swept(self, results: Sequence[Outcome], seconds: float) -> None:
        """A sweep of this host finished: one result per profile, in ``seconds``."""

    def exited(self, profile: str) -> None:
        """An instance of ``profile`` exited without the guard stopping it."""

    def heal_requested(self, profile: str, reason: str) -> None:
        """After such an exit (``reason``: which pid, how, after how long), the guard asks
        for a heal of ``profile`` (a configured one): the guard worker sends
        ``workerguard.heal``, so the restart runs like any request."""

    def orphaned(self, count: int) -> None:
        """A sweep saw ``count`` instances of profiles that are no longer configured."""

    def coalesced(self, profile: str) -> None:
        """An ``ensure`` of ``profile`` waits for an identical one's converge (single-flight)."""

    def probed(self, profile: str, ok: bool, seconds: float) -> None:
        """A probe of an instance of ``profile`` passed (or not) in ``seconds``."""

    def unhealthy(self, profile: str) -> None:
        """An instance of ``profile`` failed its probe ``failure_threshold`` times in a row."""

    def replace_requested(self, event: Unhealthy) -> None:
        """After that, the guard asks for the replacement of ``event``'s instance: the guard
        worker sends ``workerguard.replace``, which runs like any request."""
