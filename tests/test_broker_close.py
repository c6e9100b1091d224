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

from tests.support import RedisServer, poll_for
from workerguard.tasks import closed_channel


@pytest.fixture
def patched() -> Iterator[None]:
    """The fix applied for one test, kombu restored afterwards."""
    assert closed_channel.install()  # the kombu CI installs is one it applies to
    yield
    closed_channel.uninstall()


@pytest.fixture
def unpatched() -> Iterator[None]:
    closed_channel.uninstall()
    yield
    closed_channel.uninstall()


def _in_flight(redis_server: RedisServer) -> Iterator[tuple[Connection, object, str]]:
    """A consumer connection holding one unacked request (``acks_late``) whose transport
    was released first, as when Celery drops a broken connection."""
    name = f"wg-close-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    with Connection(redis_server.url) as producer:
        producer.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key=name,
                                    declare=[queue], serializer="json")
    consumer = Connection(redis_server.url)
    message = consumer.default_channel.basic_get(name, no_ack=False)
    assert message is not None and consumer.default_channel.qos._delivered
    consumer._do_close_transport()
    yield consumer, message, name
    redis_server.client().delete(name)


@pytest.fixture
def closed_with_a_request_in_flight(patched: None, redis_server: RedisServer
                                    ) -> Iterator[tuple[Connection, object, str]]:
    yield from _in_flight(redis_server)


def test_kombu_alone_raises_the_attribute_error_the_fix_is_for(unpatched: None, redis_server: RedisServer):
    for consumer, _, _ in _in_flight(redis_server):
        with pytest.raises(AttributeError, match="hostname"):
            consumer.close()


def test_the_fix_applies_only_to_the_kombu_versions_it_was_tested_with():
    assert closed_channel.applies("5.7.0")
    assert not closed_channel.applies("5.8.0")
    assert not closed_channel.applies("6.0")
    assert not closed_channel.applies("5.3.9")
    assert not closed_channel.applies("garbage")


def test_closing_it_raises_nothing_and_the_request_is_redelivered(
        closed_with_a_request_in_flight: tuple[Connection, object, str], redis_server: RedisServer) -> None:
    consumer, _, name = closed_with_a_request_in_flight
    consumer.close()  # kombu alone: AttributeError: 'NoneType' object has no attribute 'hostname'
    with Connection(redis_server.url, transport_options={"visibility_timeout": 1}) as other:
        channel = other.default_channel

        def redelivered() -> object:
            channel.qos.restore_visible(num=10)  # what a guard's consumer loop runs
            return channel.basic_get(name, no_ack=True)

        message = poll_for(redelivered, timeout=30, interval=0.2,
                           message="the unacked request to be redelivered")
        assert message.payload == {"n": 1}  # type: ignore[attr-defined]


def test_acking_on_it_afterwards_is_a_connection_error_of_the_transport(
        closed_with_a_request_in_flight: tuple[Connection, object, str]) -> None:
    """The request finished after its connection was dropped: its ack cannot reach Redis
    (the request is redelivered after the visibility timeout)."""
    consumer, message, _ = closed_with_a_request_in_flight
    consumer.close()
    with pytest.raises(redis.exceptions.ConnectionError, match="already closed") as raised:
        message.ack()  # type: ignore[attr-defined]
    assert isinstance(raised.value, consumer.connection_errors)
