"""The guard's observer hook: what metrics (or anything else) learn from the guard.

``guard`` calls these methods and knows nothing of Prometheus; ``metrics`` implements
them. The default observer does nothing, so the hot path pays one method call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from workerguard.policy.outcome import Outcome


class Observer(Protocol):
    def lock_waited(self, profile: str, seconds: float) -> None:
        """A converge waited ``seconds`` for the profile's lock (also when it timed out)."""

    def acted(self, mode: str, result: Outcome) -> None:
        """An ``ensure`` / ``enforce`` / ``stop_all`` request finished with ``result``."""

    def swept(self, results: Sequence[Outcome], seconds: float) -> None:
        """A sweep of this host finished: one result per profile, in ``seconds``."""

    def exited(self, profile: str) -> None:
        """An instance of ``profile`` exited without the guard stopping it."""

    def orphaned(self, count: int) -> None:
        """A sweep saw ``count`` instances of profiles that are no longer configured."""

    def coalesced(self, profile: str) -> None:
        """An ``ensure`` of ``profile`` waits for an identical one's converge (single-flight)."""

    def probed(self, profile: str, ok: bool, seconds: float) -> None:
        """A probe of an instance of ``profile`` passed (or not) in ``seconds``."""

    def unhealthy(self, profile: str) -> None:
        """An instance of ``profile`` failed its probe ``failure_threshold`` times in a row."""


class NullObserver:
    def lock_waited(self, profile: str, seconds: float) -> None:
        pass

    def acted(self, mode: str, result: Outcome) -> None:
        pass

    def swept(self, results: Sequence[Outcome], seconds: float) -> None:
        pass

    def exited(self, profile: str) -> None:
        pass

    def orphaned(self, count: int) -> None:
        pass

    def coalesced(self, profile: str) -> None:
        pass

    def probed(self, profile: str, ok: bool, seconds: float) -> None:
        pass

    def unhealthy(self, profile: str) -> None:
        pass


NULL_OBSERVER: Observer = NullObserver()
