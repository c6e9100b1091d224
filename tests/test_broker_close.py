"""A late use of a closed broker connection is a connection error, which Celery ignores
while it reconnects (``workerguard.tasks.closed_channel``), not an AttributeError that shuts
the guard worker down."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from tests.support import RedisServer
from workerguard.tasks import closed_channel


@pytest.fixture
def closed_with_a_request_in_flight(redis_server: RedisServer) -> Iterator[tuple[Connection, object]]:
    """A consumer connection holding one unacked request (``acks_late``) whose transport
    was released first, as when Celery drops a broken connection."""
    closed_channel.install()
    name = f"wg-close-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    with Connection(redis_server.url) as producer:
        producer.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key=name,
                                    declare=[queue], serializer="json")
    consumer = Connection(redis_server.url)
    message = consumer.default_channel.basic_get(name, no_ack=False)
    assert message is not None and consumer.default_channel.qos._delivered
    consumer._do_close_transport()
    yield consumer, message
    redis_server.client().delete(name)


def test_closing_it_restores_nothing_and_raises_nothing(
        closed_with_a_request_in_flight: tuple[Connection, object]) -> None:
    consumer, _ = closed_with_a_request_in_flight
    consumer.close()  # kombu alone: AttributeError: 'NoneType' object has no attribute 'hostname'


def test_acking_on_it_afterwards_is_a_connection_error_of_the_transport(
        closed_with_a_request_in_flight: tuple[Connection, object]) -> None:
    """The request finished after its connection was dropped: its ack cannot reach Redis
    (the request is redelivered after the visibility timeout)."""
    consumer, message = closed_with_a_request_in_flight
    consumer.close()
    with pytest.raises(redis.exceptions.ConnectionError, match="already closed") as raised:
        message.ack()  # type: ignore[attr-defined]
    assert isinstance(raised.value, consumer.connection_errors)
