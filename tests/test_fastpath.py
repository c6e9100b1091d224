"""The ensure fast path (known instances verified by pid + start ticks) and single-flight.

The fast path must never trust an instance that died or whose PID now names another
process, and must never hide a duplicate from the sweeps.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import psutil
import pytest

from tests.conftest import Workspace
from tests.support import CountingTable, poll_for
from workerguard.policy.coalesce import Coalescer
from workerguard.policy.guard import Guard
from workerguard.policy.hooks import GuardHooks
from workerguard.policy.outcome import Outcome
from workerguard.store import keys
from workerguard.store.known_instances import encode_known
from workerguard.store.lock import ProfileLock
from workerguard.workers.identity import alive, start_of
from workerguard.workers.model import Instance


def running(guard: Guard, profile: str = "demo") -> list[int]:
    return list(guard.status(profile).running)


def forge_known(workspace: Workspace, redis_client, guard: Guard, instances: list[Instance]):
    profile = guard.config.profile("demo")
    redis_client.set(keys.known(workspace.host_id, "demo"), encode_known(profile, instances))


def test_ensure_answers_from_the_known_instances_without_scanning(workspace: Workspace,
                                                                   redis_client):
    workspace.add_profile()
    counting = workspace.table(CountingTable)
    guard = workspace.guard(redis_client, counting)
    [pid] = guard.ensure("demo").started
    counting.discovers = 0
    for _ in range(3):
        again = guard.ensure("demo").contract()
        assert again["action"] == "already_running" and again["running"] == [pid]
        assert again["kept"] == [pid] and again["ok"]
        assert again["message"] == f"demo: already running (PIDs: {pid})"
    assert counting.discovers == 0
    # Another guard process (a --local CLI, another pool child) shares the record in Redis.
    other_table = workspace.table(CountingTable)
    other = workspace.guard(redis_client, other_table)
    assert other.ensure("demo").contract()["running"] == [pid] and other_table.discovers == 0


def test_a_hand_started_duplicate_is_found_by_the_next_sweep_with_the_fast_path_on(
        workspace: Workspace, redis_client):
    workspace.add_profile(stop_adopted=True)
    counting = workspace.table(CountingTable)
    guard = workspace.guard(redis_client, counting)
    [ours] = guard.ensure("demo").started
    manual = workspace.hand_started()  # found only by `match`: no mark
    manual_created = start_of(manual.pid)
    assert manual_created is not None
    poll_for(lambda: len(running(guard)) == 2, message="the duplicate to show up")
    # The fast path does not scan, so it cannot see the duplicate yet ...
    assert guard.ensure("demo").contract()["running"] == [ours]
    # ... the next sweep scans, finds both, and keeps the one workerguard started
    # (stop_adopted lets it stop the hand-started extra).
    [swept] = [outcome.contract() for outcome in guard.sweep()]
    assert swept["action"] == "stopped_extras"
    assert swept["stopped"] == [manual.pid] and swept["running"] == [ours]
    assert not alive(manual.pid, manual_created)
    # The sweep's converge rewrote the known instances: the fast path knows the survivor.
    counting.discovers = 0
    assert guard.ensure("demo").contract()["running"] == [ours]
    assert counting.discovers == 0


def test_a_sweep_that_finds_a_new_instance_within_bounds_refreshes_the_known_ones(
        workspace: Workspace, redis_client):
    workspace.add_profile(max_workers=2)
    guard = workspace.guard(redis_client)
    [ours] = guard.ensure("demo").started
    manual = workspace.hand_started()
    poll_for(lambda: len(running(guard)) == 2, message="the second instance")
    assert guard.ensure("demo").contract()["running"] == [ours]  # fast path: not seen yet
    [swept] = [outcome.contract() for outcome in guard.sweep()]
    assert swept["action"] == "already_running" and swept["running"] == [ours, manual.pid]
    assert guard.ensure("demo").contract()["running"] == [ours, manual.pid]


def test_a_known_instance_that_died_is_never_trusted(workspace: Workspace, redis_client):
    workspace.add_profile()
    guard = workspace.guard(redis_client)
    first = guard.ensure("demo")
    [pid] = first.started
    created = start_of(pid)
    assert created is not None
    psutil.Process(pid).send_signal(signal.SIGKILL)
    poll_for(lambda: not alive(pid, created), message="the worker to die")
    again = guard.ensure("demo").contract()
    assert again["action"] == "started" and again["started"] != [pid]
    assert running(guard) == again["started"]


def test_a_known_zombie_is_never_trusted(workspace: Workspace, redis_client):
    workspace.add_profile()
    guard = workspace.guard(redis_client)
    zombie = workspace.tracker.sleeper("--tag", "not-a-demo-worker")
    poll_for(lambda: psutil.Process(zombie.pid).cmdline(), message="the process to start")
    created = start_of(zombie.pid)
    assert created is not None
    zombie.send_signal(signal.SIGKILL)  # not waited for: it stays a zombie of this process
    poll_for(lambda: psutil.Process(zombie.pid).status() == psutil.STATUS_ZOMBIE,
             message="a zombie")
    forge_known(workspace, redis_client, guard, [Instance("demo", zombie.pid, created)])
    result = guard.ensure("demo").contract()
    assert result["action"] == "started" and zombie.pid not in result["running"]


def test_a_known_pid_now_used_by_another_process_is_never_trusted(workspace: Workspace,
                                                                  redis_client):
    workspace.add_profile()
    guard = workspace.guard(redis_client)
    [pid] = guard.ensure("demo").started
    created = start_of(pid)
    assert created is not None
    psutil.Process(pid).send_signal(signal.SIGKILL)
    poll_for(lambda: not alive(pid, created), message="the worker to die")
    # An unrelated process now holds a PID the record names (PID reuse), with its own
    # start: the record's start is the dead worker's.
    stranger = workspace.tracker.sleeper("--tag", "unrelated")
    poll_for(lambda: psutil.Process(stranger.pid).cmdline(), message="the stranger to start")
    assert start_of(stranger.pid) != created
    forge_known(workspace, redis_client, guard, [Instance("demo", stranger.pid, created)])
    result = guard.ensure("demo").contract()
    assert result["action"] == "started" and stranger.pid not in result["running"]
    assert stranger.poll() is None  # never touched


def test_a_changed_command_never_starts_a_second_instance_and_shows_the_old_one_outdated(
        workspace: Workspace, redis_client):
    workspace.add_profile()
    old = workspace.guard(redis_client).ensure("demo").contract()["started"]
    # The profile's command (and match) change: the running worker is still its instance,
    # started with the old command. The known record (made for the old command) is not
    # trusted; the scan finds the instance by its identity, not by its command line.
    workspace.profiles["demo"] = workspace.sleeper_profile()
    workspace.profiles["demo"]["command"][-1] = workspace.token + "-v2"
    workspace.profiles["demo"]["match"] = rf"sleeper\.py --tag {workspace.token}-v2(\s|$)"
    guard = workspace.guard(redis_client)
    result = guard.ensure("demo").contract()
    assert result["action"] == "already_running" and result["running"] == old
    [entry] = guard.status("demo").profiles["demo"]["instances"]
    assert entry["pid"] == old[0] and entry["outdated"] is True


class Joins(GuardHooks):
    """Counts the requests that wait for another's converge (``GuardHooks.coalesced``)."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def coalesced(self, profile: str) -> None:
        with self._lock:
            self.count += 1


def test_concurrent_identical_ensures_share_one_converge(workspace: Workspace, redis_client):
    workspace.add_profile()
    counting = workspace.table(CountingTable).hold_first_discovery()
    joined = Joins()
    guard = Guard(redis_client, workspace.config(), table=counting, hooks=[joined])
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def call() -> None:
        result = guard.ensure("demo").contract()
        with lock:
            results.append(result)

    leader = threading.Thread(target=call)
    leader.start()
    assert counting.entered.wait(10)  # the first converge is inside its scan
    others = [threading.Thread(target=call) for _ in range(9)]
    for thread in others:
        thread.start()
    # One of the nine leads the next run; eight wait for its result instead of their own.
    poll_for(lambda: joined.count == 8, message="eight requests waiting for the next run")
    counting.release.set()
    for thread in [leader, *others]:
        thread.join(30)
    assert len(results) == 10 and all(r["ok"] for r in results)
    [started] = [r for r in results if r["action"] == "started"]
    assert all(r["running"] == started["started"] for r in results)
    assert counting.discovers == 2  # the first converge's scan and its check after starting
    assert running(guard) == started["started"]


def test_followers_get_the_leaders_error():
    joined = Joins()
    coalescer: Coalescer[int] = Coalescer(on_join=lambda key: joined.coalesced(str(key)))
    entered, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def slow() -> int:
        entered.set()
        release.wait(10)
        return 1

    def failing() -> int:
        raise RuntimeError("boom")

    def follow() -> None:
        try:
            coalescer.run("k", failing)
        except RuntimeError as exc:
            errors.append(exc)

    first = threading.Thread(target=coalescer.run, args=("k", slow))
    first.start()
    assert entered.wait(10)
    followers = [threading.Thread(target=follow) for _ in range(3)]
    for thread in followers:
        thread.start()
    poll_for(lambda: joined.count == 2, message="two waiting for the next run")
    release.set()
    for thread in [first, *followers]:
        thread.join(10)
    assert len(errors) == 3 and all(str(e) == "boom" for e in errors)
    with pytest.raises(RuntimeError):
        coalescer.run("k", failing)


def test_the_fast_path_never_answers_while_another_caller_holds_the_lock(
        workspace: Workspace, redis_client):
    workspace.add_profile()
    guard = workspace.guard(redis_client)
    [pid] = guard.ensure("demo").started
    holder = ProfileLock(redis_client, workspace.host_id, "demo", expire=10)
    assert holder.acquire_within(5)  # a converge in progress elsewhere
    results: list[Outcome] = []
    waiter = threading.Thread(target=lambda: results.append(guard.ensure("demo")))
    waiter.start()
    poll_for(lambda: any(c.get("cmd") == "blpop" for c in redis_client.client_list()),
             message="the ensure to wait for the lock")
    assert waiter.is_alive() and results == []
    holder.release()
    waiter.join(10)
    assert results[0].action == "already_running" and results[0].contract()["running"] == [pid]
