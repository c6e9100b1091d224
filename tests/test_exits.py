"""Exit events: a real guard worker learns of each exit as it happens and restarts the
instance at once, through the same lock, fence and plan as any request."""

from __future__ import annotations

import re
import signal
import time

import psutil
import pytest

from tests.conftest import CeleryHarness, Workspace
from tests.support import alive, events, poll_for

pytestmark = pytest.mark.celery


def sleepers(ws: Workspace) -> list[int]:
    """The ground truth: live workers that announced themselves in the profile's log."""
    log = ws.home / "logs" / "demo.log"
    if not log.exists():
        return []
    pids = {int(p) for p in re.findall(r"sleeper (\d+) up", log.read_text())}
    return sorted(p for p in pids if alive(p))


def test_a_worker_killed_20_times_gets_exactly_one_replacement_each_time(
        workspace: Workspace, harness: CeleryHarness, redis_client):
    workspace.add_profile(start_seconds=0.2)
    harness.start_worker()
    assert harness.call("workerguard.ensure", "demo").result["action"] == "started"
    [current] = poll_for(lambda: sleepers(workspace), message="the first worker")
    latencies = []
    for i in range(20):
        began = time.monotonic()
        psutil.Process(current).send_signal(signal.SIGKILL)
        [replacement] = poll_for(lambda: [p for p in sleepers(workspace) if p != current],  # noqa: B023
                                 timeout=10, interval=0.002, message="a replacement")
        latencies.append(time.monotonic() - began)
        # the replacement's start is confirmed (and watched) once its event is logged
        poll_for(lambda: len(events(redis_client, "started")) == i + 2, timeout=10,  # noqa: B023
                 message="the restart to be recorded")
        poll_for(lambda: not alive(current), message="the killed one to be reaped")  # noqa: B023
        assert sleepers(workspace) == [replacement]
        current = replacement
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
    log = workspace.home / "logs" / "demo.log"
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
        second.call("workerguard.status", "demo")  # both guards have seen (and watch) it
        for i in range(10):
            # kill each one once its start is confirmed (a kill inside the start window
            # is a failed start, and a flood of those is a crash loop: backoff)
            poll_for(lambda: len(events(redis_client, "started")) == i + 1, timeout=10,  # noqa: B023
                     message="the start to be confirmed")
            [pid] = poll_for(lambda: sleepers(workspace), timeout=10, message="one worker")
            second.call("workerguard.status", "demo")  # the second guard watches it too
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
