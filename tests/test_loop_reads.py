"""A broker connection read by the event loop fails when Redis restarts; it never blocks
(``workerguard.tasks.loop_reads``). Real redis-server, real kombu, no Celery worker."""

from __future__ import annotations

import contextlib
import shutil
import signal
import threading
import uuid
from collections.abc import Iterator

import pytest
from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from tests.support import RedisServer, poll_for, short_tmpdir, start_redis
from workerguard.ops.connect import socket_options
from workerguard.tasks import loop_reads


@pytest.fixture
def restartable() -> Iterator[list[RedisServer]]:
    """A redis-server of this test's own; the test appends its restarts."""
    directory = short_tmpdir("wg-loop-")
    servers = [start_redis(directory)]
    yield servers
    for server in servers:
        server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(params=["patched", "kombu alone"])
def patched(request: pytest.FixtureRequest) -> Iterator[bool]:
    if request.param == "patched":
        assert loop_reads.install()
    else:
        loop_reads.uninstall()
    yield request.param == "patched"
    loop_reads.install()


def test_a_broadcast_consumer_gets_a_connection_error_after_a_quick_redis_restart(
        restartable: list[RedisServer], patched: bool):
    """The guard's transport options (``retry_on_timeout`` among them), a consumer of a
    fanout queue (pub/sub, as the guard's broadcast and ``control.ping``). Redis is
    SIGKILLed and restarted at once: the next read must raise the connection error that
    makes Celery reconnect. Without the patch, redis-py's retry reconnects the pub/sub
    connection and blocks reading it, with no timeout: the event loop is stuck."""
    first = restartable[0]
    options = {**socket_options(first.url), "retry_on_timeout": True}
    name = f"wg-loop-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name, type="fanout"))
    connection = Connection(first.url, transport_options=options)
    consumer = connection.Consumer([queue], callbacks=[lambda body, message: None])
    consumer.consume()
    for _ in range(3):  # subscribes (its confirmation is an event), then waits
        with contextlib.suppress(TimeoutError):
            connection.drain_events(timeout=0.3)
    assert getattr(connection.default_channel, "_in_listen", None)  # subscribed
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(5)
    restartable.append(start_redis(first.directory, port=first.port))
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            connection.drain_events(timeout=2)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    threading.Thread(target=read, daemon=True).start()
    if not patched:  # the defect the patch is for, shown with kombu and redis-py alone
        with pytest.raises(AssertionError):
            poll_for(lambda: outcome, timeout=10, message="the read to end")
        return  # the daemon thread stays blocked in recv until the test process exits
    poll_for(lambda: outcome, timeout=30, message="the read to end")
    assert isinstance(outcome[0], connection.connection_errors), outcome
    connection.release()
