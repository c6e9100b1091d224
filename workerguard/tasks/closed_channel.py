"""A broker connection that is already closed fails as a connection error, not an AttributeError.

kombu's Redis channel builds its connection pool from ``self.connection.client``, its
kombu ``Connection``. Once that connection's transport has been released the field is
None. A late use of the channel — closing it, which restores the unacked requests of
``acks_late``, or acking a request that finished meanwhile — then raises
``AttributeError: 'NoneType' object has no attribute 'hostname'``.

Celery's consumer ignores only connection errors while it drops a broken connection
(celery 5.7, ``Consumer.on_connection_error_after_connected``). The AttributeError
escaped, and the guard worker shut down instead of reconnecting. This was seen in
``tests/test_faults.py::test_redis_restarted_empty…`` in 1 run of 7 under load, and once
in a full CI run.

Raised as redis-py's ``ConnectionError`` (one of the transport's connection errors),
Celery ignores it and reconnects. Requests left unacked are redelivered after the
visibility timeout, as after any lost connection. ``install`` patches kombu's channel
class once, for every broker URL (``redis://``, ``rediss://``, ``redis+socket://``).
``tests/test_broker_close.py`` reproduces the error and checks the fix.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis

_ORIGINAL = kombu_redis.Channel._connparams


def _connparams(self: Any, asynchronous: bool = False) -> Any:
    if self.connection.client is None:
        raise redis.exceptions.ConnectionError("the broker connection is already closed")
    return _ORIGINAL(self, asynchronous)


def install() -> None:
    """Patch kombu's Redis channel (idempotent)."""
    kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]
