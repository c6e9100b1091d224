"""Instances that cannot get lost: workers that exec, wipe their environment, rename
themselves, daemonise or orphan helpers stay exactly max_workers, in both identity modes.

Ground truth is never what workerguard reports: every worker writes
"shapeshifter PID ready" to its log once in its final form, and the tests count those
PIDs that are alive.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
import pytest
import redis

from tests.conftest import Workspace
from tests.support import HERE, SLEEPER, RedisServer, alive, events, poll_for, short_tmpdir
from workerguard.policy.guard import Guard
from workerguard.probes.liveness import Health, Unhealthy
from workerguard.store import keys
from workerguard.workers import cgroup_layout, cgroups
from workerguard.workers.discover import Scan
from workerguard.workers.host import HostProcesses
from workerguard.workers.logs import profile_logs

SHAPESHIFTER = HERE / "shapeshifter.py"
_ROOT = cgroup_layout.decide().root
CGROUPS_USABLE = _ROOT is not None and cgroups.CgroupTree(_ROOT).usable()


def modes() -> list[str]:
    if CGROUPS_USABLE or os.environ.get("CI"):
        return ["cgroup", "registry"]  # in CI a missing cgroup v2 fails, never skips
    return ["registry"]


@pytest.fixture(params=modes())
def mode(request: pytest.FixtureRequest, workspace: Workspace) -> Iterator[str]:
    workspace.guard_settings["identity"] = request.param
    yield request.param


def workers(ws: Workspace, profile: str = "demo") -> list[int]:
    """PIDs of the workers that announced themselves and are alive (the ground truth)."""
    logs = profile_logs(ws.home / "logs", profile)
    pids = {int(p) for log in logs for p in re.findall(r"shapeshifter (\d+) ready", log.read_text())}
    return sorted(p for p in pids if alive(p))


def helpers(tag: str) -> list[int]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if f"# helper {tag}" in " ".join(proc.info["cmdline"] or []) and alive(proc.pid):
            found.append(proc.pid)
    return found


def shapeshifter(ws: Workspace, name: str = "demo", *args: str, **overrides: object) -> str:
    body: dict[str, object] = {
        "command": [sys.executable, str(SHAPESHIFTER), "--tag", ws.token, *args],
        "start_seconds": 0.3, "stop_timeout": 2,
    }
    body.update(overrides)
    ws.profiles[name] = body
    return name


def hammer(ws: Workspace, guard: object, times: int = 4) -> None:
    from workerguard.policy.guard import Guard

    assert isinstance(guard, Guard)
    for _ in range(times):
        assert guard.ensure("demo").ok
        guard.sweep()


@pytest.mark.parametrize("args", [
    ["--reexec-clean"],
    ["--setproctitle", "rpa-bot"],
    ["--reexec-clean", "--setproctitle", "rpa-bot"],
])
def test_a_worker_that_wipes_its_environment_or_renames_itself_stays_one(
        workspace: Workspace, redis_client, mode: str, args: list[str]):
    shapeshifter(workspace, "demo", *args)
    guard = workspace.guard(redis_client)
    first = guard.ensure("demo")
    assert first.action == "started"
    poll_for(lambda: workers(workspace), message="the worker to take its final form")
    hammer(workspace, guard)
    assert len(workers(workspace)) == 1
    status = guard.status("demo").profiles["demo"]
    assert status["state"] == "running" and len(status["instances"]) == 1
    assert guard.stop_all("demo").action == "stopped_all"
    assert workers(workspace) == []


def test_a_shell_wrapper_that_execs_the_real_program_stays_one(workspace: Workspace,
                                                               redis_client, mode: str):
    wrapper = workspace.home / "run-worker.sh"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{SHAPESHIFTER}" --tag {workspace.token} "$@"\n')
    wrapper.chmod(0o755)
    shapeshifter(workspace, command=[str(wrapper)])
    guard = workspace.guard(redis_client)
    assert guard.ensure("demo").action == "started"
    poll_for(lambda: workers(workspace), message="the worker")
    hammer(workspace, guard)
    assert len(workers(workspace)) == 1
    assert guard.status("demo").profiles["demo"]["state"] == "running"


def test_a_daemonising_worker_is_started_not_failed(workspace: Workspace, redis_client,
                                                    mode: str):
    # The launcher must have forked and exited within the start window, or it is taken as
    # the main process: 0.3 s is not enough for a Python start on a loaded machine.
    shapeshifter(workspace, "demo", "--daemon", start_seconds=3)
    guard = workspace.guard(redis_client)
    first = guard.ensure("demo").contract()
    assert first["action"] == "started" and first["ok"], first["message"]
    [daemon] = poll_for(lambda: workers(workspace), message="the daemon")
    assert first["started"] == [daemon]  # the daemon, not its exited launcher
    hammer(workspace, guard)
    assert workers(workspace) == [daemon]
    assert guard.status("demo").profiles["demo"]["backoff"] is None
    assert guard.stop_all("demo").contract()["stopped"] == [daemon]
    assert workers(workspace) == []


def test_orphaned_helpers_never_pile_up_and_stop_leaves_none(workspace: Workspace,
                                                             redis_client, mode: str):
    # Each worker starts a helper that ignores SIGTERM, then exits after its start window.
    shapeshifter(workspace, "demo", "--orphan-helper", "--exit-after", "0.8")
    guard = workspace.guard(redis_client)
    restarts = 0
    seen: set[int] = set()
    while restarts < 4:
        result = guard.sweep()[0]
        if result.action == "started":
            restarts += 1
            [pid] = poll_for(lambda: workers(workspace), timeout=60, message="the worker")
            seen.add(pid)
            poll_for(lambda: not alive(pid), timeout=10, message="the worker to exit")  # noqa: B023
        assert len(helpers(workspace.token)) <= 1  # the last one's helper, at most
    assert len(seen) == 4
    guard.sweep()  # starts the next one, and ends what the last one left
    assert guard.stop_all("demo").ok
    poll_for(lambda: helpers(workspace.token) == [], timeout=10, message="no helper left")
    assert workers(workspace) == []


def test_a_changed_command_keeps_the_running_instance_and_marks_it_outdated(
        workspace: Workspace, redis_client, mode: str):
    shapeshifter(workspace)
    [old] = workspace.guard(redis_client).ensure("demo").started
    workspace.profiles["demo"]["command"] = [*workspace.profiles["demo"]["command"], "--new-arg"]
    guard = workspace.guard(redis_client)  # a restarted guard with the edited config
    hammer(workspace, guard)
    assert workers(workspace) == [old]
    [entry] = guard.status("demo").profiles["demo"]["instances"]
    assert entry["outdated"] is True and entry["origin"] == "spawned"


def test_a_renamed_profile_leaves_a_reported_orphan_that_prune_stops(workspace: Workspace,
                                                                     redis_client, mode: str):
    shapeshifter(workspace, "old-name", "--orphan-helper")
    [old] = workspace.guard(redis_client).ensure("old-name").started
    [old_helper] = poll_for(lambda: helpers(workspace.token), message="the old one's helper")
    workspace.profiles["new-name"] = workspace.profiles.pop("old-name")
    guard = workspace.guard(redis_client)
    status = guard.status()
    assert [o["pid"] for o in status.orphans] == [old]
    assert "orphaned" in status.message and "prune" in status.message
    guard.sweep()
    events = [e for _, e in redis_client.xrange(keys.EVENTS)]
    assert any(e[b"action"] == b"orphaned" and e[b"profile"] == b"old-name" for e in events)
    assert guard.prune(dry_run=True).contract()["orphans"][0]["pid"] == old and alive(old)
    assert guard.prune().contract()["stopped"] == [old]
    assert not alive(old)
    assert not alive(old_helper)  # its helper (it ignores SIGTERM) went with it
    assert guard.status().contract()["orphans"] == []


def test_a_process_marked_for_another_host_is_never_counted_or_killed(
        workspace: Workspace, redis_client, mode: str):
    shapeshifter(workspace, match=rf"shapeshifter\.py --tag {workspace.token}(\s|$)",
                 stop_adopted=True)
    env = {**os.environ, "WORKERGUARD_PROFILE": "demo", "WORKERGUARD_HOST_ID": "another-host",
           "WORKERGUARD_INSTANCE": "f" * 32}
    foreign = workspace.tracker.popen([sys.executable, str(SHAPESHIFTER), "--tag", workspace.token],
                                      env=env)
    poll_for(lambda: psutil.Process(foreign.pid).cmdline()[-1:] == [workspace.token])
    guard = workspace.guard(redis_client)
    assert guard.ensure("demo").action == "started"
    hammer(workspace, guard, 2)
    assert guard.enforce("demo", max_workers=1).contract()["stopped"] == []
    assert foreign.poll() is None
    assert foreign.pid not in guard.status("demo").running


def test_a_bystander_hit_by_match_is_never_kept_over_a_spawned_worker(
        workspace: Workspace, redis_client, mode: str):
    # The README's old example `match = "rpa_worker"` also hits `tail -f rpa_worker.notes`.
    shapeshifter(workspace, match=re.escape(workspace.token))
    guard = workspace.guard(redis_client)
    [spawned] = guard.ensure("demo").started
    notes = workspace.home / f"{workspace.token}.notes"
    notes.write_text("")
    bystander = workspace.tracker.popen(["tail", "-f", str(notes)])  # newer than the worker
    poll_for(lambda: bystander.pid in guard.status("demo").running, message="the bystander")
    hammer(workspace, guard, 2)
    assert guard.ensure("demo").contract()["kept"] == [spawned]  # the spawned worker is the survivor
    assert workers(workspace) == [spawned]
    assert bystander.poll() is None  # never stopped: adopted and stop_adopted is false


def test_the_fallback_mode_is_forced_by_the_environment(workspace: Workspace, redis_client,
                                                        monkeypatch: pytest.MonkeyPatch):
    from workerguard.config import load_config

    monkeypatch.setenv("WORKERGUARD_IDENTITY", "registry")
    shapeshifter(workspace)
    settings = load_config(workspace.write_config()).settings
    assert settings.identity == "registry"
    table = HostProcesses(workspace.host_id, registry_dir=settings.registry_dir,
                          log_dir=settings.log_dir, identity=settings.identity)
    assert table.mode == "registry"
    [started] = table.spawn(load_config(workspace.config_path).profile("demo"), 1).started
    assert started.cgroup is None and started.instance_id is not None


class ScanSizes(HostProcesses):
    """Records which processes each scan read."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scans: list[set[int]] = []

    def scan(self, only: Any = None) -> Scan:
        found = super().scan(only)
        self.scans.append(set(found.processes))
        return found


def test_a_converge_in_cgroup_mode_reads_only_the_processes_of_the_hosts_groups(
        workspace: Workspace, redis_client):
    if not CGROUPS_USABLE:
        pytest.skip("no writable cgroup v2 here")
    workspace.guard_settings["identity"] = "cgroup"
    workspace.add_profile(min_workers=2, max_workers=2)
    del workspace.profiles["demo"]["match"]  # adoption would need every process
    bystanders = {workspace.tracker.sleeper("--tag", "bystander").pid for _ in range(3)}
    table = workspace.table(ScanSizes)
    guard = workspace.guard(redis_client, table)
    started = guard.ensure("demo").started
    assert len(started) == 2
    assert all(len(read) <= 2 and not read & bystanders for read in table.scans), table.scans
    psutil.Process(started[0]).kill()
    poll_for(lambda: not alive(started[0]))
    healed = guard.heal("demo")
    assert healed.action == "started" and len(healed.running) == 2
    assert all(len(read) <= 2 and not read & bystanders for read in table.scans), table.scans
    table.scans = []
    assert guard.sweep()[0].action == "already_running"
    assert bystanders <= table.scans[0]  # a sweep still reads every process: the safety net


def test_an_empty_group_of_a_start_in_progress_survives_a_concurrent_discovery(
        workspace: Workspace):
    """Between creating an instance's group and its first process joining, a sweep or
    another profile's converge sees an empty group: it must not remove it (the start's
    child would then fail to join)."""
    if not CGROUPS_USABLE:
        pytest.skip("no writable cgroup v2 here")
    workspace.guard_settings["identity"] = "cgroup"
    workspace.add_profile()
    table = workspace.table()
    assert table.cgroups is not None
    group = table.cgroups.create(workspace.host_id, "demo", "ab" * 16)
    try:
        config = workspace.config()
        found = table.discover(config.profiles.values(), config.profiles.values())
        assert found.instances["demo"] == [] and group.is_dir()
    finally:
        cgroups.remove(group)


# --- the guard's own helpers are never instances --------------------------------------
def probes_running(token: str) -> list[int]:
    """The command probes (``sleeper.py --tag TOKEN --probe ...``) this test's guard runs now."""
    found = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmdline = child.cmdline()
            if "--probe" in cmdline and token in cmdline and alive(child.pid):
                found.append(child.pid)
    return found


def probe_the_worker_with_its_own_command(workspace: Workspace, redis_client: redis.Redis,
                                          seconds: float) -> None:
    """A guard whose liveness probe is the worker's own command with ``--probe`` (3 s long,
    every 1 s), swept every 1 s for ``seconds``: the worker is never stopped, killed or
    replaced, and the probe is never counted as an instance."""
    workspace.add_profile(probe={
        "kind": "command", "interval": 1, "timeout": 10, "failure_threshold": 3,
        "start_interval": 1, "command": [sys.executable, str(SLEEPER), "--tag", workspace.token,
                                         "--probe", "3"]})
    guard: Guard | None = None

    def unhealthy(event: Unhealthy) -> None:
        assert guard is not None
        guard.unhealthy(event)

    health = Health(workspace.host_id, on_unhealthy=unhealthy)
    try:
        guard = Guard(redis_client, workspace.config(), liveness=health)
        [worker] = guard.ensure("demo").started
        ends, swept_while_probing = time.monotonic() + seconds, 0
        while time.monotonic() < ends:
            probing = probes_running(workspace.token)
            [swept] = guard.sweep()
            assert swept.action == "already_running", swept.contract()
            assert [i.pid for i in swept.running] == [worker], swept.contract()
            swept_while_probing += bool(probing and set(probing) & set(probes_running(workspace.token)))
            time.sleep(1.0)  # the sweep cadence under test, not a synchronisation
        assert alive(worker)
        assert list(guard.status("demo").running) == [worker]
        [record] = workspace.table().registry.records(workspace.host_id)
        assert record.pid == worker
        assert swept_while_probing >= seconds / 4, "the sweeps must overlap running probes"
        assert events(redis_client, "stopped") == events(redis_client, "replaced") == []
        assert events(redis_client, "unhealthy") == []
    finally:
        health.stop()


def test_a_probe_running_the_workers_own_command_is_never_an_instance(
        workspace: Workspace, redis_client: redis.Redis, mode: str) -> None:
    probe_the_worker_with_its_own_command(workspace, redis_client, 10)


@pytest.mark.slow
def test_a_probe_running_the_workers_own_command_for_a_minute_kills_nothing(
        workspace: Workspace, redis_client: redis.Redis, redis_server: RedisServer) -> None:
    """Every identity mode for a minute, side by side: one guard per mode, each with its own
    host id, home and Redis client, in a thread of its own (the minute is the guards'
    waiting, not work: the slow suite runs it once instead of once per mode)."""
    spaces = [workspace] + [Workspace(redis_url=workspace.redis_url, home=short_tmpdir(),
                                      tracker=workspace.tracker) for _ in modes()[1:]]
    clients = [redis_client] + [redis_server.client() for _ in spaces[1:]]
    try:
        with ThreadPoolExecutor(len(spaces)) as pool:
            runs = []
            for space, client, mode in zip(spaces, clients, modes(), strict=True):
                space.guard_settings["identity"] = mode
                runs.append(pool.submit(probe_the_worker_with_its_own_command, space, client, 60))
            for run in runs:
                run.result()
    finally:
        for space, client in zip(spaces[1:], clients[1:], strict=True):
            client.close()
            space.remove()
