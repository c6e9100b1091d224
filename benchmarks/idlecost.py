"""What an idle guard worker costs, part by part: RSS and start time of each group of
imports, then CPU and wakeups of each of its threads over an idle window.

    python -m benchmarks.idlecost             # 60 s window
    python -m benchmarks.idlecost --window 10

Imports: a fresh interpreter imports the guard worker's dependencies in the order they
load, one group at a time, and reports how much each group added (VmRSS, modules,
milliseconds); then what the guard no longer loads, for comparison. Threads: a real
guard worker (one profile, one instance, no beat) on a throw-away redis-server; its
threads' names come from the worker itself (``_LAUNCH``: a thread writes
``{native id: name}`` once and ends), their CPU (utime + stime) and context switches
(voluntary + involuntary: each is a wakeup or a preemption) from
``/proc/PID/task/TID/{stat,status}`` over the window. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import bench, poll_for
from tests.support import cli_env

IMPORT_GROUPS = (
    ("click (the command line)", "click"),
    ("pydantic (the config schema)", "pydantic,pydantic.main"),
    ("redis-py (with asyncio and ssl, which it imports)", "redis"),
    ("workerguard config, psutil, cli", "workerguard.config.load,psutil,workerguard.cli"),
    ("kombu + Celery's app", "kombu,celery,celery.app.base"),
    ("the guard's Celery app (worker, consumer, Redis transport and backend)",
     "workerguard.tasks.app"),
    ("the guard (runners, handlers, policy) and Celery's threads pool",
     "workerguard.ops.runners,workerguard.tasks.handlers,celery.apps.worker,"
     "celery.concurrency.thread"),
)
NOT_LOADED = (
    ("not loaded unless metrics_port is set: prometheus_client", "prometheus_client"),
    ("not loaded any more: Celery's command line (click_repl, prompt_toolkit, Flower, tornado)",
     "celery.bin.celery,flower.command"),
)
_STEPS = """
import importlib, json, sys, time
def rss():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmRSS")) / 1024
print(json.dumps(["Python interpreter", rss(), len(sys.modules), 0.0]))
for label, names in json.loads(sys.argv[1]):
    before, t0 = rss(), time.perf_counter()
    for name in names.split(","):
        importlib.import_module(name)
    print(json.dumps([label, rss() - before, len(sys.modules), (time.perf_counter() - t0) * 1000]))
"""


_LAUNCH = """
import json, os, sys, threading, time
from pathlib import Path
def dump():  # once the watch (at ready) and the exit watcher (at the first start) run
    wanted = {"workerguard-redis-watch", "workerguard-exit-watcher"}
    while not wanted <= {t.name for t in threading.enumerate()}:
        time.sleep(0.1)
    found = {str(t.native_id): t.name for t in threading.enumerate() if t is not threading.current_thread()}
    Path(sys.argv[1]).write_text(json.dumps([os.getpid(), found]))
threading.Thread(target=dump, daemon=True).start()
from workerguard.cli import main
main(args=sys.argv[2:])
"""
"""Runs ``workerguard ARGV`` and writes its threads' names once (importing nothing of the
bench, which would add to the worker's RSS)."""


def imports_table() -> str:
    """Both lists in one interpreter: what the guard loads, then what it no longer loads."""
    out = subprocess.run([sys.executable, "-c", _STEPS, json.dumps(IMPORT_GROUPS + NOT_LOADED)],
                         capture_output=True, text=True, check=True, env=cli_env()).stdout
    lines = ["| import group (in load order) | RSS | modules (running total) | time |",
             "|---|---|---|---|"]
    rss = 0.0
    for i, line in enumerate(out.splitlines()):
        label, mb, modules, ms = json.loads(line)
        rss += mb
        lines.append(f"| {label} | {'+' if i else ''}{mb:.1f} MB | {modules} | {ms:.0f} ms |")
        if i == len(IMPORT_GROUPS):
            lines.append(f"| **the guard worker's imports, in all** | **{rss:.1f} MB** | | |")
    return "\n".join(lines)


def _task_stats(pid: int) -> dict[str, tuple[int, int]]:
    """Thread id -> (CPU ticks, context switches)."""
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        switches = sum(int(line.split()[1]) for line in status.splitlines()
                       if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")))
        found[tid] = (int(fields[11]) + int(fields[12]), switches)
    return found


def threads_table(window: float) -> str:
    with bench(False) as b:
        config = b.write_config("idle", {"p0": b.profile(0)}, sweep_on_start=True)
        names = b.root / "threads.json"
        b.tracker.popen([sys.executable, "-c", _LAUNCH, str(names), "worker",
                         "--config", str(config), "--loglevel", "WARNING"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env())
        poll_for(lambda: names.exists() and names.stat().st_size > 0, 60, interval=0.2,
                 message="the guard worker's thread names")
        time.sleep(5)  # the start-up sweep ends
        pid, named = json.loads(names.read_text())
        before = _task_stats(pid)
        time.sleep(window)  # the measurement window itself
        after = _task_stats(pid)
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024
    tick = os.sysconf("SC_CLK_TCK")
    lines = [f"| thread | CPU s in {window:g} s | wakeups/s |", "|---|---|---|"]
    total = 0
    def used(tid: str) -> int:
        return after[tid][0] - before.get(tid, (0, 0))[0]

    for tid in sorted(after, key=used, reverse=True):
        (cpu, switches), (cpu0, switches0) = after[tid], before.get(tid, (0, 0))
        total += cpu - cpu0
        lines.append(f"| {named.get(tid, '(started later)')} | {(cpu - cpu0) / tick:.2f} | "
                     f"{(switches - switches0) / window:.1f} |")
    lines.append(f"| **the guard worker** (RSS {rss:.0f} MB at the end; load average "
                 f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}) | **{total / tick:.2f}** | |")
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--window", type=float, default=60.0)
    args = parser.parse_args(argv)
    print(imports_table() + "\n")
    print(threads_table(args.window))
    return 0


if __name__ == "__main__":
    sys.exit(run())
