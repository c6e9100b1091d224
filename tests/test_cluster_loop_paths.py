"""What the cluster loop's thread waits on, and what it calls a loss (a real redis-server,
no Celery; ``ops.cluster_loop``, ``ops.heal_sender``, ``store.leases``).

* A slot the converge gave back (a pause, a drain: ``policy.cluster_side.release_vacated``,
  which may run in a pool process with a ``Leases`` of its own) is not a lease lost behind
  the holder's back: no ``lease_lost`` warning, event or ``self_fenced`` count (the alert
  ``WorkerguardSelfFenced`` fired after every drain). A key deleted by anyone else still is.
* The loop never waits for a heal to be sent: with the broker's publish stuck (a connection
  to a cut-off primary), its renewals go on every renew period, and the heals asked for
  meanwhile are merged and sent once the publish returns. Sending inline, the loop sat in
  such calls for seconds on the boxed Sentinel bed (tests/test_cluster_isolation.py).
"""

from __future__ import annotations

import threading

import pytest
import redis

from tests.cluster_bed import no_holdoff, one_slot_space
from tests.conftest import Workspace
from tests.support import ProcessTracker, RedisServer, poll_for
from workerguard.ops.cluster_loop import ClusterLoop
from workerguard.ops.heal_sender import HealSender
from workerguard.policy.cluster_side import ClusterSide
from workerguard.policy.hooks import GuardHooks
from workerguard.store import keys
from workerguard.store.events import EventFilter, EventLog, latest
from workerguard.workers.leashed import lease_dir, read_deadline


class Told(GuardHooks):
    def __init__(self) -> None:
        self.renewals: list[str] = []
        self.fences: list[str] = []

    def lease_renewed(self, profile: str, result: str) -> None:
        self.renewals.append(result)

    def self_fenced(self, profile: str, reason: str) -> None:
        self.fences.append(reason)


def _space(redis_server: RedisServer, tracker: ProcessTracker) -> Workspace:
    return one_slot_space(redis_server, tracker, renew_period=0.2)


def _hold_slot_0(loop: ClusterLoop) -> None:
    poll_for(lambda: loop.round() is not None and 0 in loop.leases.held("demo"), timeout=10,
             interval=0.05, message="the loop to win slot 0")


@pytest.mark.parametrize("how", ["given back by the converge", "deleted behind its back"])
def test_a_slot_given_back_by_the_converge_is_not_a_lost_lease(
        redis_server: RedisServer, redis_client: redis.Redis, tracker: ProcessTracker,
        how: str):
    space = _space(redis_server, tracker)
    config = space.config()
    told, heals = Told(), []
    loop = ClusterLoop(config, redis_client, lambda p, why: heals.append(why),
                       events=EventLog(redis_client, space.host_id), hooks=[told])
    no_holdoff(redis_client)
    _hold_slot_0(loop)
    redis_client.set(keys.cluster_paused("demo"), "1")  # nothing claims slot 0 again
    if how == "given back by the converge":  # as a pause's converge does, nothing running
        side = ClusterSide(redis_server.client(), space.host_id,
                           lease_dir(config.settings.runtime_dir, space.host_id), config.cluster)
        assert side.release_vacated(config.profile("demo"), []) == [0]
    else:
        redis_client.delete(keys.cluster_slot("demo", 0))
    told.renewals.clear()
    loop.round()
    actions = [f["action"] for _, f in latest(redis_client, 20, EventFilter(profile="demo"))]
    assert not loop.leases.held("demo")
    assert read_deadline(loop.leases.lease_file("demo", 0)) == 0.0  # nothing may run for it
    if how == "given back by the converge":
        assert told.renewals[0] == "released" and told.fences == []
        assert "lease_lost" not in actions and "lease lost" not in heals
    else:
        assert told.renewals[0] == "lost" and told.fences == ["lost"]
        assert "lease_lost" in actions and "lease lost" in heals


def test_a_first_win_asks_for_one_heal_not_another_for_the_spec_it_wrote(
        redis_server: RedisServer, redis_client: redis.Redis, tracker: ProcessTracker):
    space = _space(redis_server, tracker)
    heals: list[str] = []
    loop = ClusterLoop(space.config(), redis_client, lambda p, why: heals.append(why))
    no_holdoff(redis_client)
    _hold_slot_0(loop)
    for _ in range(3):
        loop.round()
    assert heals == ["slot 0 won"]  # the spec its claim wrote is no change of definition
    # a loop started on a host that holds the slot (a restart) heals at its first look
    restarted: list[str] = []
    again = ClusterLoop(space.config(), redis_client, lambda p, why: restarted.append(why))
    again.leases.adopt(["demo"])
    again.round()
    assert restarted == ["spec changed"]


def test_a_marker_of_an_earlier_grant_does_not_hide_a_loss(
        redis_server: RedisServer, redis_client: redis.Redis, tracker: ProcessTracker):
    from workerguard.workers.leashed import mark_released

    space = _space(redis_server, tracker)
    told = Told()
    loop = ClusterLoop(space.config(), redis_client, lambda p, why: None, hooks=[told])
    no_holdoff(redis_client)
    _hold_slot_0(loop)
    held = loop.leases.held("demo")[0]
    mark_released(loop.leases.lease_file("demo", 0), held.token - 1)
    redis_client.delete(keys.cluster_slot("demo", 0))
    told.renewals.clear()
    loop.round()
    assert told.renewals[0] == "lost" and told.fences == ["lost"]


def test_the_loop_renews_on_while_a_heal_cannot_be_sent(
        redis_server: RedisServer, redis_client: redis.Redis, tracker: ProcessTracker):
    space = _space(redis_server, tracker)
    publish_returns = threading.Event()
    sent: list[tuple[str, str]] = []

    def stuck_publish(profile: str, why: str) -> None:
        publish_returns.wait(60)
        sent.append((profile, why))

    told = Told()
    loop = ClusterLoop(space.config(), redis_server.client(), stuck_publish, hooks=[told])
    no_holdoff(redis_client)
    loop.start()
    try:
        poll_for(lambda: loop.leases.held("demo"), timeout=10, interval=0.02,
                 message="the loop to win slot 0 (its heal's publish is stuck)")
        assert loop._sender is not None
        # the heal after the win is being sent; more asked for meanwhile are merged
        redis_client.set(keys.cluster_paused("demo"), "1")
        poll_for(lambda: "paused" in loop._sender.waiting().get("demo", []),  # type: ignore[union-attr]
                 timeout=10, interval=0.02, message="a heal for the pause to wait its turn")
        before = told.renewals.count("ok")
        poll_for(lambda: told.renewals.count("ok") >= before + 5, timeout=30, interval=0.05,
                 message="renewals while the heal's publish is stuck")
        assert sent == []
        publish_returns.set()
        poll_for(lambda: len(sent) == 2, timeout=10, interval=0.02,
                 message="two sends once the publish returns")
        assert sent[0] == ("demo", "slot 0 won")
        assert sent[1][0] == "demo" and "paused" in sent[1][1].split(", ")
        assert loop._sender.waiting() == {}
    finally:
        publish_returns.set()
        loop.stop()


def test_heals_asked_for_while_one_is_sent_are_merged_per_profile():
    gate = threading.Event()
    entered = threading.Event()
    sent: list[tuple[str, str]] = []

    def send(profile: str, why: str) -> None:
        entered.set()
        gate.wait(30)
        sent.append((profile, why))

    sender = HealSender(send)
    sender.start()
    try:
        sender.request("a", "slot 0 won")
        assert entered.wait(10)
        # the send is held at the gate: requests that returned did not wait for it
        for why in ("lease lost", "paused", "lease lost"):
            sender.request("a", why)
        sender.request("b", "resumed")
        assert sent == [] and not gate.is_set()
        assert sender.waiting() == {"a": ["lease lost", "paused"], "b": ["resumed"]}
        gate.set()
        poll_for(lambda: len(sent) == 3, timeout=10, interval=0.01, message="three sends")
        assert sent == [("a", "slot 0 won"), ("a", "lease lost, paused"), ("b", "resumed")]
    finally:
        gate.set()
        sender.stop()


def test_a_send_that_fails_is_logged_and_the_next_one_still_goes(
        caplog: pytest.LogCaptureFixture):
    sent: list[str] = []

    def send(profile: str, why: str) -> None:
        if profile == "broken":
            raise ConnectionError("redis://:secret@example:6379 refused")
        sent.append(profile)

    sender = HealSender(send)
    sender.start()
    try:
        sender.request("broken", "slot 0 won")
        sender.request("fine", "slot 0 won")
        poll_for(lambda: sent == ["fine"], timeout=10, interval=0.01, message="the second send")
        assert "broken: heal not sent (slot 0 won)" in caplog.text
        assert "secret" not in caplog.text
    finally:
        sender.stop()
