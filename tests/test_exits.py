"""Exit events: a real guard worker learns of each exit as it happens and restarts the
instance at once, through the same lock, fence and plan as any request."""

from __future__ import annotations

import re
import signal
import time

import psutil
import pytest

from tests.conftest import CeleryHarness, Workspace
from tests.support import HERE, alive, events, poll_for
from workerguard.workers.logs import log_path, profile_logs

pytestmark = pytest.mark.celery


def sleepers(ws: Workspace) -> list[int]:
    """The ground truth: live workers that announced themselves in the profile's log."""
    logs = profile_logs(ws.home / "logs", "demo")
    pids = {int(p) for log in logs for p in re.findall(r"sleeper (\d+) up", log.read_text())}
    return sorted(p for p in pids if alive(p))


def kill_and_replace(ws: Workspace, redis_client, rounds: int) -> list[float]:
    """SIGKILL the profile's one worker ``rounds`` times, each time once its replacement's
    start is confirmed (and so watched): exactly one replacement each time. The seconds
    from each kill to the replacement's process."""
    [current] = poll_for(lambda: sleepers(ws), message="the first worker")
    started = len(events(redis_client, "started"))
    latencies = []
    for i in range(rounds):
        began = time.monotonic()
        psutil.Process(current).send_signal(signal.SIGKILL)
        [replacement] = poll_for(lambda: [p for p in sleepers(ws) if p != current],  # noqa: B023
                                 timeout=20, interval=0.002, message="a replacement")
        latencies.append(time.monotonic() - began)
        # the replacement's start is confirmed (and watched) once its event is logged
        poll_for(lambda: len(events(redis_client, "started")) == started + i + 1,  # noqa: B023
                 timeout=20, message="the restart to be recorded")
        poll_for(lambda: not alive(current), message="the killed one to be reaped")  # noqa: B023
        assert sleepers(ws) == [replacement]
        current = replacement
    return latencies


def test_a_worker_killed_20_times_gets_exactly_one_replacement_each_time(
        workspace: Workspace, harness: CeleryHarness, redis_client):
    workspace.add_profile(start_seconds=0.2)
    harness.start_worker()
    assert harness.call("workerguard.ensure", "demo").result["action"] == "started"
    latencies = kill_and_replace(workspace, redis_client, 20)
    status = harness.call("workerguard.status", "demo").result["profiles"]["demo"]
    assert status["backoff"] is None and len(status["instances"]) == 1
    assert len(events(redis_client, "exited")) == 20
    latencies.sort()
    print(f"\nkill -> new instance: median {latencies[10] * 1000:.0f} ms, "
          f"max {latencies[-1] * 1000:.0f} ms")


def test_a_paused_profiles_worker_that_exits_stays_down(workspace: Workspace,
                                                        harness: CeleryHarness, redis_client):
    from workerguard.store.pause import Pauses

    workspace.add_profile()
    harness.start_worker()
    harness.call("workerguard.ensure", "demo")
    [pid] = poll_for(lambda: sleepers(workspace), message="the worker")
    Pauses(redis_client, workspace.host_id).pause("demo", "operator")
    seen = harness.watch_events()
    psutil.Process(pid).kill()
    poll_for(lambda: events(redis_client, "exited"), message="the exit to be recorded")
    poll_for(lambda: seen.of("workerguard.heal", "task-succeeded"), timeout=10,
             message="the heal request to be answered")
    assert sleepers(workspace) == []
    assert harness.call("workerguard.status", "demo").result["profiles"]["demo"]["state"] == "paused"


def test_a_worker_that_always_dies_at_once_backs_off(workspace: Workspace,
                                                     harness: CeleryHarness, redis_client):
    workspace.add_profile("demo", "--exit-code", "3", start_seconds=2, start_retries=1,
                          backoff_max=60)
    harness.start_worker()
    harness.call("workerguard.ensure", "demo")
    window = 8.0
    began = time.monotonic()
    log = log_path(workspace.home / "logs", "demo", 0)
    while time.monotonic() - began < window:
        time.sleep(0.2)  # the window is the measurement, not a synchronisation
    spawns = len(re.findall(r"failing with 3", log.read_text()))
    # Without backoff the guard would start one every ~0.3 s (~26 in the window); with
    # start_retries = 1 the delays are 1, 2, 4 s: 1 + about 4 retries.
    assert 2 <= spawns <= 7, spawns
    status = harness.call("workerguard.status", "demo").result["profiles"]["demo"]
    assert status["backoff"]["failures"] >= 2


def test_two_guard_workers_on_one_host_never_leave_two_instances(
        workspace: Workspace, harness: CeleryHarness, redis_client):
    workspace.add_profile(start_seconds=0.2)
    harness.start_worker()
    second = CeleryHarness(workspace)
    second.start_worker()
    try:
        harness.call("workerguard.ensure", "demo")
        for i in range(10):
            # kill each one once its start is confirmed (a kill inside the start window
            # is a failed start, and a flood of those is a crash loop: backoff)
            poll_for(lambda: len(events(redis_client, "started")) == i + 1, timeout=10,  # noqa: B023
                     message="the start to be confirmed")
            [pid] = poll_for(lambda: sleepers(workspace), timeout=10, message="one worker")
            # an ensure (a status would only read) makes the second guard watch it too: both heal
            assert second.call("workerguard.ensure", "demo").result["running"] == [pid]
            psutil.Process(pid).kill()
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                assert len(sleepers(workspace)) <= 1
                if [p for p in sleepers(workspace) if p != pid]:
                    break
        poll_for(lambda: len(sleepers(workspace)) == 1, timeout=10)
        assert len(sleepers(workspace)) == 1
    finally:
        second.close()


def test_without_pidfd_open_a_killed_worker_is_still_restarted(workspace: Workspace,
                                                               harness: CeleryHarness,
                                                               redis_client):
    """pidfd_open fails ENOSYS in the real guard worker (a seccomp filter, as a kernel
    < 5.3 or a container profile would; tests/no_pidfd.py): the spawn that follows a
    start raises nothing, the watcher polls, says so once in its log and in status, and a
    SIGKILLed worker still comes back, each time."""
    workspace.add_profile(start_seconds=0.2)
    harness.start_worker(entry=(str(HERE / "no_pidfd.py"), "workerguard.cli"))
    assert re.search(r"PIDFD_OPEN (seccomp|injected)", harness.log_tail(100_000))
    assert harness.call("workerguard.ensure", "demo").result["action"] == "started"
    status = harness.call("workerguard.status", "demo").result
    assert status["exit_watch"].startswith("polling every 0.5 s (pidfd_open: ENOSYS")
    assert "exit watch: polling" in status["message"]
    latencies = kill_and_replace(workspace, redis_client, 5)
    assert len(events(redis_client, "exited")) == 5
    said = harness.log_tail(1_000_000).count("exit watcher: pidfd_open: ENOSYS")
    assert said == 1, harness.log_tail()
    print(f"\nwithout pidfd_open, kill -> new instance: {sorted(round(x * 1000) for x in latencies)} ms")


@pytest.mark.parametrize("pool", ["threads", "solo", "prefork"])
def test_every_supported_pool_sweeps_at_start_and_restarts_a_killed_worker(
        workspace: Workspace, harness: CeleryHarness, redis_client, pool: str):
    """The guard's pools (docs: how-it-works.md, "Celery pools"): the startup sweep runs
    where requests run, so under prefork the instance is a pool child's child, never the
    main process's; each pool restarts a SIGKILLed worker at once, 3 times."""
    workspace.add_profile(start_seconds=0.2)
    workspace.guard_settings["sweep_on_start"] = True
    master = harness.start_worker(f"--pool={pool}", "--concurrency=2")
    [first] = poll_for(lambda: sleepers(workspace), timeout=30, message="the startup sweep")
    poll_for(lambda: events(redis_client, "started"), timeout=20, message="its start recorded")
    spawner = psutil.Process(first).ppid()
    assert (spawner != master.pid) == (pool == "prefork"), (spawner, master.pid)
    latencies = kill_and_replace(workspace, redis_client, 3)
    assert len(events(redis_client, "exited")) == 3
    print(f"\n{pool}: kill -> new instance: {sorted(round(x * 1000) for x in latencies)} ms")
