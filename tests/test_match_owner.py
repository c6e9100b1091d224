"""``match`` adopts only processes of the guard's own user unless ``match_users`` names
others: a root guard never adopts, and so never stops, another user's process that its
``match`` hits (issue 17). Real processes of uid 65534 (``nobody``), a real guard and Redis.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import redis

from tests.conftest import Workspace
from tests.support import alive, poll_for
from tests.test_identity import mode  # noqa: F401 (the fixture: both identity modes)
from workerguard.config import parse_config
from workerguard.errors import ConfigError

NOBODY = 65534

needs_root = pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0,
                                reason="starting a process of another uid needs root (Linux)")


@pytest.fixture
def foreign(workspace: Workspace) -> Iterator[subprocess.Popen[Any]]:
    """A process of uid 65534 whose command line the workspace's ``match`` hits (a shell
    with a child ``sleep``: ``$0`` and its arguments carry the match), ended by PID."""
    proc = workspace.tracker.popen(
        ["/bin/sh", "-c", "sleep 600; :", "sleeper.py", "--tag", workspace.token],
        user=NOBODY, group=NOBODY, extra_groups=[], cwd="/")
    poll_for(lambda: psutil.Process(proc.pid).children(), message="the foreign shell's child")
    assert psutil.Process(proc.pid).uids().real == NOBODY
    yield proc


def pids(result: Any) -> list[int]:
    return sorted(i.pid for i in result.running)


@needs_root
@pytest.mark.usefixtures("mode")
def test_a_root_guard_neither_adopts_nor_stops_another_users_matching_process(
        workspace: Workspace, redis_client: redis.Redis, foreign: subprocess.Popen[Any]) -> None:
    workspace.add_profile(stop_adopted=True)
    guard = workspace.guard(redis_client)
    started = guard.ensure("demo")
    assert started.action == "started"  # the foreign process is not an instance: one is started
    assert foreign.pid not in pids(started)
    # adopted, it would be one too many (max_workers 1, stop_adopted): a sweep would stop it
    for _ in range(2):
        [swept] = guard.sweep()
        assert swept.action == "already_running" and pids(swept) == list(started.started)
    status = guard.status("demo").profiles["demo"]
    assert [i["pid"] for i in status["instances"]] == list(started.started)
    stopped = guard.stop_all("demo")
    assert stopped.stopped == started.started
    assert foreign.poll() is None and alive(foreign.pid)
    assert all(alive(child.pid) for child in psutil.Process(foreign.pid).children())


@needs_root
@pytest.mark.usefixtures("mode")
def test_match_users_lets_the_guard_adopt_and_stop_that_users_process(
        workspace: Workspace, redis_client: redis.Redis, foreign: subprocess.Popen[Any]) -> None:
    workspace.add_profile(stop_adopted=True, match_users=["nobody"])
    guard = workspace.guard(redis_client)
    kept = guard.ensure("demo")
    assert kept.action == "already_running" and pids(kept) == [foreign.pid]
    [instance] = kept.running
    assert instance.origin == "adopted"
    assert foreign.pid in instance.tree and len(instance.tree) == 2  # the shell and its sleep
    stopped = guard.stop_all("demo")
    assert stopped.stopped == (foreign.pid,)
    poll_for(lambda: foreign.poll() is not None, message="the adopted process to end")


@needs_root
def test_by_uid_and_only_the_named_users(workspace: Workspace, redis_client: redis.Redis,
                                         foreign: subprocess.Popen[Any]) -> None:
    workspace.add_profile(match_users=[NOBODY])
    assert workspace.running() == [foreign.pid]
    workspace.profiles["demo"]["match_users"] = ["root"]  # the guard's own user, named
    assert workspace.running() == []
    mine = workspace.hand_started()
    poll_for(lambda: workspace.running() == [mine.pid], message="root's own process adopted")


BAD_USERS = [
    ({"match_users": ["no-such-user-wg17"]},
     "profile 'rpa': match_users: names no user of this host: 'no-such-user-wg17'"),
    ({"match_users": [-1]}, "profile 'rpa': match_users: must be a list of user names or uids"),
    ({"match_users": "nobody"}, "profile 'rpa': match_users: must be a list of user names or uids"),
    ({"match": None}, "profile 'rpa': match_users: is only used with match"),
]


@pytest.mark.skipif(sys.platform == "win32", reason="no uids on Windows")
@pytest.mark.parametrize(("change", "expected"), BAD_USERS, ids=[e for _, e in BAD_USERS])
def test_match_users_naming_no_user_is_refused_naming_the_field(change: dict[str, Any],
                                                                expected: str) -> None:
    profile: dict[str, Any] = {"command": ["x"], "match": "x", "match_users": ["nobody"], **change}
    profile = {k: v for k, v in profile.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        parse_config({"profiles": {"rpa": profile}}, "x.toml", environ={})
    assert expected in str(info.value)


@pytest.mark.skipif(sys.platform == "win32", reason="no uids on Windows")
def test_match_uids_default_to_the_guards_own() -> None:
    config = parse_config({"profiles": {
        "own": {"command": ["x"], "match": "x"},
        "named": {"command": ["x"], "match": "x", "match_users": ["nobody", 0, "root"]}}},
        "x.toml", environ={})
    assert config.profile("own").match_uids == frozenset({os.geteuid()})
    assert config.profile("named").match_uids == frozenset({NOBODY, 0})
