"""The Redis watch (``ops/primary_watch.py``): a new primary and a jump of the Redis clock
are logged, recorded in the action log and counted; nothing is killed.

The failover itself, on a Sentinel bed, is in ``tests/test_sentinel.py``; here a single
Redis restarted on its port (a new ``run_id``), and a Redis under libfaketime whose clock
is stepped +30 s under a real guard worker.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tests.conftest import CeleryHarness, Workspace
from tests.sentinel_bed import libfaketime
from tests.support import RedisServer, alive, events, free_port, poll_for, short_tmpdir, start_redis
from tests.test_metrics import reachable, value
from workerguard.config import Settings, parse_config
from workerguard.ops.connect import redis_client
from workerguard.ops.metrics import GuardMetrics
from workerguard.ops.primary_watch import PrimaryWatch, Sample, clock_jump
from workerguard.store.events import EventLog

HOST = "watch-test"


def sample(local: float, redis_time: float, spread: float = 0.001) -> Sample:
    return Sample("run", "repl", redis_time, local, local, spread)


def test_a_clock_jump_is_a_disagreement_beyond_half_a_second_and_two_percent():
    base = sample(100.0, 1000.0)
    assert clock_jump(base, sample(102.0, 1002.4)) is None  # 0.4 s in 2 s: inside 0.5 + 0.04
    assert clock_jump(base, sample(102.0, 1002.6)) == pytest.approx(0.6)
    assert clock_jump(base, sample(200.0, 1102.4)) is None  # 2.4 s in 100 s: inside 0.5 + 2
    assert clock_jump(base, sample(102.0, 1032.0)) == pytest.approx(30.0)
    assert clock_jump(base, sample(102.0, 990.0)) == pytest.approx(-12.0)  # set back
    # a slow round trip widens the tolerance: the server read its clock somewhere in it
    assert clock_jump(base, sample(102.0, 1002.9, spread=0.5)) is None


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[list[RedisServer]]:
    servers: list[RedisServer] = []
    yield servers
    for server in servers:
        server.stop()


def test_a_restarted_redis_is_a_new_primary_logged_recorded_and_counted(
        restartable: list[RedisServer], caplog: pytest.LogCaptureFixture):
    directory = short_tmpdir("wg-watch-")
    try:
        restartable.append(start_redis(directory))
        port = restartable[0].port
        client = redis_client(restartable[0].url, Settings())
        config = parse_config({"guard": {"host_id": HOST}}, "x.toml", environ={})
        metrics = GuardMetrics(config, CollectorRegistry())
        watch = PrimaryWatch(client, HOST, [metrics], EventLog(client, HOST))

        def count(name: str) -> float | None:
            return metrics.registry.get_sample_value(name, {"host": HOST})

        assert count("workerguard_redis_failovers_total") == 0  # there from the start
        assert count("workerguard_redis_clock_jumps_total") == 0
        first = watch.check()
        assert first is not None and first.run_id and first.replid
        assert count("workerguard_broker_up") == 1
        restartable.pop().stop()
        assert watch.check() is None and count("workerguard_broker_up") == 0
        restartable.append(start_redis(directory, port=port))  # same address, new server
        with caplog.at_level(logging.WARNING, logger="workerguard.ops.primary_watch"):
            second = watch.check()
        assert second is not None and second.run_id != first.run_id
        assert count("workerguard_redis_failovers_total") == 1
        assert count("workerguard_redis_clock_jumps_total") == 0  # the same machine's clock
        assert count("workerguard_broker_up") == 1
        [line] = [r.getMessage() for r in caplog.records if "new primary" in r.getMessage()]
        assert f"run_id {str(first.run_id)[:8]} -> {str(second.run_id)[:8]}" in line
        [event] = events(client, "redis_failover")
        assert event[b"host"] == HOST.encode() and event[b"profile"] == b"-"
        assert event[b"requested_by"] == b"redis watch"
        assert watch.check() is not None and count("workerguard_redis_failovers_total") == 1
        client.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_new_primary_elsewhere_is_recorded_only_after_the_old_ones_connections_are_shut(
        restartable: list[RedisServer], monkeypatch: pytest.MonkeyPatch):
    """The record goes through the guard's general client: written while that client still
    held a connection to a cut-off old primary, it was acknowledged there and lost at the
    demotion (a CI run of the three isolations: 3 failovers counted, 2 recorded, no write
    error). So the old primary's connections are shut down first, and the client's next
    command asks the Sentinels. Here a Redis restarted on its port is the new primary, and
    the Sentinel pool's address is stood in for: old, then new."""
    from workerguard.ops import primary_watch

    order: list[str] = []
    addresses = iter([("10.0.0.1", 1), ("10.0.0.2", 2)])
    monkeypatch.setattr(primary_watch, "primary_address", lambda _client: next(addresses))

    def shut_down(host: str, port: int) -> int:
        order.append(f"shut {host}:{port}")
        return 1

    monkeypatch.setattr(primary_watch, "shut_down_connections_to", shut_down)

    class Recorded(EventLog):
        def record(self, *args: object, **kwargs: object) -> None:
            order.append(f"record {args[1]}")

    directory = short_tmpdir("wg-watch-")
    try:
        restartable.append(start_redis(directory))
        port = restartable[0].port
        client = redis_client(restartable[0].url, Settings())
        watch = PrimaryWatch(client, HOST, events=Recorded(client, HOST))
        assert watch.check() is not None and order == []
        restartable.pop().stop()
        restartable.append(start_redis(directory, port=port))
        assert watch.check() is not None
        assert order == ["shut 10.0.0.1:1", "record redis_failover"]
        client.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_replica_named_as_the_primary_is_said_once_and_its_end_once(
        restartable: list[RedisServer], caplog: pytest.LogCaptureFixture):
    """The Sentinels can name a replica for a minute (docs/operations.md, "A second
    partition right after a heal"): the watch says so once, with the primary it follows,
    compares nothing against it, and says once when a primary is named again."""
    directory = short_tmpdir("wg-watch-")
    for name in ("a", "b"):
        (directory / name).mkdir()
        restartable.append(start_redis(directory / name))
    primary, replica = restartable
    client = redis_client(replica.url, Settings())
    admin = replica.client()
    try:
        watch = PrimaryWatch(client, HOST)
        with caplog.at_level(logging.INFO, logger="workerguard.ops.primary_watch"):
            assert watch.check() is not None  # a primary of its own
            admin.replicaof("127.0.0.1", primary.port)
            assert watch.check() is None and watch.check() is None
            said = [(r.levelno, r.getMessage()) for r in caplog.records
                    if "is a replica" in r.getMessage()]
            assert said == [(logging.WARNING,
                             f"redis watch: the primary the Sentinels name is a replica (of "
                             f"127.0.0.1:{primary.port}): writes are refused until they name "
                             f"a primary")]
            admin.replicaof("NO", "ONE")
            assert watch.check() is not None and watch.check() is not None
        again = [r.getMessage() for r in caplog.records if "a primary again" in r.getMessage()]
        assert again == ["redis watch: the Sentinels name a primary again"]
    finally:
        client.close()
        admin.close()
        shutil.rmtree(directory, ignore_errors=True)


needs_faketime = pytest.mark.skipif(
    libfaketime() is None and not os.environ.get("CI"),
    reason="libfaketime not installed (Debian: apt install faketime; CI installs it)")


@pytest.fixture
def faked_redis(workspace: Workspace) -> Iterator[tuple[RedisServer, Path]]:
    """A redis-server whose clock follows the file it yields (libfaketime, re-read on
    every call): ``+0`` at first."""
    library = libfaketime()
    assert library is not None, "CI must install faketime (.ci/run does)"
    directory = short_tmpdir("wg-fake-")
    stamp = directory / "faketime"
    stamp.write_text("+0\n")
    env = {**os.environ, "LD_PRELOAD": str(library), "FAKETIME_TIMESTAMP_FILE": str(stamp),
           "FAKETIME_NO_CACHE": "1"}
    server = start_redis(directory, env=env)
    workspace.redis_url = server.url
    yield server, stamp
    workspace.tracker.end_all()  # the guard before its Redis
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@needs_faketime
@pytest.mark.celery
def test_a_redis_clock_step_is_detected_logged_counted_and_kills_nothing(
        workspace: Workspace, harness: CeleryHarness, faked_redis: tuple[RedisServer, Path]):
    server, stamp = faked_redis
    workspace.add_profile()
    port = free_port()
    harness.start_worker(WORKERGUARD_METRICS_PORT=str(port))
    [pid] = harness.call("workerguard.ensure", "demo").result["started"]
    host = workspace.host_id

    def metric(name: str) -> float | None:
        samples = reachable(port)
        return None if samples is None else value(samples, name, host=host)

    poll_for(lambda: metric("workerguard_broker_up") == 1, timeout=30,
             message="the Redis watch's first reading")
    assert metric("workerguard_redis_clock_jumps_total") == 0
    stamp.write_text("+30\n")  # the server's clock steps 30 s ahead
    poll_for(lambda: metric("workerguard_redis_clock_jumps_total") == 1, timeout=30,
             message="the clock step to be counted")
    client = server.client()
    [event] = events(client, "redis_clock_jump")
    jump = float(event[b"detail"].decode().split()[0])
    assert 29.0 < jump < 32.0, event
    assert "the server's clock jumped +" in harness.log_tail(100_000)
    offset = metric("workerguard_redis_clock_offset_seconds")
    assert offset is not None and offset > 29.0
    # nothing killed, nothing started, no failover, counted once
    assert metric("workerguard_redis_failovers_total") == 0
    assert alive(pid) and workspace.running() == [pid]
    assert harness.call("workerguard.ensure", "demo").result["action"] == "already_running"
    assert metric("workerguard_redis_clock_jumps_total") == 1
    assert len(events(client, "redis_clock_jump")) == 1
    client.close()
