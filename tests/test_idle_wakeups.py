"""An idle guard worker's event loop wakes less (``workerguard.tasks.idle_wakeups``), and
a message is still taken the moment it is pushed. Real redis-server, real kombu event
loop (the one Celery's worker runs), no Celery worker: the guard's own tests
(test_celery, test_never_deaf) run the whole worker with it."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kombu.asynchronous import Hub
from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from tests.support import RedisServer, poll_for
from workerguard.ops.connect import socket_options
from workerguard.tasks import idle_wakeups
from workerguard.timing import GUARD_BRPOP_TIMEOUT


@pytest.fixture
def installed() -> Iterator[None]:
    idle_wakeups.install()
    yield
    idle_wakeups.uninstall()


def _interval(timer: Any) -> float:
    """The period of a ``call_repeatedly`` entry (the closure's ``secs``)."""
    fun = timer.fun
    return float(fun.__closure__[fun.__code__.co_freevars.index("secs")].cell_contents)


def test_the_binding_check_runs_every_10_s_and_brpop_waits_4_s(
        redis_server: RedisServer, installed: None):
    connection = Connection(redis_server.url, transport_options=socket_options(redis_server.url))
    hub = Hub()
    try:
        name = f"wg-idle-{uuid.uuid4().hex[:8]}"
        consumer = connection.Consumer([Queue(name, Exchange(name), name)], callbacks=[])
        consumer.consume()
        connection.transport.register_with_event_loop(connection.connection, hub)
        cycle = connection.transport.cycle
        timer = cycle._binding_expiry_tref
        assert _interval(timer) == idle_wakeups.BINDING_CHECK_INTERVAL
        live = [entry for _, _, entry in hub.timer.queue if not entry.canceled]
        assert timer in live
        assert not [e for e in live if getattr(e.fun, "__name__", "") == "maybe_refresh_binding_expiry"
                    and _interval(e) < idle_wakeups.BINDING_CHECK_INTERVAL]  # kombu's 1 s one is gone
        assert getattr(connection.default_channel, "brpop_timeout", None) == GUARD_BRPOP_TIMEOUT
    finally:
        hub.close()
        connection.release()


def test_a_message_pushed_to_an_idle_consumer_is_taken_at_once(
        redis_server: RedisServer, installed: None):
    """The event loop runs idle until a BRPOP ran out and was sent again, then a message
    is published: it is taken well within the timeout, not at its end."""
    options = socket_options(redis_server.url)
    connection = Connection(redis_server.url, transport_options=options)
    sender = Connection(redis_server.url, transport_options=options)
    hub = Hub()
    stop = threading.Event()
    taken: list[float] = []
    name = f"wg-idle-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name), name)

    def on_message(body: Any, message: Any) -> None:
        taken.append(time.monotonic())
        message.ack()

    def loop() -> None:
        while not stop.is_set():
            hub.run_once()

    thread = threading.Thread(target=loop, name="test-hub", daemon=True)
    try:
        consumer = connection.Consumer([queue], callbacks=[on_message])
        consumer.consume()
        connection.transport.register_with_event_loop(connection.connection, hub)
        thread.start()
        channel: Any = connection.default_channel
        poll_for(lambda: channel._brpop_sent_at is not None, 30, message="the first BRPOP")
        first = channel._brpop_sent_at
        poll_for(lambda: (channel._brpop_sent_at or first) > first, 30,
                 message="a BRPOP sent again after one ran out idle")
        sent = time.monotonic()
        sender.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key=name,
                                  declare=[queue])
        poll_for(lambda: taken, 30, message="the message taken")
        assert taken[0] - sent < GUARD_BRPOP_TIMEOUT / 2, f"taken after {taken[0] - sent:.2f} s"
    finally:
        stop.set()
        thread.join(10)
        hub.close()
        connection.release()
        sender.release()
