"""Row "probecpu": the guard worker's CPU per probe, 50 instances probed every second.

Two guard workers run at once, each in a world of its own (``harness.Bench``: its own
redis-server and host id), each keeping 50 instances of a cheap worker (``sleep``) of
one profile; no beat, so no sweeps. They differ in one thing: one profile has a
heartbeat probe (every 1 s, on one file that is fresh, as ``probe_cpu_row`` does), the
other none. Once every instance has been probed healthy, the CPU time (user + system)
of each guard worker process — never its instances — is read over one window common to
both; the difference is what probing cost the guard. The probes in the window are
counted by the probed guard's own metric (``workerguard_probes_total``, scraped just
outside the window, from both guards alike). Beside it, the same probes in a bare
``Prober`` in a process of its own (``probes.measure``), over about the same window
(CPU time is what each process used, whatever else runs meanwhile).

The kernel reports another process's CPU time in 10 ms ticks: the 2 s window of
``--quick`` gives coarse figures; the full run's 60 s window, figures to a few per cent.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psutil
from pydantic import TypeAdapter

from benchmarks.harness import Bench, poll_for
from benchmarks.probes import measure
from benchmarks.rows import Row, log
from tests.support import free_port
from workerguard.probes.spec import AnyProbe, ProbeSpec

INSTANCES = 50
INTERVAL = 1.0
SETTLE = 1.5
"""Probe intervals after every instance was healthy, before the window opens."""
_PROBES = re.compile(r'^workerguard_probes_total\{[^}]*profile="p"[^}]*\} ([0-9.e+]+)$', re.M)


def _at_once(*actions: Callable[[], None]) -> None:
    with ThreadPoolExecutor(len(actions)) as pool:
        for future in [pool.submit(action) for action in actions]:
            future.result()


@dataclass
class Guard:
    """One world's guard worker: its process, and its metrics endpoint."""

    world: Bench
    port: int

    def start(self, probe: dict[str, Any] | None) -> None:
        profile = self.world.profile(0, min_workers=INSTANCES, max_workers=INSTANCES,
                                     **({"probe": probe} if probe else {}))
        self.world.start_worker(self.world.write_config(
            "probecpu", {"p": profile}, metrics_port=self.port, metrics_addr="127.0.0.1"))
        result = self.world.call("workerguard.ensure", "p", timeout=120)
        assert len(result["started"]) == INSTANCES, result

    @property
    def process(self) -> psutil.Process:
        worker = self.world.worker_process
        assert worker is not None
        return psutil.Process(worker.pid)

    def cpu(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system  # not children_*: the instances are not the guard

    def probes(self) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        return sum(float(value) for value in _PROBES.findall(text))

    def healthy(self) -> bool:
        instances = self.world.call("workerguard.status", "p")["profiles"]["p"]["instances"]
        return len(instances) == INSTANCES and all(
            i.get("health", {}).get("state") == "healthy" for i in instances)


def guard_probe_cpu_row(quick: bool) -> Row:
    window = 2.0 if quick else 60.0
    worlds = [Bench(quick), Bench(quick)]
    try:
        beat = worlds[0].root / "beat"
        beat.touch()
        spec = {"kind": "heartbeat", "path": str(beat), "max_age": 3600, "interval": INTERVAL}
        probed, plain = Guard(worlds[0], free_port()), Guard(worlds[1], free_port())
        _at_once(lambda: probed.start(spec), lambda: plain.start(None))  # starting is mostly waiting
        poll_for(probed.healthy, 60, interval=0.2, message=f"{INSTANCES} instances probed healthy")
        adapter: TypeAdapter[AnyProbe] = TypeAdapter(ProbeSpec)
        with ThreadPoolExecutor(1) as pool:  # the Prober alone: its window begins about with ours
            alone = pool.submit(measure, adapter.validate_python(spec), INSTANCES, window)
            time.sleep(SETTLE * INTERVAL)  # threads started, caches warm; not a synchronisation
            guards = [probed, plain]
            counted = [g.probes() for g in guards]
            before, began = [g.cpu() for g in guards], time.monotonic()
            time.sleep(window)  # the measured window itself
            after, took = [g.cpu() for g in guards], time.monotonic() - began
            probes = probed.probes() - counted[0]
            assert plain.probes() == 0, "the guard without a probe probed"
            assert probed.healthy(), "an instance died or failed its probe in the window"
            isolated = alone.result()
    finally:
        _at_once(*(world.close for world in worlds))
    with_probes, without = after[0] - before[0], after[1] - before[1]
    per_probe = (with_probes - without) / max(1.0, probes)

    def share(cpu: float) -> str:
        return f"{cpu / took * 100:.2f} % of a core"

    log(f"probecpu: with {with_probes:.3f} CPU s, without {without:.3f}, {probes:.0f} probes in {took:.1f} s")
    return Row(f"guard CPU per probe: {INSTANCES} instances, heartbeat probe every {INTERVAL:g} s "
               f"(real guard workers, with and without the probe; {window:g} s window"
               f"{'; CPU counts in 10 ms ticks: coarse' if quick else ''})",
               f"the Prober alone, in a process of its own, same probes, same time: {isolated.cells()}",
               f"guard worker with the probes: {share(with_probes)}, {probes / took:.1f} probes/s (its "
               f"metric); the same guard without a probe: {share(without)}; the difference: "
               f"{share(with_probes - without)}, {per_probe * 1e6:.0f} µs CPU per probe",
               "(measured, no target)", None)
