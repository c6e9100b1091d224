"""A Redis that answers but refuses writes (issue 19): NOREPLICAS from a primary with
``min-replicas-to-write 1`` and no replica (an isolated or newly promoted primary), and
READONLY from a replica (a demoted primary). The guard treats both like a Redis it cannot
reach: the request fails with "redis unreachable ... nothing was touched", no instance is
killed or started, and nothing crashes (``ops/write_refusal.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import redis

from tests.conftest import Workspace
from tests.support import RedisServer, free_port, poll_for, redis_in_tmpdir
from workerguard.errors import RedisUnavailable
from workerguard.ops.connect import redis_client
from workerguard.ops.write_refusal import WriteRefused, is_refusal
from workerguard.policy.guard import Guard
from workerguard.store import keys

REFUSING = {
    "NOREPLICAS": ["--min-replicas-to-write", "1", "--min-replicas-max-lag", "2"],
    "READONLY": ["--replicaof", "127.0.0.1", "1"],  # its primary never answers
}


@pytest.fixture(params=sorted(REFUSING))
def refusing(request: pytest.FixtureRequest) -> Iterator[tuple[str, RedisServer]]:
    """A real redis-server that answers reads and refuses every write with ``param``."""
    with redis_in_tmpdir("wg-refuse-", extra=REFUSING[request.param]) as server:
        yield request.param, server


@pytest.mark.parametrize(("reply", "refused"), [
    ("NOREPLICAS Not enough good replicas to write.", True),
    ("READONLY You can't write against a read only replica.", True),
    ("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", True),
    ("ERR Error running script (call to f_67ed): @user_script:1: @user_script: 1: "
     "-NOREPLICAS Not enough good replicas to write.", True),
    ("Error running script (call to f_67ed): @user_script:1: @user_script: 1: "
     "-READONLY You can't write against a read only replica.", True),
    ("WRONGTYPE Operation against a key holding the wrong kind of value", False),
    ("ERR unknown command 'NOREPLICAS'", False),
    ("Error running script (call to f_1): @user_script:1: NOREPLICAS in a user message", False),
])
def test_which_error_replies_are_refused_writes(reply: str, refused: bool):
    assert is_refusal(reply) is refused


def pipelined(client: redis.Redis) -> list[object]:
    pipe = client.pipeline()
    pipe.get("x")
    pipe.set("x", "1")
    return pipe.execute()


@contextlib.contextmanager
def guard_on(workspace: Workspace, server: RedisServer) -> Iterator[tuple[Guard, redis.Redis]]:
    """A guard of ``workspace`` and its client, on ``server``."""
    workspace.redis_url = server.url
    config = workspace.config()
    client = redis_client(server.url, config.settings)
    try:
        yield Guard(client, config), client
    finally:
        client.close()


def test_a_refused_write_is_a_connection_error_and_other_errors_stay_response_errors(
        workspace: Workspace, refusing: tuple[str, RedisServer]):
    code, server = refusing
    client = redis_client(server.url, workspace.config().settings)
    try:
        assert client.get("x") is None  # reads are served
        for write in (lambda: client.set("x", "1"),
                      lambda: client.eval("return redis.call('set', 'x', '1')", 0),
                      lambda: pipelined(client)):
            with pytest.raises(WriteRefused, match=code) as info:
                write()
            assert isinstance(info.value, redis.exceptions.ConnectionError)
        with pytest.raises(redis.exceptions.ResponseError) as other:
            client.execute_command("NO-SUCH-COMMAND")
        assert not isinstance(other.value, redis.exceptions.ConnectionError)
    finally:
        client.close()


def test_a_redis_refusing_writes_fails_every_request_clearly_and_kills_nothing(
        workspace: Workspace, refusing: tuple[str, RedisServer]):
    code, server = refusing
    workspace.add_profile(min_workers=1, max_workers=1)
    manual = [workspace.hand_started() for _ in range(2)]  # one more than max_workers
    poll_for(lambda: len(workspace.running()) == 2, message="both hand-started workers")
    with guard_on(workspace, server) as (guard, client):
        for action in (lambda: guard.enforce("demo"), lambda: guard.ensure("demo"),
                       lambda: guard.ensure("demo", force=True), lambda: guard.stop_all("demo")):
            with pytest.raises(RedisUnavailable, match="nothing was touched") as info:
                action()
            assert "WriteRefused" in str(info.value), str(info.value)
        # a sweep reads (served), finds nothing to do with adopted extras, and cannot
        # write what it saw: logged, not raised
        [swept] = guard.sweep()
        assert swept.contract()["action"] == "already_running", swept.contract()
        assert all(p.poll() is None for p in manual)
        assert sorted(workspace.running()) == sorted(p.pid for p in manual)
        assert client.get(keys.lock(workspace.host_id, "demo")) is None, code


def test_no_instance_is_started_while_redis_refuses_writes(
        workspace: Workspace, refusing: tuple[str, RedisServer]):
    _, server = refusing
    workspace.add_profile(min_workers=1, max_workers=1)
    with guard_on(workspace, server) as (guard, _), \
            pytest.raises(RedisUnavailable, match="nothing was touched"):
        guard.ensure("demo")
    assert workspace.running() == []


def test_an_unreachable_port_still_reads_as_unreachable(workspace: Workspace):
    config = workspace.config()
    client = redis_client(f"redis://127.0.0.1:{free_port()}/0", config.settings)
    try:
        with pytest.raises(redis.exceptions.ConnectionError) as info:
            client.set("x", "1")
        assert not isinstance(info.value, WriteRefused)
    finally:
        client.close()
