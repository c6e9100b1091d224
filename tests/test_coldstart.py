"""A guard with many profiles on a host where none runs: its startup sweep converges them
in parallel (each under its own lock), and ensures racing that sweep never make a profile
run more than ``max_workers``. The time it takes is a benchmark row, not an assert here
(``python benchmarks/run.py --only coldstart``, docs/benchmarks.md)."""

from __future__ import annotations

import os
import random
import threading
from collections import Counter

import redis

from tests.conftest import CeleryHarness, Workspace
from tests.support import events, poll_for
from workerguard.tasks.routing import direct_queue, to_host

PROFILES = 30


def _profiles(workspace: Workspace) -> dict[bytes, str]:
    """``PROFILES`` profiles of one cheap instance each (``sleep`` with a command line of
    its own); their raw ``/proc/<pid>/cmdline`` -> profile name."""
    tag = random.randrange(100_000, 999_999)
    by_cmdline = {}
    for i in range(PROFILES):
        name = f"p{i:02d}"
        argv = ["sleep", f"86400.{tag}{i:03d}"]
        workspace.profiles[name] = {"command": argv, "min_workers": 1, "max_workers": 1,
                                    "start_seconds": 0.3, "stop_timeout": 2}
        by_cmdline[b"\0".join(a.encode() for a in argv) + b"\0"] = name
    return by_cmdline


def _running(by_cmdline: dict[bytes, str]) -> Counter[str]:
    """Processes per profile, as the process table shows them now."""
    counts: Counter[str] = Counter()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                name = by_cmdline.get(fh.read())
        except OSError:
            continue
        if name is not None:
            counts[name] += 1
    return counts


def _started(client: redis.Redis) -> Counter[str]:
    """``started`` entries of the action log per profile, once every profile has one
    (empty until then)."""
    found = Counter(e[b"profile"].decode() for e in events(client, "started"))
    return found if len(found) == PROFILES else Counter()


def test_a_cold_start_brings_up_every_profile_and_racing_ensures_never_exceed_max(
        workspace: Workspace, harness: CeleryHarness, redis_client: redis.Redis) -> None:
    by_cmdline = _profiles(workspace)
    workspace.guard_settings.update(sweep_on_start=True, sweep_interval=3600)
    most: Counter[str] = Counter()
    stop = threading.Event()

    def monitor() -> None:  # every 20 ms, the most instances each profile ever had
        while not stop.is_set():
            for name, count in _running(by_cmdline).items():
                most[name] = max(most[name], count)
            stop.wait(0.02)

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    try:
        # Queued before the guard starts, so that it takes them at once, beside its own
        # startup sweep: two more whole sweeps (a startup sweep always runs) and an ensure
        # of every profile, all racing for the same profiles' locks.
        app = harness.client_app()
        with app.connection_for_write() as connection:  # so that the sweeps are not dropped
            direct_queue(harness.queue)(connection).declare()
        for _ in range(2):
            app.send_task("workerguard.sweep", kwargs={"trigger": "startup"}, expires=120,
                          **to_host(workspace.host_id))
        requests = [app.send_task("workerguard.ensure", args=[name], queue=harness.queue,
                                  expires=120) for name in sorted(workspace.profiles)]
        harness.start_worker()
        answers = [request.get(timeout=120) for request in requests]
        poll_for(lambda: len(_running(by_cmdline)) == PROFILES, timeout=60,
                 message=f"all {PROFILES} profiles running")
        started = poll_for(lambda: _started(redis_client), timeout=60,
                           message="a started event of every profile")
    finally:
        stop.set()
        watcher.join(10)
    assert max(most.values()) == 1, most  # never two of one profile, on any sample
    assert {a["action"] for a in answers} <= {"started", "already_running"}, answers
    assert all(len(a["running"]) == 1 for a in answers), answers
    assert _running(by_cmdline) == Counter(dict.fromkeys(workspace.profiles, 1))
    assert set(started.values()) == {1}, started  # each started once, by one converge
