"""The prober's CPU cost: 50 instances probed every second, heartbeat and tcp kinds.

    python benchmarks/probes.py [--seconds 20] [--instances 50] [--interval 1]

The prober runs in a child process of its own, so that its CPU time (user + system,
from ``getrusage``, over the measured window only) holds nothing but the timer, the
worker threads and the probes. The tcp probes connect to one listener (a stand-in
worker in another process, not counted). Prints one table row per kind; the
function ``probe_cpu_row`` returns it for ``benchmarks/main.py``.

``guard_probe_cpu_row`` (row "probecpu" of ``benchmarks/run.py``) measures the same
heartbeat probes in a real guard worker: see its docstring.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import TypeAdapter

from benchmarks.rows import Row, table
from tests.support import LineReader, ProcessTracker, free_port
from workerguard.probes.scheduler import Prober
from workerguard.probes.spec import AnyProbe, ProbeSpec, ProbeTarget

WORKERS = Path(__file__).resolve().parent.parent / "tests" / "probe_workers.py"
SETTLE = 1.5
"""Intervals of probing before the measured window opens (threads started, caches warm);
half an interval off the cadence, so that no probe falls on the window's edges."""


@dataclass(frozen=True)
class ProbeCpu:
    kind: str
    instances: int
    interval: float
    seconds: float
    probes: int
    failed: int
    cpu: float
    """CPU seconds of the prober's process in the window."""

    @property
    def probes_per_second(self) -> float:
        return self.probes / self.seconds

    @property
    def core_share(self) -> float:
        """CPU seconds per second: the share of one core."""
        return self.cpu / self.seconds

    @property
    def per_probe(self) -> float:
        """CPU seconds per probe."""
        return self.cpu / max(1, self.probes)

    def cells(self) -> str:
        return (f"{self.probes_per_second:.1f} probes/s ({self.failed} failed): "
                f"{self.core_share * 100:.2f} % of a core, {self.per_probe * 1e6:.0f} µs CPU per probe")


def _child(spec_json: str, instances: int, seconds: float) -> None:
    """Probe ``instances`` instances with one spec, then measure ``seconds``; print a JSON summary."""
    spec: AnyProbe = TypeAdapter(ProbeSpec).validate_json(spec_json)
    counts = {"all": 0, "failed": 0}
    lock = threading.Lock()

    def on_result(_profile: str, _key: object, result: object) -> None:
        with lock:
            counts["all"] += 1
            counts["failed"] += not getattr(result, "ok", False)

    prober = Prober(on_result=on_result)
    for i in range(instances):
        prober.watch(f"i{i}", "bench", spec, ProbeTarget(pid=os.getppid(), instance=f"{i:08x}"))
    time.sleep(SETTLE * spec.interval)
    with lock:
        before = dict(counts)
    usage, begun = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    time.sleep(seconds)
    after_usage, took = resource.getrusage(resource.RUSAGE_SELF), time.monotonic() - begun
    with lock:
        after = dict(counts)
    prober.stop()
    cpu = (after_usage.ru_utime - usage.ru_utime) + (after_usage.ru_stime - usage.ru_stime)
    print(json.dumps({"probes": after["all"] - before["all"], "failed": after["failed"] - before["failed"],
                      "cpu": cpu, "seconds": took}))


def measure(spec: AnyProbe, instances: int = 50, seconds: float = 20.0) -> ProbeCpu:
    out = subprocess.run([sys.executable, __file__, "--child", spec.model_dump_json(), str(instances),
                          str(seconds)], capture_output=True, text=True, check=True,
                         timeout=seconds + 60).stdout
    data = json.loads(out.strip().splitlines()[-1])
    return ProbeCpu(spec.kind, instances, spec.interval, data["seconds"], data["probes"], data["failed"],
                    data["cpu"])


def probe_cpu_row(quick: bool = False, instances: int = 50, interval: float = 1.0,
                  seconds: float | None = None) -> list[Row]:
    """One row per kind: the prober's CPU with ``instances`` instances probed every ``interval``."""
    seconds = (3.0 if quick else 20.0) if seconds is None else seconds
    adapter: TypeAdapter[AnyProbe] = TypeAdapter(ProbeSpec)
    tracker = ProcessTracker()
    results = []
    with tempfile.TemporaryDirectory(prefix="wg-probe-bench-") as tmp:
        beat = Path(tmp) / "beat"
        beat.touch()
        port = free_port()
        listener = tracker.popen([sys.executable, str(WORKERS), "tcp", str(port), str(Path(tmp) / "never")],
                                 stdout=subprocess.PIPE, text=True)
        try:
            LineReader(listener.stdout).until(lambda line: line == "ready", message="the tcp listener")
            for fields in ({"kind": "heartbeat", "path": str(beat), "max_age": 3600},
                           {"kind": "tcp", "port": port}):
                spec = adapter.validate_python({**fields, "interval": interval})
                results.append(measure(spec, instances, seconds))
        finally:
            tracker.end_all()
    return [Row(f"prober CPU: {r.instances} instances, {r.kind} probe every {r.interval:g} s "
                f"({r.seconds:.0f} s)", "n/a", r.cells(), "—", None) for r in results]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(argv[1], int(argv[2]), float(argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args(argv)

    print(table(probe_cpu_row(instances=args.instances, interval=args.interval, seconds=args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
