"""The process layer against real processes: discover, spawn, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import Workspace
from tests.support import SLEEPER, alive, can_reuse_pids, poll_for, start_with_pid
from tests.test_identity import mode  # noqa: F401 (the fixture: both identity modes)
from workerguard.config import Profile
from workerguard.workers.logs import log_path
from workerguard.workers.model import Instance
from workerguard.workers.spawn import SpawnFailure, child_environment
from workerguard.workers.stop import stop_instances


def sleeper_profile(ws: Workspace, *extra: str, **overrides: Any) -> Profile:
    ws.add_profile("demo", *extra, **overrides)
    return ws.config().profile("demo")


def spawn(ws: Workspace, profile: Profile, count: int = 1,
          ) -> tuple[list[Instance], list[SpawnFailure]]:
    outcome = ws.table().spawn(profile, count)
    return outcome.started, outcome.failures


def discover(ws: Workspace, profile: Profile) -> list[Instance]:
    return ws.table().discover([profile], [profile]).instances[profile.name]


def children_of(pid: int) -> list[int]:
    return [c.pid for c in psutil.Process(pid).children(recursive=True)]


def test_a_worker_with_children_is_one_instance_and_stop_ends_the_tree(workspace: Workspace):
    profile = sleeper_profile(workspace, "--children", "2")
    spawned, failures = spawn(workspace, profile, 1)
    assert not failures and len(spawned) == 1
    root = spawned[0].pid
    poll_for(lambda: len(children_of(root)) == 2, message="children")
    kids = children_of(root)
    [instance] = discover(workspace, profile)
    assert instance.pid == root
    assert set(instance.tree) == {root, *kids}
    outcome = workspace.table().stop([instance], "SIGTERM", 3)
    assert outcome.stopped == [root]
    for pid in [root, *kids]:
        assert not alive(pid)


def test_decoys_with_similar_names_are_never_instances(workspace: Workspace):
    profile = sleeper_profile(workspace)
    decoys = [
        workspace.tracker.sleeper("--tag", workspace.token + "x"),  # same script, other tag
        workspace.tracker.popen([sys.executable, "-c", f"import time; time.sleep(600)  # {SLEEPER}"]),
    ]
    # a process with the full mark of another host is not ours either
    foreign_env = {**os.environ, "WORKERGUARD_PROFILE": "demo", "WORKERGUARD_HOST_ID": "elsewhere"}
    decoys.append(workspace.tracker.popen([sys.executable, str(SLEEPER), "--tag", "other"],
                                          env=foreign_env))
    poll_for(lambda: all(psutil.Process(d.pid).cmdline()[-1:] != [] for d in decoys))
    assert discover(workspace, profile) == []
    assert all(d.poll() is None for d in decoys)


def test_hand_started_worker_is_found_by_match(workspace: Workspace):
    profile = sleeper_profile(workspace)
    manual = workspace.hand_started()
    found = poll_for(lambda: discover(workspace, profile), message="match")
    assert [i.pid for i in found] == [manual.pid]
    assert not found[0].spawned


def test_spawned_worker_is_detached_marked_and_gets_a_clean_environment(workspace: Workspace,
                                                                        monkeypatch):
    monkeypatch.setenv("CELERY_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("_MP_FORK_LOGLEVEL_", "10")
    profile = sleeper_profile(workspace, env={"RPA_MODE": "prod"})
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a Celery pool child
    try:
        [spawned], failures = spawn(workspace, profile, 1)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert failures == []
    proc = psutil.Process(spawned.pid)
    env = proc.environ()
    assert env["WORKERGUARD_PROFILE"] == "demo"
    assert env["WORKERGUARD_HOST_ID"] == workspace.host_id
    assert env["WORKERGUARD_INSTANCE"] == spawned.instance_id
    assert env["RPA_MODE"] == "prod"
    assert not {"CELERY_LOG_LEVEL", "_MP_FORK_LOGLEVEL_", "PYTHONPATH"} & set(env)
    assert os.getsid(spawned.pid) == spawned.pid  # its own session
    log = log_path(workspace.home / "logs", "demo", 0)
    poll_for(lambda: "SIGINT=<built-in function default_int_handler>" in log.read_text(),
             message="sleeper to report a default SIGINT handler")
    os.kill(spawned.pid, signal.SIGINT)  # SIGINT works again: the worker exits
    poll_for(lambda: not psutil.pid_exists(spawned.pid), message="worker to exit on SIGINT")


def test_a_worker_that_dies_at_start_is_reported_with_code_and_log(workspace: Workspace):
    profile = sleeper_profile(workspace, "--exit-code", "3")
    spawned, failures = spawn(workspace, profile, 1)
    assert spawned == []
    [failure] = failures
    assert failure.returncode == 3
    assert "failing with 3" in failure.log_tail
    assert "exited with code 3" in failure.describe()
    assert failure.pid is not None and not psutil.pid_exists(failure.pid)  # reaped


def test_a_command_that_does_not_exist_is_a_failure_not_a_crash(workspace: Workspace):
    profile = sleeper_profile(workspace, command=["/nonexistent/worker"])
    spawned, failures = spawn(workspace, profile, 1)
    assert spawned == [] and "could not start" in failures[0].describe()


def test_an_exiting_spawned_worker_never_stays_a_zombie(workspace: Workspace):
    profile = sleeper_profile(workspace)
    [spawned], _ = spawn(workspace, profile, 1)
    os.kill(spawned.pid, signal.SIGTERM)
    poll_for(lambda: not psutil.pid_exists(spawned.pid), message="the exit watcher to reap it")


def test_a_worker_that_ignores_sigterm_is_killed_after_stop_timeout(workspace: Workspace):
    profile = sleeper_profile(workspace, "--ignore-term", "--children", "1", stop_timeout=0.5)
    [spawned], _ = spawn(workspace, profile, 1)
    poll_for(lambda: children_of(spawned.pid), message="child")
    [instance] = discover(workspace, profile)
    outcome = workspace.table().stop([instance], "SIGTERM", 0.5)
    assert outcome.stopped == [spawned.pid]
    assert set(outcome.killed) == set(instance.tree)
    assert outcome.survivors == []


def kill_and_reap(pid: int, parent: subprocess.Popen[Any] | None = None) -> None:
    """Kill ``pid`` and wait until its pid is free (``parent``: ours to reap)."""
    psutil.Process(pid).kill()
    if parent is not None:
        parent.wait()
    poll_for(lambda: not os.path.exists(f"/proc/{pid}"), message=f"pid {pid} to be reaped")


@pytest.mark.skipif(not can_reuse_pids(), reason="needs root and ns_last_pid (Linux)")
@pytest.mark.parametrize("reused", ["member", "main"])
def test_a_pid_of_the_tree_reused_by_a_bystander_is_never_signalled_by_stop(
        workspace: Workspace, mode: str, reused: str):  # noqa: F811
    """The real tree shape: a discovered instance with children; one of its processes
    exits and a bystander gets that exact pid; then the instance is stopped as
    discovered. Every process of the instance ends; the bystander never gets a signal.

    ``member``: a child of a spawned instance. ``main``: the main process of an adopted
    instance (a spawned one leads its session, and the kernel keeps a session leader's
    pid while any process of its session lives: it cannot be reused under the tree)."""
    profile = sleeper_profile(workspace, "--children", "2", "--reap", stop_timeout=2)
    hand = None
    if reused == "member":
        [spawned], _ = spawn(workspace, profile, 1)
        main = spawned.pid
    else:
        hand = workspace.hand_started("--children", "2", "--reap")
        main = hand.pid
    poll_for(lambda: len(children_of(main)) == 2, message="children")
    [instance] = discover(workspace, profile)
    assert instance.pid == main and len(instance.members) == 3
    assert instance.origin == ("spawned" if reused == "member" else "adopted")
    victim = main if reused == "main" else children_of(main)[0]
    rest = [pid for pid in instance.tree if pid != victim]
    kill_and_reap(victim, hand if reused == "main" else None)
    bystander = start_with_pid(workspace.tracker, victim,
                               [sys.executable, str(SLEEPER), "--tag", "bystander"])
    outcome = workspace.table().stop([instance], "SIGTERM", 2)
    assert bystander.poll() is None, "the bystander holding a reused pid got a signal"
    assert victim not in outcome.killed
    for pid in rest:
        poll_for(lambda: not alive(pid), message=f"pid {pid} of the instance to end")  # noqa: B023


@pytest.mark.skipif(not can_reuse_pids(), reason="needs root and ns_last_pid (Linux)")
def test_a_member_pid_reused_while_the_stop_waits_is_never_killed(workspace: Workspace,
                                                                   mode: str):  # noqa: F811
    """The stop has begun (SIGTERM sent, ignored: it waits ``stop_timeout``); a child of
    the instance exits and a bystander gets its pid before the SIGKILL phase: the
    SIGKILL reaches every process of the instance and never the bystander."""
    profile = sleeper_profile(workspace, "--children", "2", "--reap", "--ignore-term",
                              stop_timeout=10)
    [spawned], _ = spawn(workspace, profile, 1)
    poll_for(lambda: len(children_of(spawned.pid)) == 2, message="children")
    [instance] = discover(workspace, profile)
    victim, other = children_of(spawned.pid)
    outcomes: list[Any] = []
    stopping = threading.Thread(target=lambda: outcomes.append(
        workspace.table().stop([instance], "SIGTERM", 10)))
    stopping.start()
    try:
        kill_and_reap(victim)
        bystander = start_with_pid(workspace.tracker, victim,
                                   [sys.executable, str(SLEEPER), "--tag", "bystander"])
        assert stopping.is_alive(), "the stop must still be in its grace period"
    finally:
        stopping.join(60)
    [outcome] = outcomes
    assert bystander.poll() is None, "the bystander holding a reused pid was killed"
    assert victim not in outcome.killed and {spawned.pid, other} <= set(outcome.killed)
    assert not alive(spawned.pid) and not alive(other)


@pytest.mark.skipif(not can_reuse_pids(), reason="needs root and ns_last_pid (Linux)")
def test_a_pid_of_a_leftover_reused_by_a_bystander_is_never_killed_by_clean(
        workspace: Workspace, mode: str):  # noqa: F811
    """What is left of an instance whose main process ended is killed (``clean``) as
    discovered; one of its processes exits and a bystander gets its pid first."""
    profile = sleeper_profile(workspace, "--children", "2", "--reap", start_seconds=0.3)
    [spawned], _ = spawn(workspace, profile, 1)
    poll_for(lambda: len(children_of(spawned.pid)) == 2, message="children")
    kids = children_of(spawned.pid)
    table = workspace.table()
    kill_and_reap(spawned.pid)  # the main process ends: its children are what is left
    [left] = table.discover([profile], [profile]).leftovers
    assert sorted(left.pids) == sorted(kids)
    kill_and_reap(kids[0])
    bystander = start_with_pid(workspace.tracker, kids[0],
                               [sys.executable, str(SLEEPER), "--tag", "bystander"])
    killed = table.clean([left])
    assert bystander.poll() is None, "the bystander holding a reused pid was killed"
    assert kids[0] not in killed or left.cgroup is not None
    poll_for(lambda: not alive(kids[1]), message="the rest of the leftover to end")


def test_an_already_gone_process_counts_as_stopped(tmp_path: Path):
    gone = Instance(profile="demo", pid=2**22 + 12345, start=100)
    assert stop_instances([gone]).stopped == [gone.pid]


def test_child_environment_is_explicit():
    profile = Profile(name="rpa", command=("x",), env={"A": "1"})
    env = child_environment(profile, "h1", "i1", parent_env={"PATH": "/bin", "PYTHONPATH": "/x",
                                                             "CELERY_X": "1"})
    assert env == {"PATH": "/bin", "A": "1", "WORKERGUARD_PROFILE": "rpa",
                   "WORKERGUARD_HOST_ID": "h1", "WORKERGUARD_INSTANCE": "i1", "WORKERGUARD_INDEX": "0"}


@pytest.mark.parametrize("count", [3])
def test_spawning_several_instances_at_once_starts_them_all(workspace: Workspace, count: int):
    profile = sleeper_profile(workspace, min_workers=count, max_workers=count)
    spawned, failures = spawn(workspace, profile, count)
    assert len(spawned) == count and not failures
    assert len(discover(workspace, profile)) == count
