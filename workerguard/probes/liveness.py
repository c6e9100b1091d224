"""Liveness: the guard worker probes every instance it sees whose profile has a probe.

``Health`` owns one ``probes.Prober`` for the process (its threads outlive config
reloads and the guards they create). The guard calls ``watch`` with the instances it
sees (a lookup when nothing changed, so the fast path stays fast) and ``forget`` when it
stops them. An instance that fails its probe ``failure_threshold`` times in a row is
handed to ``on_unhealthy`` once; the guard records it and asks for a replacement, which
runs like any converge: under the profile's lock and fence, never on a probe thread.

Only instances workerguard started (with an instance id) are probed: a probe can only
ever lead to replacing an instance of its own profile, and adopted processes are not
ours to replace.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from workerguard.config.schema import Profile
from workerguard.probes.readiness import instance_start, probe_target
from workerguard.probes.run import ProbeResult
from workerguard.probes.scheduler import Prober
from workerguard.probes.spec import AnyProbe
from workerguard.workers.model import Instance

log = logging.getLogger("workerguard.probes.liveness")


@dataclass(frozen=True)
class Unhealthy:
    """What ``on_unhealthy`` gets: which instance failed, and the probe's last word."""

    profile: str
    instance_id: str
    pid: int
    start: int
    """Of its main process, in clock ticks since boot (``identity``)."""
    output: str


UnhealthyListener = Callable[[Unhealthy], None]
ResultListener = Callable[[str, ProbeResult], None]


@dataclass(frozen=True)
class _Watched:
    pid: int
    start: int
    spec: AnyProbe


class Health:
    def __init__(self, host: str, on_unhealthy: UnhealthyListener,
                 on_result: ResultListener | None = None) -> None:
        self.host = host
        self.on_unhealthy = on_unhealthy
        self.on_result = on_result
        self._watched: dict[str, tuple[str, _Watched]] = {}
        self._lock = threading.Lock()
        self.prober = Prober(on_unhealthy=self._unhealthy, on_result=self._result)

    def watch(self, profile: Profile, instances: Sequence[Instance]) -> None:
        """Probe the spawned ``instances`` of ``profile`` (already watched ones: a lookup)."""
        if profile.probe is None:
            return
        for instance in instances:
            key = instance.instance_id
            if key is None or instance.origin != "spawned":
                continue
            seen = _Watched(instance.pid, instance.start, profile.probe)
            with self._lock:
                if self._watched.get(key) == (profile.name, seen):
                    continue
                self._watched[key] = (profile.name, seen)
            try:
                target = probe_target(self.host, profile, instance)
            except ValueError as exc:  # an id no probe can carry: not probed, said once
                log.warning("%s: instance %r is not probed: %s", profile.name, key, exc)
                continue
            self.prober.watch(key, profile.name, profile.probe, target,
                              started=instance_start(instance))

    def forget(self, instances: Sequence[Instance]) -> None:
        for instance in instances:
            if instance.instance_id is not None:
                with self._lock:
                    self._watched.pop(instance.instance_id, None)
                self.prober.forget(instance.instance_id)

    def keep_only(self, profiles: Sequence[str]) -> None:
        """Forget every instance of a profile not in ``profiles`` (after a reload: the
        profiles that are still configured with a probe)."""
        with self._lock:
            gone = [key for key, (name, _) in self._watched.items() if name not in profiles]
            for key in gone:
                del self._watched[key]
        for key in gone:
            self.prober.forget(key)

    def pause(self, profile: str, paused: bool) -> None:
        """A paused profile is not probed (its probes resume with the pause cleared)."""
        (self.prober.pause if paused else self.prober.resume)(profile)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Health per instance id: state (starting / healthy / unhealthy), failures in a
        row, the last probe's time, result, output (cut) and duration."""
        return {str(key): value for key, value in self.prober.snapshot().items()}

    def stop(self) -> None:
        self.prober.stop()

    # on probe threads: quick, never raise --------------------------------------------------
    def _unhealthy(self, profile: str, key: Any, result: ProbeResult) -> None:
        with self._lock:
            entry = self._watched.get(str(key))
        if entry is None:  # forgotten meanwhile (stopped, exited)
            return
        self.on_unhealthy(Unhealthy(profile, str(key), entry[1].pid, entry[1].start,
                                    result.output))

    def _result(self, profile: str, key: Any, result: ProbeResult) -> None:
        if self.on_result is not None:
            self.on_result(profile, result)
