"""The connections the consumer's event loop reads (BRPOP, pub/sub) fail; they never retry.

The guard's broker connections are made with ``retry_on_timeout`` (``tasks/app.py``): a
pooled connection that died silently is replaced at once, so the write that records a
just-popped request does not time out and lose it. redis-py turns that option into a
retry layer on every connection of the pool, and kombu's event-loop connections (BRPOP
and the pub/sub of broadcasts and ``control.ping``) come from a pool of their own made
with the same options.

There the retry is harmful. When Redis dies, the pub/sub socket turns readable (end of
file); kombu reads it expecting the connection error that makes Celery's consumer
reconnect. redis-py's retry layer swallows it instead: it reconnects, re-subscribes and
reads again, and a pub/sub read blocks with no timeout (``parse_response(block=True)``
ignores ``socket_timeout``). If Redis is already back, as after a quick restart, the read
waits on a healthy, silent connection for ever, inside the event loop: the guard worker
stays alive but takes no request, answers no ping and logs nothing (reproduced by
``tests/test_faults.py::test_redis_killed_and_restarted_empty_mid_request_…``: the worker's
main thread sat in ``sock.recv`` under ``kombu.transport.redis.Channel._receive``).

So the event-loop pool gets no retry: a dead connection raises, Celery's consumer drops
it and reconnects (redeclaring the queues and bindings an emptied Redis lost), and the
guard says so (``tasks/broker_watch.py``). Publishes, acks and the unacked records keep
their retry. The patch wraps a private kombu method, so it follows
``closed_channel.TESTED_KOMBU``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kombu.transport import redis as kombu_redis

from workerguard.tasks.closed_channel import applies

NO_RETRY: dict[str, Any] = {"retry_on_timeout": False, "retry": None, "retry_on_error": []}
"""Connection options that give a redis-py connection ``Retry(NoBackoff(), 0)``."""
PoolMaker = Callable[..., Any]
_ORIGINALS: dict[type, PoolMaker] = {
    channel: vars(channel)["_get_pool"]
    for channel in (kombu_redis.Channel, kombu_redis.SentinelChannel)}
"""kombu's own ``_get_pool`` of each channel class (Sentinel makes its pools its own way)."""


def _without_retry(original: PoolMaker) -> PoolMaker:
    def _get_pool(self: Any, asynchronous: bool = False) -> Any:
        pool = original(self, asynchronous)
        if asynchronous:  # the pool of BRPOP and pub/sub: read by the event loop
            pool.connection_kwargs.update(NO_RETRY)
        return pool

    return _get_pool


def install() -> bool:
    """Patch kombu's Redis channels (idempotent); False where the installed kombu is not
    one the patch applies to (``closed_channel.install`` warns about that once)."""
    if not applies():
        return False
    for channel, original in _ORIGINALS.items():
        setattr(channel, "_get_pool", _without_retry(original))  # noqa: B010 (a class of kombu)
    return True


def uninstall() -> None:
    """Put kombu's own methods back (tests)."""
    for channel, original in _ORIGINALS.items():
        setattr(channel, "_get_pool", original)  # noqa: B010
