"""Row "hung": a worker that is alive but stuck (its heartbeat stops) is replaced.

The worker is ``tests/probe_workers.py heartbeat``: it touches ``<dir>/<instance>.beat``
every 0.1 s until ``<dir>/<instance>.stop`` exists, then lives on without touching
(``<instance>`` is its ``WORKERGUARD_INSTANCE``; ``none`` under supervisord and circusd,
which set no such variable). workerguard runs it as a profile with a heartbeat probe
(``PROBE``) under a real guard worker and beat (``supervised.Guarded``); supervisord and
circusd run it beside it, with the settings of the restart row.

Each trial waits until the guard reports the instance ``healthy`` (so its liveness count
runs; before its first pass failures do not count), waits a random part of one probe
interval (a random phase of the probe cadence), then creates the stop file. The time is
from the last touch of the heartbeat file (its mtime, read after the old process is
gone: the moment the worker stopped touching it) to the moment a new process with the
worker's command line exists (``/proc`` read every ``POLL`` s; ground truth, not what
the guard reports). The bound is what the configuration allows: ``max_age`` until the
file is stale, ``failure_threshold`` probes ``interval`` apart, ``stop_timeout`` for the
stop, ``start_seconds`` for the start.

The baselines' workers are hung once, when the row begins; at its end (and, but with
``--quick``, never before the bound has passed) the same process must still be their
running instance, as supervisord and circusd themselves report it.
"""

from __future__ import annotations

import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import bench, median, poll_for
from benchmarks.restart import systems
from benchmarks.rows import Row, log
from benchmarks.supervised import Guarded, System
from tests.support import HERE

WORKERS = HERE / "probe_workers.py"
PERIOD = 0.1
"""How often the stand-in worker touches its heartbeat file."""
PROBE: dict[str, Any] = {"kind": "heartbeat", "interval": 1.0, "failure_threshold": 3, "max_age": 2.0,
                         "timeout": 1.0, "start_interval": 0.2, "start_timeout": 10.0}
PROFILE: dict[str, Any] = {"stop_timeout": 2, "start_seconds": 0.5, "start_retries": 100}
"""``start_retries``: trials replace one worker after another within a minute; crash-loop
backoff (which counts replacements, tested in tests/test_health.py) would space them out."""
BOUND = (PROBE["max_age"] + PROBE["interval"] * PROBE["failure_threshold"] + PROFILE["stop_timeout"]
         + PROFILE["start_seconds"])
POLL = 0.01
"""How often ``/proc`` is read while waiting for the new process (the resolution)."""


def heartbeat_worker(directory: Path) -> list[str]:
    return [sys.executable, str(WORKERS), "heartbeat", str(directory / "{instance}.beat"),
            str(directory / "{instance}.stop"), str(PERIOD)]


@dataclass(frozen=True)
class Trial:
    replaced: float
    """Seconds from the last heartbeat to the new process."""
    unhealthy: float
    """... to the guard's ``unhealthy`` event."""
    recorded: float
    """... to the ``replaced`` event (the new instance passed its readiness probe)."""


def _healthy(guard: Guarded) -> tuple[int, str] | None:
    """The one instance's pid and id once the guard reports it healthy."""
    instances = guard.bench.call("workerguard.status", "worker")["profiles"]["worker"]["instances"]
    if len(instances) == 1 and instances[0].get("health", {}).get("state") == "healthy":
        return int(instances[0]["pid"]), str(instances[0]["instance_id"])
    return None


def trial(guard: Guarded, rng: random.Random) -> Trial:
    healthy = poll_for(lambda: _healthy(guard), 30, interval=0.05,
                       message="the instance to be probed healthy")
    assert healthy is not None
    pid, instance_id = healthy
    time.sleep(rng.uniform(0, PROBE["interval"]))  # a random phase, not a synchronisation
    before = frozenset(os.listdir("/proc"))
    (guard.dir / f"{instance_id}.stop").touch()
    offset = time.time() - time.perf_counter()
    new, seen = guard.procs.first_new(before, timeout=BOUND * 3, interval=POLL)
    guard.seen.add(new)
    poll_for(lambda: guard.procs.pids() == [new], 30, message=f"the hung instance {pid} to be gone")
    last_beat = (guard.dir / f"{instance_id}.beat").stat().st_mtime
    unhealthy = poll_for(lambda: guard.recorded("unhealthy", [pid]) or 0.0, 10,
                         message="the unhealthy event")
    recorded = poll_for(lambda: guard.recorded("replaced", [pid, new]) or 0.0, 30,
                        message="the replaced event")
    return Trial(seen + offset - last_beat, unhealthy - last_beat, recorded - last_beat)


def _hang_baseline(system: System) -> tuple[int, float]:
    [pid] = system.wait_instances(1)
    (system.dir / "none.stop").touch()
    return pid, time.time()


def _baseline_cell(system: System, pid: int, hung_at: float, watch: float) -> str:
    """Still the same running instance ``watch`` s (or more) after its heartbeat stopped?"""
    still = True
    while still and time.time() < hung_at + watch:  # watch it that long at least
        still = system.instances() == [pid]
        time.sleep(0.1)
    still = still and system.instances() == [pid] and system.confirmed(pid)
    age = time.time() - (system.dir / "none.beat").stat().st_mtime
    if not still:
        return f"{system.label}: the hung pid {pid} was **replaced** ({system.instances()})"
    return (f"{system.label}: never replaced (no health check): the hung pid {pid} was still its "
            f"running instance {age:.0f} s after its last heartbeat")


def hung_row(quick: bool) -> Row:
    trials = 1 if quick else 10
    rng = random.Random()
    results: list[Trial] = []
    with bench(quick) as b, systems(b, 1, heartbeat_worker, {**PROFILE, "probe": {
            **PROBE, "path": str(b.root / Guarded.name / "{instance}.beat")}}) as made:
        guard = made["workerguard"]
        assert isinstance(guard, Guarded)
        baselines = {name: s for name, s in made.items() if s is not None and s is not guard}
        hung = {name: _hang_baseline(s) for name, s in baselines.items()}
        for i in range(trials):
            results.append(trial(guard, rng))
            log(f"hung: trial {i + 1}/{trials}: replaced after {results[-1].replaced:.2f} s")
        watch = 0.0 if quick else BOUND  # --quick: no waiting, the age is in the cell
        cells = [_baseline_cell(s, *hung[name], watch) for name, s in baselines.items()]
        cells += [f"{name}: not installed (`pip install -e '.[bench]'`)"
                  for name, s in made.items() if s is None]
        label = guard.label
    times = [t.replaced for t in results]

    def stat(values: list[float]) -> str:
        return f"median {median(values):.2f} s, max {max(values):.2f} s"

    return Row(f"hung worker (heartbeat stops) -> a new worker process exists ({trials} trial"
               f"{'s' if trials > 1 else ''}; heartbeat "
               f"probe interval {PROBE['interval']:g} s, failure_threshold {PROBE['failure_threshold']}, "
               f"max_age {PROBE['max_age']:g} s; stop_timeout {PROFILE['stop_timeout']} s, start_seconds "
               f"{PROFILE['start_seconds']:g} s; /proc read every {POLL * 1000:g} ms)",
               "; ".join(cells),
               f"{label}: {stat(times)}; `unhealthy` recorded after {stat([t.unhealthy for t in results])}; "
               f"`replaced` (the new one ready) after {stat([t.recorded for t in results])}",
               f"max <= max_age + interval x failure_threshold + stop_timeout + start_seconds "
               f"= {BOUND:g} s", max(times) <= BOUND)
