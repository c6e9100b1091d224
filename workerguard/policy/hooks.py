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

from collections.abc import Mapping, Sequence

from workerguard.policy.outcome import Outcome
from workerguard.probes.liveness import Unhealthy

LEASE_RENEWALS = ("ok", "lost", "released", "not_replicated", "error")
"""What a renewal of one held slot found (``store.leases.Outcome``)."""
LEASE_CLAIMS = ("won", "lost", "held_off", "not_replicated", "refused", "error")
"""What a claim got (``store.lease.Grant``; ``error``: Redis did not answer)."""
SELF_FENCES = ("deadline", "lost")
"""Why the cluster loop fenced a slot's instance: no renewal acknowledged for the renew
deadline (its leash killed at the deadline), or the lease found lost (killed at once)."""
SWEEP_TRIGGERS = ("beat", "timer", "startup")
"""What sends a ``workerguard.sweep`` task: beat's schedule, the guard's own timer, or the
guard worker itself once it is ready (its startup sweep, ``ops/runners.py``)."""


class GuardHooks:
    """Every hook of the guard, each doing nothing: override the ones you need."""

    def lock_waited(self, profile: str, seconds: float) -> None:
        """A converge waited ``seconds`` for the profile's lock (also when it timed out)."""

    def acted(self, mode: str, result: Outcome) -> None:
        """An ``ensure`` / ``heal`` / ``replace`` / ``enforce`` / ``stop_all`` request
        finished with ``result``."""

    def swept(self, results: Sequence[Outcome], seconds: float, trigger: str) -> None:
        """A sweep of this host finished: one result per profile, in ``seconds``;
        ``trigger`` is one of ``SWEEP_TRIGGERS``."""

    def exited(self, profile: str) -> None:
        """An instance of ``profile`` exited without the guard stopping it."""

    def heal_requested(self, profile: str, reason: str) -> None:
        """After such an exit (``reason``: which pid, how, after how long), the guard asks
        for a heal of ``profile`` (a configured one): the guard worker sends
        ``workerguard.heal``, so the restart runs like any request."""

    def collected(self, removed: int, stale_groups: int) -> None:
        """A sweep removed ``removed`` leftovers (empty groups, temp records, probe dirs)
        and left ``stale_groups`` empty instance groups (``workers.garbage``)."""

    def orphaned(self, count: int) -> None:
        """A sweep saw ``count`` instances of profiles that are no longer configured."""

    def coalesced(self, profile: str) -> None:
        """An ``ensure`` of ``profile`` waits for an identical one's converge (single-flight)."""

    def probed(self, profile: str, ok: bool, seconds: float) -> None:
        """A probe of an instance of ``profile`` passed (or not) in ``seconds``."""

    def unhealthy(self, profile: str) -> None:
        """An instance of ``profile`` failed its probe ``failure_threshold`` times in a row."""

    def redis_reached(self, ok: bool) -> None:
        """The guard worker's Redis watch (``ops.primary_watch``) got an answer, or none."""

    def redis_failed_over(self, detail: str) -> None:
        """The watch saw a new Redis primary (``detail``: the old and new ids)."""

    def redis_clock_jumped(self, seconds: float) -> None:
        """The watch saw the Redis clock jump by ``seconds`` against this host's clock."""

    def redis_clock_offset(self, seconds: float) -> None:
        """The Redis clock minus this host's wall clock, at the watch's last reading."""

    # cluster profiles: the cluster loop (ops.cluster_loop) calls these, on its thread ----
    def cluster_state(self, profile: str, slots: int, held: Mapping[int, tuple[int, float]],
                      paused: bool) -> None:
        """After a lease round: ``profile`` has ``slots`` slots, this host holds ``held``
        (slot -> (fencing token, seconds left until its hard deadline)), and the profile is
        ``paused`` fleet-wide or not."""

    def spec_mismatch(self, profile: str, mismatched: bool) -> None:
        """After a lease round: this host's definition of ``profile`` differs from the
        fleet's spec (it claims nothing), or not."""

    def lease_round(self, seconds: float, holdoff: float) -> None:
        """A renewal pipeline (``WAIT`` included) answered in ``seconds``; claims are held
        off for ``holdoff`` seconds more (0: allowed)."""

    def lease_renewed(self, profile: str, result: str) -> None:
        """The renewal of one held slot of ``profile``: one of ``LEASE_RENEWALS``."""

    def lease_claimed(self, profile: str, result: str) -> None:
        """A claim of a slot of ``profile``: one of ``LEASE_CLAIMS``."""

    def self_fenced(self, profile: str, reason: str) -> None:
        """A slot of ``profile`` was fenced for its lease: one of ``SELF_FENCES``."""

    def replace_requested(self, event: Unhealthy) -> None:
        """After that, the guard asks for the replacement of ``event``'s instance: the guard
        worker sends ``workerguard.replace``, which runs like any request."""
