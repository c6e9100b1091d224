"""A new Sentinel client asks first the Sentinel that answered last (``ops/sentinel_order.py``;
pure: no Sentinel is contacted)."""

from __future__ import annotations

import time

import pytest
import redis
from redis.sentinel import Sentinel

from workerguard.ops import sentinel_order

NODES = [("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26379)]


def order(manager: Sentinel) -> list[tuple[str, int]]:
    return [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
            for s in manager.sentinels]


def test_the_sentinel_that_answered_last_comes_first_in_every_new_client():
    sentinel_order.forget()
    try:
        assert order(sentinel_order.prefer(Sentinel(NODES))) == NODES  # no preference yet
        answered = Sentinel(NODES)
        # redis-py moves the Sentinel that answered to the front of its own client
        answered.sentinels[0], answered.sentinels[2] = answered.sentinels[2], answered.sentinels[0]
        sentinel_order.remember(answered)
        assert order(sentinel_order.prefer(Sentinel(NODES)))[0] == NODES[2]
        assert sorted(order(sentinel_order.prefer(Sentinel(NODES)))) == NODES  # none dropped
        other = [("10.9.9.9", 26379)]
        assert order(sentinel_order.prefer(Sentinel(other))) == other  # not one of them
        sentinel_order.remember(None)  # a client without Sentinels changes nothing
        assert order(sentinel_order.prefer(Sentinel(NODES)))[0] == NODES[2]
    finally:
        sentinel_order.forget()


def test_a_preference_no_reading_confirmed_for_a_while_is_dropped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A confirmation counts ``PREFERENCE_SECONDS``: after that the Sentinels are asked in
    the URL's order again (a Sentinel that went stale is not asked first for ever)."""
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    sentinel_order.forget()
    try:
        answered = Sentinel(NODES)
        answered.sentinels[0], answered.sentinels[1] = answered.sentinels[1], answered.sentinels[0]
        sentinel_order.remember(answered)
        now[0] += sentinel_order.PREFERENCE_SECONDS
        assert order(sentinel_order.prefer(Sentinel(NODES)))[0] == NODES[1]
        now[0] += 0.1
        assert order(sentinel_order.prefer(Sentinel(NODES))) == NODES
        sentinel_order.remember(answered)  # confirmed again: preferred again
        assert order(sentinel_order.prefer(Sentinel(NODES)))[0] == NODES[1]
    finally:
        sentinel_order.forget()


Address = tuple[str, int]


def _scripted(manager: Sentinel, answering: set[Address], asked: list[Address]) -> Sentinel:
    """Each Sentinel of ``manager`` answers (naming 10.0.0.9:6379) only if in ``answering``,
    else fails like one cut off; ``asked`` collects who was asked, in order."""
    for node in manager.sentinels:
        address = (node.connection_pool.connection_kwargs["host"],
                   node.connection_pool.connection_kwargs["port"])

        def masters(address: Address = address) -> dict[str, dict[str, object]]:
            asked.append(address)
            if address not in answering:
                raise redis.exceptions.TimeoutError("Timeout reading from socket")
            return {"wg": {"ip": "10.0.0.9", "port": 6379, "is_master": True,
                           "is_sdown": False, "is_odown": False, "num-other-sentinels": 2,
                           "config-epoch": 3}}

        node.sentinel_masters = masters  # type: ignore[method-assign]
    return manager


def test_a_client_made_before_a_failover_asks_first_the_sentinel_another_client_found():
    sentinel_order.forget()
    try:
        early_asked: list[Address] = []
        early = _scripted(sentinel_order.follow(Sentinel(NODES)), set(NODES), early_asked)
        assert early.discover_master("wg") == ("10.0.0.9", 6379)
        assert early_asked == [NODES[0]]
        # a partition cuts NODES[0] off; another client of the process finds NODES[2]
        cut_off = {NODES[2]}
        other_asked: list[Address] = []
        other = _scripted(sentinel_order.follow(Sentinel(list(reversed(NODES)))), cut_off,
                          other_asked)
        assert other.discover_master("wg") == ("10.0.0.9", 6379)
        # a discovery alone remembers nothing: the answer of a Sentinel that lags names a
        # demoted primary until a reading confirms it (the Redis watch, the cluster loop)
        assert order(sentinel_order.prefer(Sentinel(NODES)))[0] == NODES[0]
        sentinel_order.remember(other)  # a reading on 10.0.0.9 said role: master
        # the early client now asks NODES[2] first, not the one cut off
        early_asked.clear()
        _scripted(early, cut_off, early_asked)
        assert early.discover_master("wg") == ("10.0.0.9", 6379)
        assert early_asked == [NODES[2]]
        assert sentinel_order.follow(early) is early  # once per client
    finally:
        sentinel_order.forget()


def test_the_newest_epoch_client_puts_first_the_sentinel_whose_answer_it_took():
    from workerguard.ops.connect import NewestEpochSentinel

    sentinel_order.forget()
    try:
        asked: list[Address] = []
        manager = _scripted(sentinel_order.follow(NewestEpochSentinel(NODES)), {NODES[1]}, asked)
        assert manager.discover_master("wg") == ("10.0.0.9", 6379)
        assert sorted(asked) == NODES  # it asks every Sentinel
        sentinel_order.remember(manager)  # once confirmed: the one whose answer it took
        assert order(sentinel_order.prefer(Sentinel(NODES)))[0] == NODES[1]
    finally:
        sentinel_order.forget()
