"""Spawning into a cgroup without a fork of the guard: the trampoline (see spawn's docstring).

Every instance is in its group before its first instruction, whatever it does at once;
argv, environment, cwd, stdin and output are exactly what ``Popen`` alone would give; a
group that cannot be joined is a host error that leaves no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import Workspace
from tests.support import poll_for
from workerguard.workers import cgroups, spawn
from workerguard.workers.cgroup_layout import Layout
from workerguard.workers.cgroups import CgroupTree
from workerguard.workers.host import HostProcesses
from workerguard.workers.spawn import JoinFailed, Launched, child_environment

FORKS_AT_ONCE = ["/bin/sh", "-c", "sleep 60 & exec sleep 60"]
REPORTER = ("import json, os, sys, time; print(json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd(), "
            "'stdin': os.readlink('/proc/self/fd/0')}), flush=True); time.sleep(60)")
ODD_ARGS = ["a b", "q'\"x", "ünï ✓", "-n", "$HOME", "*", "--", "x=y", "line\nbreak"]
SHELL_UNSAFE_ENV = {"my.var": "1"}
"""A name no shell carries: this environment takes the old path (fork, join in the child)."""


@pytest.fixture
def tree(workspace: Workspace) -> CgroupTree:
    found = workspace.table().cgroups
    if found is None:
        if os.environ.get("CI"):
            raise AssertionError("cgroup v2 is not usable here")  # CI fails, never skips
        pytest.skip("no writable cgroup v2 hierarchy")
    return found


def profile_of(ws: Workspace, command: list[str], **overrides: Any) -> Any:
    ws.profiles["demo"] = {"command": command, "start_seconds": 0.3, "stop_timeout": 3, **overrides}
    return ws.config().profile("demo")


def launch(ws: Workspace, tree: CgroupTree, profile: Any) -> Launched:
    group = tree.create(ws.host_id, profile.name, uuid.uuid4().hex)
    item = spawn.launch(profile, ws.host_id, ws.home / "demo.log", group)
    ws.tracker.popens.append(item.popen)  # reaped at teardown
    return item


def carried_by_trampoline(profile: Any, ws: Workspace) -> bool:
    return spawn.trampoline_carries(profile.command, child_environment(profile, ws.host_id, "x"))


def marked(instance_id: str) -> set[int]:
    """Every live process that carries ``instance_id`` in its environment."""
    found = set()
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("WORKERGUARD_INSTANCE") == instance_id and \
                    proc.status() != psutil.STATUS_ZOMBIE:
                found.add(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.mark.parametrize("env", [{}, SHELL_UNSAFE_ENV], ids=["trampoline", "fork"])
def test_a_worker_that_forks_at_once_has_every_process_in_its_cgroup_from_the_first_scan(
        workspace: Workspace, tree: CgroupTree, env: dict[str, str]):
    profile = profile_of(workspace, FORKS_AT_ONCE, env=env)
    assert carried_by_trampoline(profile, workspace) == (not env)
    for _ in range(5):  # a process outside its group stays outside: any miss shows
        item = launch(workspace, tree, profile)
        assert item.group is not None
        both = poll_for(lambda: len(marked(item.instance_id)) == 2 and marked(item.instance_id),  # noqa: B023
                        message="the worker and its child")
        assert set(cgroups.members(item.group)) == both
    [started] = workspace.table().spawn(profile, 1).started
    found = workspace.table().discover([profile], [profile]).instances["demo"]  # the first scan
    assert started.instance_id in {instance.instance_id for instance in found} and len(found) == 6
    for instance in found:
        assert instance.instance_id is not None
        assert len(instance.tree) == 2 and set(instance.tree) == marked(instance.instance_id)


@pytest.mark.parametrize("env", [{}, SHELL_UNSAFE_ENV], ids=["trampoline", "fork"])
def test_argv_environment_cwd_stdin_and_output_are_exactly_what_popen_gives(
        workspace: Workspace, tree: CgroupTree, tmp_path: Path, env: dict[str, str]):
    command = [sys.executable, "-c", REPORTER, *ODD_ARGS]
    profile = profile_of(workspace, command, env={"RPA_MODE": "prod ✓", **env}, cwd=str(tmp_path))
    assert carried_by_trampoline(profile, workspace) == (not env)
    item = launch(workspace, tree, profile)
    assert item.group is not None
    log = workspace.home / "demo.log"
    line = poll_for(lambda: log.read_text().strip() if log.exists() else "", message="the report")
    assert json.loads(line) == {"argv": ODD_ARGS, "cwd": str(tmp_path), "stdin": "/dev/null"}
    proc = psutil.Process(item.popen.pid)
    assert proc.cmdline() == command  # the worker itself, the same pid as the one started
    assert proc.environ() == child_environment(profile, workspace.host_id, item.instance_id)
    assert os.getsid(proc.pid) == proc.pid
    assert cgroups.members(item.group) == [proc.pid]


@pytest.mark.parametrize("ignored", [(), (signal.SIGINT,), (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)],
                         ids=["none-ignored", "sigint-ignored", "sigint-sigterm-sighup-ignored"])
def test_ignored_signals_are_default_in_the_worker_and_the_worker_is_in_its_group(
        workspace: Workspace, tree: CgroupTree, ignored: tuple[signal.Signals, ...]):
    """However the guard was started (a prefork child ignores SIGINT, ``nohup`` SIGHUP, a
    background job of a script SIGINT), the worker starts with them at their default; with
    an ``env`` that resets signals the fast path (the trampoline) still carries it."""
    profile = profile_of(workspace, ["/bin/sleep", "60"])
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in ignored}
    try:
        assert carried_by_trampoline(profile, workspace) == (not ignored or spawn._env_resets_signals())
        item = launch(workspace, tree, profile)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert item.group is not None

    def ignored_mask() -> int:
        status = Path(f"/proc/{item.popen.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16)

    poll_for(lambda: psutil.Process(item.popen.pid).cmdline() == ["/bin/sleep", "60"], message="exec")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        assert not ignored_mask() & (1 << (sig - 1)), sig
    assert cgroups.members(item.group) == [item.popen.pid]


def test_this_machine_s_env_resets_signals():
    """CI runs on Debian (GNU coreutils 9): the fast path must not silently fall back there."""
    assert spawn._env_resets_signals()


class VanishingGroups(CgroupTree):
    """Groups that are gone by the time the worker joins (removed by someone else)."""

    def create(self, host: str, profile: str, instance_id: str) -> Path:
        path = super().create(host, profile, instance_id)
        path.rmdir()
        return path


class VanishingTable(HostProcesses):
    @staticmethod
    def _choose_cgroups(identity: Any, layout: Layout) -> CgroupTree | None:
        chosen = HostProcesses._choose_cgroups(identity, layout)
        return VanishingGroups(chosen.root) if chosen is not None else None


def children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.mark.parametrize("env", [{}, SHELL_UNSAFE_ENV], ids=["trampoline", "fork"])
def test_a_group_that_cannot_be_joined_is_a_host_error_and_leaves_no_process(
        workspace: Workspace, tree: CgroupTree, env: dict[str, str]):
    profile = profile_of(workspace, FORKS_AT_ONCE, env=env)
    before = children()
    group = VanishingGroups(tree.root).create(workspace.host_id, "demo", uuid.uuid4().hex)
    with pytest.raises(JoinFailed) as raised:
        spawn.launch(profile, workspace.host_id, workspace.home / "demo.log", group)
    failure = spawn.start_failure(profile, raised.value)
    assert failure.host_error
    assert failure.describe() == (f"could not place '/bin/sh' in its cgroup: {group}/cgroup.procs: "
                                  "No such file or directory")
    assert children() == before and marked(group.name) == set()

    outcome = workspace.table(VanishingTable).spawn(profile, 1)
    assert outcome.started == [] and [f.host_error for f in outcome.failures] == [True]
    assert "could not place '/bin/sh' in its cgroup" in outcome.failures[0].describe()
    assert children() == before and workspace.tracker.marked() == []


@pytest.mark.parametrize("mode", [0o644, None], ids=["not-executable", "missing"])
def test_a_command_that_cannot_be_executed_fails_at_launch_like_popen(
        workspace: Workspace, tree: CgroupTree, tmp_path: Path, mode: int | None):
    command = tmp_path / "worker"
    if mode is not None:
        command.write_text("#!/bin/sh\nsleep 60\n")
        command.chmod(mode)
    profile = profile_of(workspace, [str(command)])
    assert carried_by_trampoline(profile, workspace)
    with pytest.raises(OSError) as raised:  # what Popen alone raises
        subprocess.Popen([str(command)], stdin=subprocess.DEVNULL).wait()
    before = children()
    with pytest.raises(type(raised.value)) as ours:
        launch(workspace, tree, profile)
    assert (ours.value.errno, ours.value.filename) == (raised.value.errno, str(command))
    assert children() == before


def test_a_trampoline_that_never_gets_the_go_never_runs_the_worker(tmp_path: Path):
    """The guard died between start and join: end of file, and nothing of the worker ran."""
    proof = tmp_path / "ran"
    trampoline = subprocess.Popen(spawn.trampoline_argv(["/bin/touch", str(proof)]),
                                  stdin=subprocess.PIPE, env={"PATH": os.defpath})
    assert trampoline.stdin is not None
    trampoline.stdin.close()
    assert trampoline.wait(10) == 1
    assert not proof.exists()


@pytest.mark.parametrize(("argv", "env", "carried"), [
    (["w"], {"PATH": "/bin", "A_1": "x y"}, True),
    (["w"], {"A": "1"}, False),  # no PATH: the shell's search would differ
    (["w"], {"PATH": "/bin", "PWD": "/"}, False),
    (["w"], {"PATH": "/bin", "SHLVL": "2"}, False),
    (["w"], {"PATH": "/bin", "IFS": ":"}, False),
    (["w"], {"PATH": "/bin", "1X": "1"}, False),
    (["A=b"], {"PATH": "/bin"}, False),  # env would read it as an assignment
    ([], {"PATH": "/bin"}, False),
])
def test_only_what_the_trampoline_carries_unchanged_takes_it(argv: list[str], env: dict[str, str],
                                                             carried: bool):
    assert spawn.trampoline_carries(argv, env) == carried


def test_no_shell_adds_anything_to_the_environment(tmp_path: Path):
    """dash adds PWD, bash SHLVL: ``env -u`` takes them out again, whatever /bin/sh is."""
    env = {"PATH": os.defpath, "A": "1", "B": "two words"}
    for shell in ("/bin/sh", "/bin/bash", "/bin/dash"):
        if not os.access(shell, os.X_OK):
            continue
        argv = [shell, *spawn.trampoline_argv(["/usr/bin/env", "-0"])[1:]]
        done = subprocess.run(argv, input=b"go\n", env=env, cwd=tmp_path, capture_output=True,
                              check=True)
        shown = dict(item.split("=", 1) for item in done.stdout.decode().split("\0") if item)
        assert shown == env, shell


def test_priming_moves_this_process_into_its_own_cgroup_and_nowhere_else(tree: CgroupTree):
    def priming() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "workerguard-cgroup-prime"]

    before = cgroups.own_cgroup()
    assert cgroups.move_self()  # permitted here: a prime really takes the kernel's move lock
    assert cgroups.own_cgroup() == before
    cgroups.prime(0.3)
    cgroups.prime(0.3)  # extends the running one
    assert len(priming()) == 1
    poll_for(lambda: not priming(), message="the prime to end")
    assert cgroups.own_cgroup() == before


@pytest.mark.parametrize("read", [cgroups.members, cgroups.populated, cgroups.kill],
                         ids=["members", "populated", "kill"])
def test_a_group_removed_while_its_file_is_open_reads_as_gone(tree: CgroupTree,
                                                               workspace: Workspace,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               read: Any):
    """A ``status`` reads a group's files while a sweep removes the group: the kernel answers
    ENODEV on a file opened just before the rmdir. That is "gone", never an error (a status
    task failed with ``OSError(19, 'No such device')`` in CI)."""
    group = tree.create(workspace.host_id, "demo", uuid.uuid4().hex)
    real_open = Path.open

    def open_then_remove(path: Path, *args: Any, **kwargs: Any) -> Any:
        handle = real_open(path, *args, **kwargs)
        if path.parent == group and group.exists():
            group.rmdir()  # the concurrent sweep's remove, between open and read
        return handle

    monkeypatch.setattr(Path, "open", open_then_remove)
    answer = read(group)
    assert not group.exists()
    assert answer == {cgroups.members: [], cgroups.populated: False, cgroups.kill: True}[read]
