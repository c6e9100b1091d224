"""Queue and node names (contract): what a caller and a guard must agree on.

Every guard consumes ``workerguard`` (the shared default) and ``workerguard.<host_id>``;
sweeps go to the fanout exchange ``workerguard.broadcast``, so each guard receives
every sweep and sweeps only its own host.
"""

from __future__ import annotations

from kombu.common import Broadcast
from kombu.entity import Exchange, Queue

DEFAULT_QUEUE = "workerguard"
BROADCAST = "workerguard.broadcast"
SWEEP_TASK = "workerguard.sweep"


def host_queue(host_id: str) -> str:
    return f"{DEFAULT_QUEUE}.{host_id}"


def node_name(host_id: str) -> str:
    """The guard worker's Celery node name: one guard per host answers to it."""
    return f"workerguard@{host_id}"


def direct_queue(name: str) -> Queue:
    """Declared exactly as plain Celery declares a missing queue named in ``send_task``,
    so a sender that knows only the queue name and the guard agree on the binding."""
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def to_host(host_id: str) -> dict[str, str]:
    """``send_task`` options that deliver to one guard's own queue. Named by exchange and
    routing key: a plain ``queue=`` would keep the exchange of the task's route (the
    sweep's is the broadcast), and every guard would get it."""
    name = host_queue(host_id)
    return {"exchange": name, "routing_key": name}


def sweep_queue() -> Broadcast:
    return Broadcast(BROADCAST, routing_key=BROADCAST)
