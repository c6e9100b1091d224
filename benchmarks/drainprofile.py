"""Where the guard worker's time goes per request while it drains: a sampling profile.

    python benchmarks/drainprofile.py [--requests 1000] [--rate 250]

Runs the ``drain`` row's setup (a real guard worker, requests queued while it does not
consume, then drained) once with no-op tasks and once with ensures, each with ``py-spy``
(``pip install py-spy``; it needs ptrace rights over the worker: root, or
``kernel.yama.ptrace_scope`` 0) sampling the thread that holds the GIL (``--gil``): the
one resource every request of the worker queues for. It prints per request how long the
GIL was held in each part. Samples are wall clock, so a loaded machine stretches them;
the shares are what to read. docs/benchmarks.md shows a run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import Bench, bench
from benchmarks.rows import _drain

PARTS = (
    ("the guard: `Guard.ensure` (fast path: MGET, /proc check, plan, result)", "workerguard/policy/"),
    ("Celery: the repr of the result (`saferepr`; the guard's `tasks/result_repr.py`)",
     "saferepr"),
    ("Celery: storing STARTED and the result (backend: GET, SET + PUBLISH)", "celery/backends/"),
    ("Celery: task events (task-received/started/succeeded)", "celery/events/"),
    ("kombu: receiving and acking the message (BRPOP, unacked bookkeeping)", "kombu/"),
    ("Celery: the rest of running a task (request, tracer, pool)", "celery/"),
)
"""(part, path fragment): a sample belongs to the first part whose fragment one of its
frames has."""


def _part(stack: str) -> str:
    for name, fragment in PARTS:
        if fragment in stack:
            return name
    return "other (threads pool, interpreter)"


def _parts(raw: Path) -> Counter[str]:
    samples: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples[_part(stack)] += int(count)
    return samples


def _profiled(b: Bench, app: object, task: str, args: list[object], n: int, rate: int,
              out: Path) -> tuple[float, Counter[str]]:
    worker = b.worker_process
    assert worker is not None
    spy = subprocess.Popen(["py-spy", "record", "--pid", str(worker.pid), "--rate", str(rate),
                            "--gil", "--nonblocking", "--format", "raw", "--output", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy attaches
    drained = _drain(b, app, task, args, n)
    spy.send_signal(signal.SIGINT)
    spy.wait(60)
    return drained.rate, _parts(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    args = parser.parse_args()
    if shutil.which("py-spy") is None:
        print("py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    n, rate = args.requests, args.rate
    with bench(False) as b:
        app = b.start_worker(b.write_config("worker", {"rt": b.profile(4)}))
        assert b.call("workerguard.ensure", "rt")["action"] == "started"
        noop = _profiled(b, app, "celery.accumulate", [1], n, rate, b.root / "noop.txt")
        ensure = _profiled(b, app, "workerguard.ensure", ["rt"], n, rate, b.root / "ensure.txt")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{n} requests each, py-spy at {rate} Hz, load average at the end {load}; no-op "
          f"{noop[0]:.0f}/s, ensure {ensure[0]:.0f}/s ({ensure[0] / noop[0]:.0%})\n")
    print("| part | no-op, ms per request | ensure, ms per request |\n|---|---|---|")
    names = [name for name, _ in PARTS] + ["other (threads pool, interpreter)"]
    for name in names:
        print(f"| {name} | {noop[1][name] / rate / n * 1000:.2f} | "
              f"{ensure[1][name] / rate / n * 1000:.2f} |")
    print(f"| all (the GIL held) | {sum(noop[1].values()) / rate / n * 1000:.2f} | "
          f"{sum(ensure[1].values()) / rate / n * 1000:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
