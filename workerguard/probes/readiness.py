"""Readiness: with a probe, a new instance counts as started when the probe first passes.

The start window (``start_seconds``) still applies first: an instance that dies in it
has failed, probe or not. Then each new instance is probed every ``start_interval``
until its first pass, for up to ``start_timeout`` after it started (in parallel: the
instances of one start wait together, not one after another). "Started" is the exact
moment ``spawn.launch`` started it, on the monotonic clock (``instance_start``): never
the process table's create time, which is built on a boot time in whole seconds and
follows the wall clock. One that never passes,
or whose main process ends meanwhile, is a failed start; the guard stops it and
reports the probe's last output with the log tail.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from workerguard.config.schema import Profile
from workerguard.probes.run import ProbeResult, cut, failed, failed_with, wait_ready
from workerguard.probes.spec import ProbeTarget
from workerguard.workers.identity import age_seconds, alive
from workerguard.workers.model import Instance
from workerguard.workers.spawn import SpawnFailure, child_environment, launched_at

log = logging.getLogger("workerguard.probes.readiness")


def probe_target(host: str, profile: Profile, instance: Instance) -> ProbeTarget:
    """What a probe of ``instance`` sees: its pid, id, slot, and its own environment."""
    assert instance.instance_id is not None  # only spawned instances are probed
    return ProbeTarget(pid=instance.pid, instance=instance.instance_id, index=instance.index,
                       env=child_environment(profile, host, instance.instance_id, instance.index),
                       cwd=profile.cwd)


def instance_start(instance: Instance) -> float:
    """When ``instance`` started, on the monotonic clock: exactly, if this process launched
    it (``spawn.launched_at``); else from its age in the process table (an instance found
    again, after a restart of the guard: ``identity.age_seconds``, on the boot clock)."""
    if instance.instance_id is not None:
        exact = launched_at(instance.instance_id)
        if exact is not None:
            return exact
    return time.monotonic() - age_seconds(instance.start)


def await_ready(host: str, profile: Profile, started: Sequence[Instance],
                on_result: Callable[[ProbeResult], None] | None = None,
                ) -> list[tuple[Instance, ProbeResult]]:
    """Each of ``started`` with the result that ended its wait (``ok``: it is ready)."""
    spec = profile.probe
    assert spec is not None
    if not started:
        return []

    def wait(instance: Instance) -> ProbeResult:
        try:
            return wait_ready(spec, probe_target(host, profile, instance),
                              started=instance_start(instance),
                              gone=lambda: not alive(instance.pid, instance.start),
                              on_result=on_result)
        except Exception as exc:  # a bug of ours: this instance's start failed, not the converge
            log.exception("%s: the readiness wait of pid %s failed", profile.name, instance.pid)
            return failed(f"readiness wait failed: {failed_with(exc)}")

    with ThreadPoolExecutor(min(len(started), 16), thread_name_prefix="workerguard-ready") as pool:
        return list(zip(started, pool.map(wait, started), strict=True))


def not_ready(profile: Profile, instance: Instance, result: ProbeResult,
              log_tail: str) -> SpawnFailure:
    """The failed start of an instance that did not pass its probe in time."""
    spec = profile.probe
    assert spec is not None
    why = ("exited before it was ready" if not alive(instance.pid, instance.start)
           else f"not ready within start_timeout {spec.start_timeout:g} s")
    return SpawnFailure(instance.pid, None, log_tail,
                        f"pid {instance.pid} {why}; last {spec.kind} probe: {cut(result.output, 300)}")
