"""Requests in flight when the guard is SIGKILLed end in a final state (issue 11, point 5).

A real guard worker takes requests that wait on a profile lock the test holds; the guard
is SIGKILLed and a new one started. Every request ends SUCCESS, FAILURE or REVOKED (the
ones whose ``expires`` passed while no guard ran) within ``visibility_timeout`` plus a
little, and there is exactly one worker instance.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import queue
import random
import threading
import time

import pytest

from tests.conftest import CeleryHarness, Workspace
from tests.support import poll_for
from workerguard.errors import WorkerguardError
from workerguard.store.lock import ProfileLock
from workerguard.tasks.visibility import RESTORE_INTERVAL, visibility_timeout

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


KILLS = int(os.environ.get("WG_GUARD_KILLS", "50"))


@pytest.mark.slow
def test_50_sigkills_of_the_guard_under_a_steady_flow_leave_no_request_without_a_final_state(
        workspace: Workspace, harness: CeleryHarness, redis_client):
    """Requests flow (one every 0.2 s, sent as ``workerguard.client`` sends them: with
    ``expires``) while the guard worker is SIGKILLed 50 times at random moments and
    restarted each time. Every request ends SUCCESS, FAILURE or REVOKED: redelivered and
    answered, answered REVOKED by a guard that took it after its ``expires``, or (lost in
    kombu's pop-before-record window, or still unanswered when it expired) marked REVOKED
    by the caller's wait (``client.wait``). Nothing is left unacknowledged or queued."""
    from workerguard import client
    from workerguard.tasks.app import make_app
    from workerguard.tasks.visibility import redelivered_within

    workspace.add_profile(start_seconds=0.2, stop_timeout=1)
    workspace.guard_settings.update(lock_timeout=5, lock_expire=3)
    config = workspace.config()
    harness.start_worker()
    sender = harness.client_app()
    waiter_app = make_app(config, workspace.redis_url)
    sent: queue.Queue[str | None] = queue.Queue()
    ids: list[str] = []
    stop = threading.Event()

    def flow() -> None:
        while not stop.wait(0.2):
            request = client.send(sender, config, "workerguard.ensure", ["demo"], {},
                                  expires=client.ANSWER_TIMEOUT)
            ids.append(request.id)
            sent.put(request.id)
        sent.put(None)

    def wait_each() -> None:  # the callers' waits, one after the other (one result consumer)
        while (task_id := sent.get()) is not None:
            with contextlib.suppress(WorkerguardError):
                client.wait(waiter_app.AsyncResult(task_id), harness.queue, timeout=30)

    threads = [threading.Thread(target=flow, daemon=True),
               threading.Thread(target=wait_each, daemon=True)]
    for thread in threads:
        thread.start()
    chance = random.Random(17)
    try:
        for _ in range(KILLS):
            stop.wait(chance.uniform(0.2, 2.5))  # a random moment of the flow
            harness.worker.kill()
            harness.worker.wait(10)
            harness.start_worker()
    finally:
        stop.set()
    stopped = time.monotonic()
    bound = redelivered_within(config) + client.ANSWER_TIMEOUT + 60
    threads[0].join(10)
    threads[1].join(bound)
    assert not threads[1].is_alive(), "the callers' waits did not end"

    def left() -> tuple[int, int, int]:
        states = [waiter_app.AsyncResult(i).state for i in ids]
        return (sum(s not in FINAL for s in states), redis_client.hlen("unacked"),
                redis_client.llen(harness.queue))

    poll_for(lambda: left() == (0, 0, 0), timeout=bound, interval=1,
             message=f"every request final, none unacked or queued (now {left()})")
    took = time.monotonic() - stopped
    results = [waiter_app.AsyncResult(i) for i in ids]
    counts = collections.Counter(r.state for r in results)
    by_caller = sum(r.state == "REVOKED" and "no guard took it" in str(r.result) for r in results)
    waiter_app.close()
    assert len(workspace.running()) == 1
    print(f"\n{KILLS} SIGKILLs, {len(ids)} requests: {dict(counts)} ({by_caller} of the REVOKED "
          f"marked by the caller); 0 without a final state, 0 unacked, 0 queued, "
          f"{took:.1f} s after the flow stopped")
