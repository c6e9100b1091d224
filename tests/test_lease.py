"""Cluster slot leases (store.lease) against a real redis-server: every check of a claim,
owner-checked renewals and releases, tokens that only grow, and the timing inequality."""

from __future__ import annotations

import threading
import uuid

import pytest
import redis

from tests.support import poll_for
from workerguard.config.lease_timing import Timing
from workerguard.store import keys
from workerguard.store.lease import LeaseStore, lease_value, observe_epoch, parse_value

ID = "run-a:replid-a"


def _store(client: redis.Redis, slots: int = 2) -> LeaseStore:
    return LeaseStore(client, f"p{uuid.uuid4().hex[:8]}", slots)


def _claim(store: LeaseStore, host: str, **overrides: object):
    args: dict[str, object] = {"max_per_host": 1, "lease_ms": 15_000, "holdoff_ms": 0, "identity": ID}
    args.update(overrides)
    return store.claim(host, "fp1", uuid.uuid4().hex, **args)  # type: ignore[arg-type]


def _now_us(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1_000_000 + int(micros)


def test_no_slot_is_claimed_before_the_fleet_has_an_epoch_and_its_hold_off_passed(redis_client):
    store = _store(redis_client)
    assert _claim(store, "h1").result == "held_off"  # no epoch record: counts as a change
    assert observe_epoch(redis_client, ID).changed
    held = _claim(store, "h1", holdoff_ms=60_000)
    assert held.result == "held_off" and 0 < int(held.reason) <= 60_000
    assert not observe_epoch(redis_client, ID).changed  # the same primary: nothing restarts
    assert _claim(store, "h1").result == "won"


def test_a_new_primary_or_a_clock_jump_restarts_the_hold_off(redis_client):
    store = _store(redis_client)
    first = observe_epoch(redis_client, ID)
    other = observe_epoch(redis_client, "run-b:replid-b")
    assert other.changed and other.since_ms >= first.since_ms
    assert _claim(store, "h1").reason == "primary changed"  # this guard still sees the old one
    assert observe_epoch(redis_client, "run-b:replid-b", reason="clock").changed
    assert _claim(store, "h1", identity="run-b:replid-b", holdoff_ms=60_000).result == "held_off"


def test_slots_fill_lowest_first_one_per_host_and_no_more_than_n(redis_client):
    store = _store(redis_client, slots=2)
    observe_epoch(redis_client, ID)
    a, b = _claim(store, "h1"), _claim(store, "h2")
    assert (a.result, a.slot, b.result, b.slot) == ("won", 0, "won", 1)
    assert _claim(store, "h1").reason == "max_per_host"
    assert _claim(store, "h3").result == "lost"
    assert _claim(store, "h1", max_per_host=2).result == "lost"  # allowed, but nothing vacant
    holders = store.holders()
    assert {slot: h[0] for slot, h in holders.items()} == {0: "h1", 1: "h2"}
    assert all(0 < h[3] <= 15_000 for h in holders.values())


def test_tokens_strictly_increase_and_are_not_below_the_redis_clock(redis_client):
    store = _store(redis_client, slots=1)
    observe_epoch(redis_client, ID)
    tokens = []
    for _ in range(5):
        before = _now_us(redis_client)
        grant = _claim(store, "h1")
        assert grant.result == "won" and grant.token >= before
        tokens.append(grant.token)
        [(host, token, iid, _)] = store.holders().values()
        assert store.release(0, lease_value(host, token, iid))
    assert tokens == sorted(set(tokens))
    redis_client.set(keys.cluster_token(store.profile), str(tokens[-1] + 10**12))  # a counter ahead of TIME
    assert _claim(store, "h1").token == tokens[-1] + 10**12 + 1


def test_renewals_and_releases_only_touch_a_lease_that_is_still_ours(redis_client):
    store = _store(redis_client, slots=1)
    observe_epoch(redis_client, ID)
    grant = _claim(store, "h1", lease_ms=300)
    [(host, token, iid, _)] = store.holders().values()
    mine = lease_value(host, token, iid)
    assert store.renew({0: mine}, 300) == {0: True}
    assert store.renew({0: lease_value(host, token, "someone-else")}, 300) == {0: False}
    assert not store.release(0, lease_value("h2", token, iid))
    poll_for(lambda: not store.holders(), timeout=10, interval=0.02, message="the lease to expire")
    assert store.renew({0: mine}, 300) == {0: False}  # lost: a renewal never re-creates it
    assert store.holders() == {} and grant.slot == 0


def test_a_slots_info_is_written_only_by_its_holder_and_lives_as_long_as_the_lease(redis_client):
    store = _store(redis_client, slots=1)
    observe_epoch(redis_client, ID)
    _claim(store, "h1", lease_ms=1500)
    [(host, token, iid, _)] = store.holders().values()
    assert not store.publish_info(0, "h2", token, 4242, 77, 0.0)  # not the holder
    assert not store.publish_info(0, host, token - 1, 4242, 77, 0.0)  # an older grant
    assert store.infos() == {}
    before_ms = _now_us(redis_client) // 1000
    assert store.publish_info(0, host, token, 4242, 77, age_seconds=60.0)
    [(slot, info)] = store.infos().items()
    assert (slot, info.host, info.token, info.pid, info.start) == (0, host, token, 4242, 77)
    assert before_ms - 60_000 - 50 <= info.started_ms <= before_ms - 60_000 + 1000
    key = keys.cluster_info(store.profile, 0)
    # the lease's first: both expire together, and a millisecond may pass between the reads
    lease_pttl = redis_client.pttl(keys.cluster_slot(store.profile, 0))
    assert 0 < redis_client.pttl(key) <= lease_pttl
    store.publish_info(0, host, token, 4242, 77, age_seconds=90.0)  # the same instance, again
    assert store.infos()[0].started_ms == info.started_ms  # keeps its start
    for _ in range(3):  # renewals extend it with the lease, past the TTL it was written with
        poll_for(lambda: redis_client.pttl(key) < 1000, timeout=10, message="time to pass")
        assert store.renew({0: lease_value(host, token, iid)}, 1500) == {0: True}
        assert redis_client.pttl(key) > 1400
    assert store.infos()[0].pid == 4242
    poll_for(lambda: not store.infos() and not store.holders(), timeout=10,
             message="the info to go with the lease")


def test_a_claim_is_refused_when_paused_for_another_spec_or_outside_its_clock_window(redis_client):
    store = _store(redis_client)
    observe_epoch(redis_client, ID)
    assert _claim(store, "h1").result == "won"  # writes the spec: fp1
    assert store.claim("h2", "fp2", uuid.uuid4().hex, max_per_host=1, lease_ms=15_000, holdoff_ms=0,
                       identity=ID).reason == "spec_mismatch"
    now_ms = _now_us(redis_client) // 1000
    assert _claim(store, "h2", window_ms=(now_ms - 60_000, now_ms - 30_000)).reason == "clock"
    redis_client.set(keys.cluster_paused(store.profile), "1")
    assert _claim(store, "h2").reason == "paused"


def test_concurrent_claimers_win_exactly_n_distinct_slots(redis_server):
    profile = f"p{uuid.uuid4().hex[:8]}"
    observe_epoch(redis_server.client(), ID)
    grants = []
    lock = threading.Lock()

    def claimer(host: str) -> None:
        store = LeaseStore(redis_server.client(), profile, 3)
        grant = _claim(store, host)
        with lock:
            grants.append(grant)

    threads = [threading.Thread(target=claimer, args=(f"h{i}",)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    won = [g for g in grants if g.result == "won"]
    assert len(grants) == 12 and len(won) == 3
    assert sorted(g.slot for g in won) == [0, 1, 2]
    assert len({g.token for g in won}) == 3


def test_lease_values_parse_back():
    assert parse_value(lease_value("h1", 17, "abc")) == ("h1", 17, "abc")
    assert parse_value("garbage") is None
    assert parse_value("h|x|i") is None


@pytest.mark.parametrize(("timing", "margin"), [
    (Timing(15, 10, 2, 1, 0.01), 3.79),   # the design's defaults (Kubernetes' figures)
    (Timing(3, 2, 0.5, 0.5, 0.01), 0.455),  # the test bed's timings
])
def test_the_timing_inequality_and_its_margin(timing: Timing, margin: float):
    assert timing.margin() == pytest.approx(margin, abs=0.01)
    assert timing.problems(socket_timeout=timing.renew_period) == []


def test_unsafe_timings_are_named_with_their_numbers():
    lines = Timing(10, 10, 2, 1, 0.01).problems(socket_timeout=2)
    assert len(lines) == 1 and lines[0].startswith("lease_seconds 10 must exceed") and "margin -" in lines[0]
    [line] = Timing(15, 4, 2, 1, 0.01).problems(socket_timeout=2)
    assert line.startswith("renew_deadline 4 must be at least 2*renew_period") and "= 6 s" in line
