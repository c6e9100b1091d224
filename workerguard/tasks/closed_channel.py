"""A broker connection that is already closed fails as a connection error, not an AttributeError.

kombu's Redis channel builds its connection pool from ``self.connection.client``, its
kombu ``Connection``. Once that connection's transport has been released the field is
None. A late use of the channel — closing it, which restores the unacked requests of
``acks_late``, or acking a request that finished meanwhile — then raises
``AttributeError: 'NoneType' object has no attribute 'hostname'``.

Celery's consumer ignores only connection errors while it drops a broken connection
(celery 5.7, ``Consumer.on_connection_error_after_connected``). The AttributeError
escaped, and the guard worker shut down instead of reconnecting (seen in
``tests/test_faults.py::test_redis_restarted_empty…`` under load).

Raised as redis-py's ``ConnectionError`` (one of the transport's connection errors),
Celery ignores it and reconnects. Requests left unacked are redelivered after the
visibility timeout, as after any lost connection. ``install`` patches kombu's channel
class once, for every broker URL (``redis://``, ``rediss://``, ``redis+socket://``).
``tests/test_broker_close.py`` reproduces the error and checks the fix.

The same defect upstream: celery/kombu#582 (a closed channel's late use raises
``AttributeError`` instead of a connection error). The patch replaces a private method,
so it is applied only to the kombu versions it was written and tested for
(``TESTED_KOMBU``); on any other version it is left out with one warning, and the
dependency bounds in ``pyproject.toml`` keep CI on the tested ones.
"""

from __future__ import annotations

import logging
from typing import Any

import kombu
import redis
from kombu.transport import redis as kombu_redis

log = logging.getLogger("workerguard.tasks")
TESTED_KOMBU = ((5, 4), (5, 8))
"""kombu versions (major, minor) from the first, up to but not including the second."""

_ORIGINAL = kombu_redis.Channel._connparams


def _connparams(self: Any, asynchronous: bool = False) -> Any:
    if self.connection.client is None:
        raise redis.exceptions.ConnectionError("the broker connection is already closed")
    return _ORIGINAL(self, asynchronous)


def applies(version: str = kombu.__version__) -> bool:
    """True for a kombu version the patch was written and tested for."""
    try:
        major_minor = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return TESTED_KOMBU[0] <= major_minor < TESTED_KOMBU[1]


_warned: list[bool] = []


def install() -> bool:
    """Patch kombu's Redis channel (idempotent); False, with one warning, where the
    installed kombu is not one the patch applies to."""
    if not applies():
        if not _warned:
            _warned.append(True)
            log.warning("kombu %s is outside %s..%s: its closed-channel fix is not applied "
                        "(see workerguard.tasks.closed_channel)", kombu.__version__,
                        ".".join(map(str, TESTED_KOMBU[0])), ".".join(map(str, TESTED_KOMBU[1])))
        return False
    kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]
    return True


def uninstall() -> None:
    """Put kombu's own method back (tests)."""
    kombu_redis.Channel._connparams = _ORIGINAL  # type: ignore[method-assign]
