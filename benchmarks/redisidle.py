"""Row "redis_idle": the Redis commands of one idle host per minute, and what they mean
for how many hosts one Redis serves.

A real guard worker (no beat: beat runs on some hosts only, and its sweep is one
``PUBLISH`` an interval for the whole fleet) runs alone on a redis-server of its own,
with 1 and then 50 profiles, each keeping one instance of a cheap worker (``sleep``).
Once every instance runs and a short settle has passed, ``CONFIG RESETSTAT`` opens the
window and ``INFO commandstats`` closes it: every command the server executed in the
window, by name, is the guard's (the bench's own client sends only those two, and its
Celery app is closed first). Redis counts the commands a Lua script runs inside it too
(kombu's mutex release is one ``EVALSHA`` running a ``GET`` and a ``DEL``): the count is
what the server executes, not the round trips. The window holds one or two sweeps of the
guard's own timer (``sweep_interval`` 30 s), as an idle host's would.

From that, the estimate: ``BUDGET`` commands a second for idle traffic, divided by one
host's commands a second; and beside it the connections each guard holds, against
Redis's default ``maxclients`` of 10,000. The bench's own closed Celery app keeps a few
idle connections: they send nothing, and only the guard worker's are counted.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psutil

from benchmarks.harness import Bench, bench, poll_for
from benchmarks.rows import Row, log

PROFILES = (1, 50)
BUDGET = 20_000
"""Commands a second one Redis gives to idle guards in the estimate: a fifth of the
~100,000 small commands a second one redis-server core serves (redis.io's benchmark
page), leaving the rest to requests, sweeps, Flower and bursts after a failover."""
MAXCLIENTS = 10_000
"""redis-server's default ``maxclients``."""
OWN = ("config",)
"""Commands of the bench's own client inside the window (``CONFIG RESETSTAT``)."""


@dataclass(frozen=True)
class Measured:
    profiles: int
    per_minute: float
    by_command: dict[str, float]
    """Commands a minute, by name."""
    connections: int


def _running(argvs: list[bytes]) -> bool:
    wanted = set(argvs)
    found = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    found += fh.read() in wanted
            except OSError:
                continue
    return found == len(wanted)


def _connections(b: Bench) -> int:
    """The guard worker's open connections to the bench's Redis (its pools keep every
    connection they ever opened: a sweep converges up to 32 profiles at once)."""
    assert b.worker_process is not None and b.server is not None
    port = b.server.port
    return sum(1 for conn in psutil.Process(b.worker_process.pid).net_connections("tcp")
               if conn.raddr and conn.raddr.port == port)


def measure(profiles: int, window: float, settle: float, quick: bool) -> Measured:
    """One guard worker with ``profiles`` profiles on a Redis of its own, idle for ``window`` s."""
    with bench(quick) as b:
        config = b.write_config("idle", {f"p{i}": b.profile(i) for i in range(profiles)},
                                sweep_on_start=True)
        app = b.start_worker(config)
        argvs = [b"".join(arg.encode() + b"\0" for arg in b.worker_argv(i)) for i in range(profiles)]
        poll_for(lambda: _running(argvs), 120, interval=0.2, message=f"{profiles} instances")
        app.close()  # the bench's own app: nothing of ours talks to Redis in the window
        time.sleep(settle)  # the start-up sweep and its records end before the window opens
        client = b.client()
        connections = _connections(b)
        client.config_resetstat()
        time.sleep(window)  # the measurement window itself
        stats = client.info("commandstats")
        calls = {name.removeprefix("cmdstat_"): float(v["calls"]) * 60 / window
                 for name, v in stats.items()}
        for own in OWN:
            calls[own] = max(0.0, calls.get(own, 0.0) - 60 / window)
        calls = {name: n for name, n in calls.items() if n > 0}
        return Measured(profiles, sum(calls.values()), calls, connections)


def _hosts(per_minute: float) -> int:
    return int(BUDGET / (per_minute / 60))


def redis_idle_row(quick: bool) -> Row:
    window, settle = (10.0, 3.0) if quick else (60.0, 10.0)
    results = []
    for profiles in PROFILES:
        log(f"redis_idle: {profiles} profile(s), {window:g} s window")
        results.append(measure(profiles, window, settle, quick))
    cells = []
    for m in results:
        top = sorted(m.by_command.items(), key=lambda kv: -kv[1])[:6]
        cells.append(f"{m.profiles} profile{'s' if m.profiles > 1 else ''}: {m.per_minute:.0f} "
                     f"commands/min ({', '.join(f'{name} {n:.0f}' for name, n in top)}); "
                     f"{m.connections} connections")
    worst = max(m.per_minute for m in results)
    most_connections = max(m.connections for m in results)
    estimate = (f"so one Redis with {BUDGET:,} commands/s for idle guards serves ~{_hosts(worst):,} "
                f"hosts ({BUDGET:,} / ({worst:.0f} / 60)); its default maxclients ({MAXCLIENTS:,}) "
                f"allows ~{MAXCLIENTS // max(1, most_connections):,} hosts at {most_connections} "
                "connections each")
    return Row(f"Redis commands per idle host per minute (a guard worker alone, no beat; "
               f"{window:g} s window, INFO commandstats)", "(none: a property of workerguard)",
               "; ".join(cells) + "; " + estimate, "(measured, no target)", None)
