"""The guard worker's consumer reconnects to its broker within seconds, not half a minute.

Celery's consumer reconnects through kombu's ``Connection.ensure_connection`` with
kombu's default pauses between rounds: 2, 4, 6 ... s, up to 30 s. After a Redis Sentinel
failover (about 2 s with ``down-after-milliseconds 1000``) the round at 6 s mostly
succeeds, but a round that meets the new primary before it takes writes pushes the next
to 12 s, then 20 s: a guard answered its first ping 16.8 s after the primary died, in 1
of 30 rounds of ``tests/test_sentinel.py``. This consumer (``worker_consumer``,
``tasks/app.py``) passes the shorter pauses of ``timing.BROKER_RECONNECT_PAUSES``; one
more connection attempt every few seconds of an outage costs nothing.
"""

from __future__ import annotations

import functools
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

from workerguard.timing import BROKER_RECONNECT_PAUSES

CONSUMER = "workerguard.tasks.reconnect:Consumer"


class Consumer(CeleryConsumer):  # type: ignore[misc]
    def ensure_connected(self, conn: Any) -> Any:
        start, step, most = BROKER_RECONNECT_PAUSES
        conn.ensure_connection = functools.partial(
            type(conn).ensure_connection, conn,
            interval_start=start, interval_step=step, interval_max=most)
        try:
            return super().ensure_connected(conn)
        finally:
            del conn.ensure_connection  # kombu's own method again
