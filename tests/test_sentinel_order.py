"""A new Sentinel client asks first the Sentinel that answered last (``ops/sentinel_order.py``;
pure: no Sentinel is contacted)."""

from __future__ import annotations

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
