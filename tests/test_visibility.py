"""No live request runs twice because kombu redelivered it (tasks/visibility.py).

kombu's Redis transport hands a taken, unacknowledged message out again after
``visibility_timeout``. A request that legitimately runs longer (a readiness wait), or a
countdown due later (a backoff retry, held unacknowledged by the worker until due), would
run twice. Both are made with the old timeout's arithmetic in mind: a timeout that
counted lock wait, stop and start window but no readiness, and an uncapped countdown.
"""

from __future__ import annotations

import math
import time

import pytest

from tests.conftest import CeleryHarness, Workspace
from tests.support import free_port, poll_for
from tests.test_health import probed_profile
from workerguard.store import keys
from workerguard.store.events import EventFilter, latest
from workerguard.tasks.visibility import longest_countdown, visibility_timeout

pytestmark = pytest.mark.celery


def test_a_probed_request_slower_than_the_old_visibility_timeout_runs_once(
        workspace: Workspace, harness: CeleryHarness):
    port = free_port()
    workspace.guard_settings["lock_timeout"] = 1
    probed_profile(workspace, "web", "http", str(port), str(workspace.home / "web-never"),
                   "--delay", "22", stop_timeout=3,
                   probe={"kind": "http", "url": f"http://127.0.0.1:{port}/", "start_timeout": 40.0})
    config = workspace.config()
    old = math.ceil(1 + 3 + 0.2 + 2 + 10)  # lock wait, stop, start window, expire, margin
    assert old < 22 < visibility_timeout(config)  # the request outlives the old timeout only
    events = harness.watch_events()
    harness.start_worker()
    request = harness.call("workerguard.ensure", "web", timeout=90)
    assert request.result["action"] == "started"
    started = [e for e in events.events if e.get("type") == "task-started" and e.get("uuid") == request.id]
    received = [e for e in events.events if e.get("type") == "task-received" and e.get("uuid") == request.id]
    assert (len(received), len(started)) == (1, 1)


def test_a_backoff_longer_than_the_visibility_timeout_heals_once_in_steps(
        workspace: Workspace, harness: CeleryHarness, redis_client):
    workspace.guard_settings["lock_timeout"] = 1
    workspace.add_profile("demo", "--exit-code", "3", start_seconds=2, stop_timeout=3,
                          start_retries=1, backoff_max=600)
    config = workspace.config()
    vt, step = visibility_timeout(config), longest_countdown(config)
    due_in = vt + 8.0  # later than a countdown could be held without being redelivered
    due = time.time() + due_in
    redis_client.hset(keys.backoff(workspace.host_id, "demo"),
                      mapping={"failures": 5, "next_attempt": due, "delay": due_in})
    events = harness.watch_events()
    harness.start_worker()
    first = harness.call("workerguard.heal", "demo")
    assert first.result["action"] == "backoff"  # it schedules the retry
    wanted = EventFilter(profile="demo", host=workspace.host_id)

    def attempts() -> int:
        return sum(fields.get("action") == "start_failed" for _, fields in latest(redis_client, 100, wanted))

    poll_for(lambda: attempts() >= 1, timeout=due_in + 30, interval=0.5,
             message="the start attempt after the backoff")
    assert time.time() >= due - 0.5  # not before the backoff allowed it
    heals = {e["uuid"] for e in events.events if events.names.get(e.get("uuid", "")) == "workerguard.heal"}
    received = [e["uuid"] for e in events.events if e.get("type") == "task-received" and e["uuid"] in heals]
    assert len(received) == len(set(received)), "a heal was delivered twice"
    assert len(heals) >= 1 + math.floor(due_in / step)  # the wait was walked in steps
    assert attempts() == 1
