"""Shut down this process's connections to a Redis that is no longer the primary.

When the Sentinels promote a replica because the old primary was cut off (a partition,
not a crash), every connection still open to the old primary is a black hole: no reply,
no RST. redis-py gives up on one after its socket timeout, but the Celery consumer waits
for its ``BRPOP`` reply in the event loop, where no socket timeout applies: measured,
a guard worker stayed deaf for 55 s after the failover (``tests/test_sentinel.py``,
the isolated primary). The Redis watch (``ops/primary_watch.py``) sees the new primary
within one reading; it then shuts down (``shutdown(2)``) every TCP connection of this
process to the old primary's address, so each client (the consumer, the result backend,
the lock client) gets an error at once and reconnects through the Sentinels.
``shutdown`` acts on the socket itself and wakes whoever waits on it; the descriptor
stays its owner's to close.
"""

from __future__ import annotations

import contextlib
import logging
import socket

import psutil

log = logging.getLogger("workerguard.ops.stale_connections")


def addresses(host: str, port: int) -> set[str]:
    """The IP addresses ``host`` stands for (itself if it cannot be resolved)."""
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except OSError:
        return {host}


def shut_down_connections_to(host: str, port: int) -> int:
    """Shut down this process's TCP connections to ``host:port``; how many."""
    targets = addresses(host, port)
    done = 0
    try:
        connections = psutil.Process().net_connections(kind="tcp")
    except (psutil.Error, OSError) as exc:
        log.warning("cannot list this process's connections: %s", exc)
        return 0
    for conn in connections:
        if not conn.raddr or conn.fd < 0:
            continue
        if conn.raddr.ip not in targets or conn.raddr.port != port:
            continue
        with contextlib.suppress(OSError):
            duplicate = socket.socket(fileno=socket.dup(conn.fd))
            try:
                duplicate.shutdown(socket.SHUT_RDWR)
                done += 1
            finally:
                duplicate.close()
    return done
