"""Readiness: with a probe, a new instance counts as started when the probe first passes.

The start window (``start_seconds``) still applies first: an instance that dies in it
has failed, probe or not. Then each new instance is probed every ``start_interval``
until its first pass, for up to ``start_timeout`` after it started (in parallel: the
instances of one start wait together, not one after another). One that never passes,
or whose main process ends meanwhile, is a failed start; the guard stops it and
reports the probe's last output with the log tail.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from workerguard.config.schema import Profile
from workerguard.probes.run import ProbeResult, cut, wait_ready
from workerguard.probes.spec import ProbeTarget
from workerguard.workers.discover import alive
from workerguard.workers.model import Instance
from workerguard.workers.spawn import SpawnFailure, child_environment


def probe_target(host: str, profile: Profile, instance: Instance) -> ProbeTarget:
    """What a probe of ``instance`` sees: its pid, id, slot, and its own environment."""
    assert instance.instance_id is not None  # only spawned instances are probed
    return ProbeTarget(pid=instance.pid, instance=instance.instance_id, index=instance.index,
                       env=child_environment(profile, host, instance.instance_id, instance.index),
                       cwd=profile.cwd)


def await_ready(host: str, profile: Profile, started: Sequence[Instance],
                on_result: Callable[[ProbeResult], None] | None = None,
                ) -> list[tuple[Instance, ProbeResult]]:
    """Each of ``started`` with the result that ended its wait (``ok``: it is ready)."""
    spec = profile.probe
    assert spec is not None
    if not started:
        return []

    def wait(instance: Instance) -> ProbeResult:
        return wait_ready(spec, probe_target(host, profile, instance),
                          started_at=instance.create_time,
                          gone=lambda: not alive(instance.pid, instance.create_time),
                          on_result=on_result)

    with ThreadPoolExecutor(min(len(started), 16), thread_name_prefix="workerguard-ready") as pool:
        return list(zip(started, pool.map(wait, started), strict=True))


def not_ready(profile: Profile, instance: Instance, result: ProbeResult,
              log_tail: str) -> SpawnFailure:
    """The failed start of an instance that did not pass its probe in time."""
    spec = profile.probe
    assert spec is not None
    why = ("exited before it was ready" if not alive(instance.pid, instance.create_time)
           else f"not ready within start_timeout {spec.start_timeout:g} s")
    return SpawnFailure(instance.pid, None, log_tail,
                        f"pid {instance.pid} {why}; last {spec.kind} probe: {cut(result.output, 300)}")
