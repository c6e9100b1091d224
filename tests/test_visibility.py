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
from typing import Any

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


def test_a_mutex_left_by_a_guard_killed_mid_scan_holds_redelivery_up_for_seconds_not_minutes(
        workspace: Workspace, redis_client):
    """kombu's redelivery scan holds ``unacked_mutex``; a guard SIGKILLed mid-scan leaves it
    behind. With the guard's transport options (``visibility_timeout`` shortened to 1 s for
    the test) a request whose taker died is handed out again once the mutex expires:
    ``UNACKED_MUTEX_EXPIRE`` seconds, not kombu's 300."""
    from kombu.connection import Connection
    from kombu.entity import Exchange, Queue

    from workerguard.tasks.app import make_app
    from workerguard.tasks.visibility import UNACKED_MUTEX_EXPIRE

    app = make_app(workspace.config(), workspace.redis_url)
    options = {**app.conf.broker_transport_options, "visibility_timeout": 1}
    app.close()
    queue = Queue("wg-mutex", Exchange("wg-mutex", type="direct"), routing_key="wg-mutex")
    with Connection(workspace.redis_url, transport_options=options) as producer:
        producer.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key="wg-mutex",
                                    declare=[queue], serializer="json")
    taker = Connection(workspace.redis_url, transport_options=options)
    channel: Any = taker.default_channel  # kombu's Redis channel (its fields are untyped)
    assert channel.basic_get("wg-mutex", no_ack=False) is not None  # taken, unacked
    assert channel.unacked_mutex_expire == UNACKED_MUTEX_EXPIRE
    # The taker dies mid-scan: its mutex stays, it restores nothing on the way out.
    assert redis_client.lock(channel.unacked_mutex_key,
                             timeout=channel.unacked_mutex_expire).acquire(blocking=False)
    channel.qos._delivered.clear()
    died = time.monotonic()
    with Connection(workspace.redis_url, transport_options=options) as rescuer:
        qos = rescuer.default_channel.qos

        def handed_out_again() -> bool:
            qos.restore_visible(num=10, interval=1)
            return bool(redis_client.llen("wg-mutex"))

        poll_for(handed_out_again, timeout=UNACKED_MUTEX_EXPIRE + 60, interval=0.2,
                 message="the request to be redelivered")
    took = time.monotonic() - died
    taker.release()
    assert took >= UNACKED_MUTEX_EXPIRE - 1  # the mutex did hold it up, until it expired
    print(f"\nredelivered {took:.1f} s after its taker died mid-scan "
          f"(unacked_mutex_expire {UNACKED_MUTEX_EXPIRE} s; kombu's default 300 s)")
