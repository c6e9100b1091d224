"""Orchestrates the rows and prints the table (see ``run.py``)."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import version

from benchmarks import clustercost, coldstart, failover, hung, probecpu, redisidle, restart, rows
from benchmarks.harness import bench
from benchmarks.rows import Row, log, table
from workerguard.ops.embedded import redis_server_binary

ROWS = ("dups", "handoff", "crash", "roundtrip", "drain", "sweep", "breakdown", "restart", "idle", "hung",
        "probecpu", "coldstart", "redis_idle", "cluster_cost", "failover")
SLOW_ROWS = ("failover",)
"""Left out of ``--quick`` (minutes: it boots the fleet bed twice); ``--only`` runs them."""


def machine() -> str:
    server = subprocess.run([redis_server_binary(), "--version"], capture_output=True, text=True,
                            check=False).stdout.split()
    redis_version = next((w.split("=")[1] for w in server if w.startswith("v=")), "?")
    return (f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {os.cpu_count()} cores; "
            f"Python {platform.python_version()}; celery {version('celery')}; "
            f"redis-py {version('redis')}; python-redis-lock {version('python-redis-lock')}; "
            f"psutil {version('psutil')}; redis-server {redis_version}; load average at the end "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min; the machine is shared)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short run (scaled-down counts)")
    parser.add_argument("--only", action="append", choices=ROWS, help="run only these rows")
    parser.add_argument("--cluster-window", type=float, default=None, metavar="SECONDS",
                        help="the cluster_cost row's window (default 300 s, --quick 20 s)")
    parser.add_argument("--failover-rounds", type=int, default=failover.ROUNDS, metavar="N",
                        help="the failover row's rounds per fault kind and system")
    args = parser.parse_args(argv)
    quick: bool = args.quick
    chosen = set(args.only or [row for row in ROWS if not (quick and row in SLOW_ROWS)])
    started = time.monotonic()
    results: list[Row] = []
    costs: list[tuple[str, str]] = []
    with bench(quick) as b:
        port_crash = rows.PortCrash(b, 1 if quick else 3) if "crash" in chosen else None
        if "handoff" in chosen:
            log("lock handoff")
            results.append(rows.lock_handoff(b, 20 if quick else 200))
        if chosen & {"dups", "roundtrip", "drain"}:
            profiles = {"dupc": b.profile(3), "rt": b.profile(4)}
            app = b.start_worker(b.write_config("worker", profiles))
            if "dups" in chosen:
                log("duplicate starts")
                results.append(rows.duplicate_starts(b, 20 if quick else 1000, 10 if quick else 200,
                                                     app))
            if chosen & {"roundtrip", "drain"}:
                assert b.call("workerguard.ensure", "rt")["action"] == "started"
            if "roundtrip" in chosen:
                log("round trip")
                results.append(rows.ensure_round_trip(b, app, 100 if quick else 1000))
            if "drain" in chosen:
                log("drain")
                results.append(rows.drain(b, app, 200 if quick else 1000, 1 if quick else 7))
        if "sweep" in chosen:
            log("sweep cost")
            results.extend(rows.sweep_cost(b, 5 if quick else 30))
        if "breakdown" in chosen:
            log("cost breakdown")
            costs = rows.breakdown(b, 200 if quick else 2000)
        if port_crash is not None:
            log("crashed holder")
            results.insert(min(1, len(results)),
                           rows.crashed_holder(b, 2 if quick else 10, port_crash))
    if chosen & {"restart", "idle"}:  # a world of their own: nothing else runs meanwhile
        log("restart after SIGKILL and idle cost: supervisord, circusd, workerguard")
        results += restart.rows(quick, restart="restart" in chosen, idle="idle" in chosen)
    if "hung" in chosen:
        log("hung worker (heartbeat stops) -> replaced; supervisord, circusd beside it")
        results.append(hung.hung_row(quick))
    if "coldstart" in chosen:  # a world of its own: the guard starts N instances at once
        log(f"cold start: {coldstart.profiles_for(quick)} profiles, nothing running; the guard starts")
        results.append(coldstart.coldstart_row(quick))
    if "probecpu" in chosen:
        log("guard CPU per probe, 50 probed instances, beside the Prober alone")
        results.append(probecpu.guard_probe_cpu_row(quick))
    if "redis_idle" in chosen:
        log("Redis commands per idle host per minute, 1 and 50 profiles")
        results.append(redisidle.redis_idle_row(quick))
    if "cluster_cost" in chosen:
        log("cost of 10 held cluster slots: renewals, guard CPU, leashes")
        results.append(clustercost.cluster_cost_row(quick, args.cluster_window))
    if "failover" in chosen:
        log("failover per fault kind on the fleet bed: workerguard and a plain TTL lock")
        results += failover.failover_rows(args.failover_rounds)
    print(f"\n{'Quick run' if quick else 'Full run'}: {machine()}; "
          f"`python benchmarks/run.py{' --quick' if quick else ''}"
          f"{''.join(f' --only {row}' for row in args.only or ())}` took "
          f"{time.monotonic() - started:.0f} s\n")
    print(table(results))
    if costs:
        print("\nWhere an ensure's time goes (in-process, worker running, "
              f"{200 if quick else 2000} calls each):\n")
        print("| step | time |\n|---|---|")
        print("\n".join(f"| {step} | {value} |" for step, value in costs))
    sys.stdout.flush()
    return 0
