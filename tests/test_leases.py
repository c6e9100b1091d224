"""The holder's side of cluster leases (store.leases) against a real redis-server: deadlines
from the send time, lease files the leash reads, WAIT-gated grants and renewals (with a
real replica and without one), a lost lease fenced at once, a Redis that does not answer
never raising and never moving a deadline, a restart taking its slots back, and the lease
client's absent retries."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import redis

from tests.blackhole import BlackHoleProxy
from tests.support import RedisServer, poll_for, start_redis
from workerguard.config.schema import Settings
from workerguard.ops.connect import lease_client
from workerguard.store import keys
from workerguard.store.lease import observe_epoch
from workerguard.store.leases import Leases, ProfileTiming
from workerguard.workers.leash import read_deadline

ID = "run-a:replid-a"
TIMING = ProfileTiming(slots=2, lease_seconds=15.0, renew_deadline=10.0)


class Clock:
    """An injected ``CLOCK_BOOTTIME``: moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _leases(client: redis.Redis, tmp_path: Path, clock: Clock, host: str = "h1",
            replicas: int = 0) -> tuple[Leases, str]:
    profile = f"p{uuid.uuid4().hex[:8]}"
    leases = Leases(client, host, tmp_path / host, replicas=replicas, clock=clock)
    leases.register(profile, TIMING)
    return leases, profile


def _claim(leases: Leases, profile: str) -> object:
    observe_epoch(leases.client, ID)
    return leases.claim(profile, "fp1", uuid.uuid4().hex, max_per_host=1, holdoff_ms=0,
                        identity=ID)


def test_a_grant_counts_from_its_send_time_and_its_lease_file_says_so(redis_client, tmp_path):
    clock = Clock()
    leases, profile = _leases(redis_client, tmp_path, clock)
    grant = _claim(leases, profile)
    [(slot, held)] = leases.held(profile).items()
    assert (grant.result, slot, held.token) == ("won", 0, grant.token)  # type: ignore[attr-defined]
    assert held.deadline == clock.now + TIMING.renew_deadline
    assert read_deadline(str(leases.lease_file(profile, 0))) == pytest.approx(held.deadline)
    assert redis_client.get(keys.cluster_slot(profile, 0)).decode() == leases.value(held)


def test_a_renewal_moves_the_deadline_from_its_send_time_and_resets_the_ttl(redis_client,
                                                                                tmp_path):
    clock = Clock()
    leases, profile = _leases(redis_client, tmp_path, clock)
    _claim(leases, profile)
    redis_client.pexpire(keys.cluster_slot(profile, 0), 2000)
    clock.now += 3
    result = leases.renew()
    assert result.outcomes == {(profile, 0): "ok"} and result.error is None
    assert result.sent == clock.now and result.redis_time is not None
    assert result.role == "master" and result.replid
    assert leases.held(profile)[0].deadline == clock.now + TIMING.renew_deadline
    assert read_deadline(str(leases.lease_file(profile, 0))) == pytest.approx(clock.now + 10)
    assert redis_client.pttl(keys.cluster_slot(profile, 0)) > 14_000


def test_a_lease_found_gone_or_taken_is_fenced_at_once(redis_client, tmp_path):
    clock = Clock()
    leases, profile = _leases(redis_client, tmp_path, clock)
    _claim(leases, profile)
    redis_client.set(keys.cluster_slot(profile, 0), "h2|99|other", px=15_000)  # another holder
    result = leases.renew()
    assert result.outcomes == {(profile, 0): "lost"}
    assert leases.held(profile) == {}
    assert read_deadline(str(leases.lease_file(profile, 0))) == 0.0  # the leash kills now
    assert redis_client.get(keys.cluster_slot(profile, 0)) == b"h2|99|other"  # never touched


def test_without_the_replicas_asked_for_nothing_is_granted_and_nothing_renewed(redis_client,
                                                                                tmp_path):
    clock = Clock()
    lone, profile = _leases(redis_client, tmp_path, clock, replicas=1)  # no replica exists
    grant = _claim(lone, profile)
    assert (grant.result, grant.reason) == ("refused", "not_replicated")  # type: ignore[attr-defined]
    assert lone.held(profile) == {}
    assert redis_client.get(keys.cluster_slot(profile, 0)) is None  # released at once

    held_elsewhere, _ = _leases(redis_client, tmp_path, clock, host="h1")
    held_elsewhere.register(profile, TIMING)
    _claim(held_elsewhere, profile)
    deadline = held_elsewhere.held(profile)[0].deadline
    held_elsewhere.replicas = 1  # the replica went away after the grant
    clock.now += 3
    result = held_elsewhere.renew()
    assert result.outcomes == {(profile, 0): "not_replicated"} and result.replicated == 0
    assert held_elsewhere.held(profile)[0].deadline == deadline  # the deadline did not move


def test_with_a_real_replica_grants_and_renewals_are_replicated(redis_server, tmp_path):
    replica = start_redis(tmp_path, extra=["--replicaof", "127.0.0.1", str(redis_server.port)])
    client = redis_server.client()
    try:
        poll_for(lambda: client.info("replication").get("connected_slaves") == 1
                 and client.info("replication").get("slave0", {}).get("state") == "online",
                 timeout=30, message="the replica to be online")
        clock = Clock()
        leases, profile = _leases(client, tmp_path, clock, replicas=1)
        assert _claim(leases, profile).result == "won"  # type: ignore[attr-defined]
        clock.now += 2
        result = leases.renew()
        assert result.outcomes == {(profile, 0): "ok"} and result.replicated == 1
        assert leases.held(profile)[0].deadline == clock.now + TIMING.renew_deadline
    finally:
        client.close()
        replica.stop()


def test_a_redis_that_does_not_answer_never_raises_and_never_moves_a_deadline(
        redis_server: RedisServer, tmp_path):
    proxy = BlackHoleProxy(redis_server.port)
    client = lease_client(proxy.url, Settings(), renew_period=0.5)
    try:
        clock = Clock()
        leases, profile = _leases(client, tmp_path, clock)
        _claim(leases, profile)
        deadline = leases.held(profile)[0].deadline
        proxy.black_hole()
        clock.now += 4
        result = leases.renew()
        assert result.outcomes == {(profile, 0): "error"} and "Timeout" in str(result.error)
        assert leases.held(profile)[0].deadline == deadline
        clock.now = deadline  # the leash fenced it: the slot is no longer held here
        assert [h.slot for h in leases.renew().expired] == [0]
        assert leases.held(profile) == {}
    finally:
        client.close()
        proxy.close()


def test_the_lease_client_never_retries_a_command(redis_server: RedisServer):
    proxy = BlackHoleProxy(redis_server.port)
    client = lease_client(proxy.url, Settings(), renew_period=0.3)
    try:
        assert client.ping()
        proxy.black_hole()
        opened = proxy.connections
        with pytest.raises(redis.exceptions.TimeoutError):
            client.ping()
        assert proxy.connections == opened  # no reconnect-and-resend behind the caller's back
        with pytest.raises(redis.exceptions.TimeoutError):  # a new connection: silence too
            client.ping()
        assert proxy.connections == opened + 1
    finally:
        client.close()
        proxy.close()


def test_a_restarted_guard_takes_back_its_slots_with_the_deadline_its_leash_has(redis_client,
                                                                                tmp_path):
    clock = Clock()
    before, profile = _leases(redis_client, tmp_path, clock)
    _claim(before, profile)
    deadline = before.held(profile)[0].deadline
    after = Leases(redis_client, "h1", tmp_path / "h1", clock=clock)
    after.register(profile, TIMING)
    [adopted] = after.adopt([profile])
    assert adopted.slot == 0 and adopted.deadline == pytest.approx(deadline)
    assert after.renew().outcomes == {(profile, 0): "ok"}
    other = Leases(redis_client, "h2", tmp_path / "h2", clock=clock)
    other.register(profile, TIMING)
    assert other.adopt([profile]) == []  # not its slot


def test_a_release_deletes_only_a_lease_still_ours(redis_client, tmp_path):
    clock = Clock()
    leases, profile = _leases(redis_client, tmp_path, clock)
    _claim(leases, profile)
    assert leases.release(profile, 0)
    assert redis_client.get(keys.cluster_slot(profile, 0)) is None
    assert read_deadline(str(leases.lease_file(profile, 0))) == 0.0
    assert not leases.release(profile, 0)
