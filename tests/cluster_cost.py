"""What holding cluster slots costs (check F10 of ../shared/FLEET.md §6), measured on one
machine: shared by tests/test_cluster_cost.py (a 60 s window, bounds asserted) and the
benchmark row ``cluster_cost`` (benchmarks/clustercost.py, 5 min by default).

Two real guard workers run side by side over the same window, each on a redis-server of
its own: one holds the 10 slots of a cluster profile (``max_workers = 10``,
``max_per_host = 10``, test timings: P = 0.5 s), the other is the same guard without the
cluster profile (the idle baseline). Side by side, a change of the machine's load hits
both alike. Over the window:

* ``redis-cli monitor`` on the cluster guard's Redis counts the renew script's calls
  (``EVALSHA <renew sha> <slots> ...``) and the slots each names: one call per P covering
  all 10, not 10 per P;
* ``CONFIG RESETSTAT`` / ``INFO commandstats`` counts every command each guard's Redis
  executed (Lua's own commands included), so the cluster loop's commands a second are the
  difference;
* the guards' runtime dirs (lease files) on tmpfs, as ``/run`` is in production;
* the guards' CPU (utime + stime, ``/proc/PID/stat``) and each leash's (the instance's
  main process: ``/proc/PID/schedstat``, nanoseconds) and RSS at the end.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import redis

from tests.cluster_bed import TIMINGS, instances
from tests.conftest import IDENTITY, CeleryHarness, Workspace
from tests.support import ProcessTracker, RedisServer, poll_for, short_tmpdir, start_redis
from workerguard.ops.embedded import redis_server_binary
from workerguard.store.lease import LeaseStore, renew_keys

SLOTS = 10
PROFILE = "held"
P = TIMINGS["renew_period"]
KEYS_PER_SLOT = len(renew_keys(PROFILE, [0]))


@dataclass(frozen=True)
class Cost:
    window: float
    renew_calls: int
    slots_per_call: frozenset[int]
    """The numbers of slots the renew calls named (``{10}``: every call renewed all)."""
    commands: int
    """Commands the cluster guard's Redis executed in the window (Lua's own included)."""
    idle_commands: int
    guard_cpu: float
    """CPU seconds of the guard holding the slots, in the window."""
    idle_cpu: float
    """CPU seconds of the same guard without the cluster profile, in the window."""
    leash_rss_mb: tuple[float, ...]
    leash_cpu: tuple[float, ...]
    """Each leash's CPU, as a share of one core."""

    @property
    def renew_rate(self) -> float:
        return self.renew_calls / self.window

    @property
    def extra_cpu(self) -> float:
        """The cluster profile's CPU in the guard, over the baseline, as a share of one core."""
        return (self.guard_cpu - self.idle_cpu) / self.window

    @property
    def extra_commands_rate(self) -> float:
        return (self.commands - self.idle_commands) / self.window

    def line(self) -> str:
        return (f"F10, {SLOTS} held slots, {self.window:g} s window (P = {P:g} s): renew script "
                f"{self.renew_rate:.2f} calls/s (1/P = {1 / P:g}), slots per call "
                f"{sorted(self.slots_per_call)}; Redis commands {self.commands / self.window:.1f}/s "
                f"vs {self.idle_commands / self.window:.1f}/s without the profile "
                f"(+{self.extra_commands_rate:.1f}/s); guard CPU {100 * self.guard_cpu / self.window:.2f} % "
                f"vs {100 * self.idle_cpu / self.window:.2f} % (+{100 * self.extra_cpu:.2f} % of a core); "
                f"leash RSS max {max(self.leash_rss_mb):.1f} MB, CPU max "
                f"{100 * max(self.leash_cpu):.3f} % (median "
                f"{100 * sorted(self.leash_cpu)[len(self.leash_cpu) // 2]:.3f} %)")


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _schedstat(pid: int) -> float:
    """Seconds on a CPU (all threads' of a single-threaded process: the leash's)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


def _commands(client: redis.Redis) -> int:
    return sum(int(stats["calls"]) for stats in client.info("commandstats").values())


def _leashes(tag: str) -> list[int]:
    """The leash (parent) of each running instance of the profile."""
    found = []
    for instance in instances(tag):
        with contextlib.suppress(psutil.Error):
            parent = psutil.Process(instance.pid).parent()
            if parent is not None and "leash.py" in " ".join(parent.cmdline()):
                found.append(parent.pid)
    return sorted(found)


def _renew_calls(monitor_log: Path, sha: str) -> list[int]:
    """The number of slots each renew call in the MONITOR output named: its keys are each
    slot's lease, then each slot's info (``store.lease.renew_keys``), two keys a slot."""
    pattern = re.compile(rf'"evalsha" "{sha}" "(\d+)"', re.IGNORECASE)
    return [int(m.group(1)) // KEYS_PER_SLOT
            for m in pattern.finditer(monitor_log.read_text(errors="replace"))]


def runtime_base() -> Path | None:
    """Where the guards' runtime dirs go: tmpfs (``/dev/shm``), as ``/run`` is on a systemd
    host (here ``/run`` and ``/tmp`` are ext4, where replacing a file costs ~3x the CPU and
    the guard replaces one lease file per held slot per P); None if there is no tmpfs."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


def _workspace(server: RedisServer, tracker: ProcessTracker, cluster: bool) -> Workspace:
    home = short_tmpdir()
    base = runtime_base()
    runtime = Path(tempfile.mkdtemp(prefix="wg-cost-", dir=base)) if base else home / "run"
    space = Workspace(redis_url=server.url, home=home, tracker=tracker,
                      guard_settings={"identity": IDENTITY, "runtime_dir": str(runtime)})
    space.add_profile("plain")  # the same per-host profile in both (never started)
    if cluster:
        body = space.sleeper_profile(scope="cluster", max_workers=SLOTS, max_per_host=SLOTS)
        del body["match"]  # adopted processes cannot be leashed
        space.profiles[PROFILE] = body
        space.cluster = dict(TIMINGS)
    return space


def measure(window: float, tracker: ProcessTracker, settle: float = 3.0) -> Cost:
    root = short_tmpdir("wg-cost-")
    servers: list[RedisServer] = []
    harnesses: list[CeleryHarness] = []
    monitor: subprocess.Popen[bytes] | None = None
    try:
        for name in ("cluster", "idle"):
            (root / name).mkdir()
            servers.append(start_redis(root / name))
        spaces = [_workspace(servers[0], tracker, True), _workspace(servers[1], tracker, False)]
        harnesses = [CeleryHarness(space) for space in spaces]
        for harness in harnesses:
            harness.start_worker()
        tag = spaces[0].token
        poll_for(lambda: len(_leashes(tag)) == SLOTS, timeout=90, interval=0.2,
                 message=f"{SLOTS} leashed instances\n{harnesses[0].log_tail()}")
        time.sleep(settle)  # the claims' heals end; every slot renewed since
        leashes = _leashes(tag)
        assert len(leashes) == SLOTS
        clients = [server.client() for server in servers]
        monitor_log = root / "monitor.txt"
        with monitor_log.open("wb") as out:
            cli = str(Path(redis_server_binary()).with_name("redis-cli"))
            monitor = tracker.popen([cli, "-p", str(servers[0].port), "monitor"], stdout=out)
        poll_for(lambda: monitor_log.stat().st_size > 0, timeout=10, message="MONITOR to start")
        guards = [h.worker.pid for h in harnesses]
        for client in clients:
            client.config_resetstat()
        cpu0 = [_cpu(pid) for pid in guards]
        leash0 = [_schedstat(pid) for pid in leashes]
        t0 = time.monotonic()
        time.sleep(window)  # the measurement window itself
        elapsed = time.monotonic() - t0
        cpu1 = [_cpu(pid) for pid in guards]
        leash1 = [_schedstat(pid) for pid in leashes]
        commands = [_commands(client) for client in clients]
        rss = tuple(psutil.Process(pid).memory_info().rss / 2**20 for pid in leashes)
        assert _leashes(tag) == leashes, "an instance was replaced during the window"
        monitor.kill()
        monitor.wait(10)
        calls = _renew_calls(monitor_log, LeaseStore(clients[0], PROFILE, SLOTS).renew_script.sha)
        for client in clients:
            client.close()
        return Cost(elapsed, len(calls), frozenset(calls), commands[0], commands[1],
                    cpu1[0] - cpu0[0], cpu1[1] - cpu0[1], rss,
                    tuple((b - a) / elapsed for a, b in zip(leash0, leash1, strict=True)))
    finally:
        if monitor is not None and monitor.poll() is None:
            monitor.kill()
            monitor.wait(10)
        for harness in harnesses:
            harness.close()
        tracker.end_all()
        for server in servers:
            server.stop()
        for harness in harnesses:
            shutil.rmtree(harness.workspace.home, ignore_errors=True)
            shutil.rmtree(harness.workspace.guard_settings["runtime_dir"], ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
