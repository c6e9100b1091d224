"""Requests in flight when the guard is SIGKILLed end in a final state (issue 11, point 5).

A real guard worker takes requests that wait on a profile lock the test holds; the guard
is SIGKILLed and a new one started. Every request ends SUCCESS, FAILURE or REVOKED (the
ones whose ``expires`` passed while no guard ran) within ``visibility_timeout`` plus a
little, and there is exactly one worker instance.
"""

from __future__ import annotations

import math
import time

import pytest

from tests.conftest import CeleryHarness, Workspace
from tests.support import poll_for
from workerguard.store.lock import ProfileLock
from workerguard.tasks.app import RESTORE_INTERVAL
from workerguard.tasks.visibility import visibility_timeout

pytestmark = pytest.mark.celery

FINAL = {"SUCCESS", "FAILURE", "REVOKED"}


def test_requests_in_flight_when_the_guard_is_sigkilled_end_in_a_final_state(
        workspace: Workspace, harness: CeleryHarness, redis_client):
    workspace.add_profile(start_seconds=0.3, stop_timeout=3)
    workspace.guard_settings["lock_timeout"] = 10
    vt = visibility_timeout(workspace.config())
    assert vt == math.ceil(10 + 3 + 0.3 + 2 + 10)  # lock wait, stop, start window, expire, margin
    harness.start_worker()
    app = harness.client_app()
    held = ProfileLock(redis_client, workspace.host_id, "demo", expire=300)
    assert held.acquire_within(1, renew=False)  # every ensure now waits on the lock
    # Two that expire while no guard runs, taken first; then ordinary ones (some stay queued).
    short = [app.send_task("workerguard.ensure", args=["demo"], queue=harness.queue, expires=6)
             for _ in range(2)]
    ordinary = [app.send_task("workerguard.ensure", args=["demo"], queue=harness.queue,
                              expires=300) for _ in range(6)]
    requests = short + ordinary
    poll_for(lambda: sum(r.state == "STARTED" for r in requests) == 4, timeout=20,
             message="the guard's 4 threads to be waiting on the lock")
    assert all(r.state == "STARTED" for r in short)

    harness.worker.kill()  # SIGKILL: the four requests it was running are in its hands
    harness.worker.wait(10)
    killed = time.monotonic()
    harness.start_worker()
    held.release()
    bound = vt + 2 * RESTORE_INTERVAL + 20  # redelivery, then the request itself
    poll_for(lambda: all(r.state in FINAL for r in requests), timeout=bound, interval=0.5,
             message="every request to reach a final state")
    took = time.monotonic() - killed
    states = [r.state for r in requests]
    assert [r.state for r in short] == ["REVOKED", "REVOKED"], states  # expired while down
    assert all(r.state == "SUCCESS" for r in ordinary), states
    assert len(workspace.running()) == 1
    print(f"\nvisibility_timeout {vt} s: all {len(requests)} requests final {took:.1f} s "
          f"after the SIGKILL: {states}")
