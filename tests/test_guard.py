"""The guard against a real redis-server and real processes."""

from __future__ import annotations

import signal
import sys
import time

import psutil
import pytest
import redis

from tests.conftest import Workspace
from tests.support import CountingTable, RedisServer, free_port, poll_for, running_the_worker
from workerguard.errors import LockLost, RedisUnavailable, UnknownProfile
from workerguard.ops.connect import redis_client as redis_client_for
from workerguard.policy.guard import Guard
from workerguard.store import events, keys
from workerguard.store.lock import ProfileLock


def read_events(client: redis.Redis) -> list[tuple[str, dict[str, str]]]:
    return list(events.since(client, "-", events.EventFilter()))


def running(guard: Guard, profile: str = "demo") -> list[int]:
    return list(guard.status(profile).running)


def test_ensure_starts_one_then_reports_it_running(workspace: Workspace, redis_client):
    workspace.add_profile()
    guard = workspace.guard(redis_client)
    first = guard.ensure("demo", requested_by="test").contract()
    assert first["action"] == "started" and first["ok"]
    assert first["running"] == first["started"] and len(first["started"]) == 1
    assert first["message"] == f"demo: started (PIDs: {first['started'][0]})"
    second = guard.ensure("demo", requested_by="test").contract()
    assert second["action"] == "already_running"
    assert second["running"] == first["started"]
    assert second["message"] == f"demo: already running (PIDs: {first['started'][0]})"
    [(_, event)] = read_events(redis_client)
    assert event["action"] == "started" and event["requested_by"] == "test"
    assert event["host"] == workspace.host_id and event["pids"] == str(first["started"][0])


def test_enforce_keeps_the_newest_including_hand_started_ones(workspace: Workspace,
                                                              redis_client):
    """Among adopted (hand-started) instances the newest survive; with stop_adopted the
    extras are stopped."""
    workspace.add_profile(max_workers=3, min_workers=0, stop_adopted=True)
    guard = workspace.guard(redis_client)
    manual = [workspace.hand_started() for _ in range(3)]
    poll_for(lambda: len(running(guard)) == 3, message="three instances")
    result = guard.enforce("demo", max_workers=1).contract()
    assert result["action"] == "stopped_extras"
    newest = manual[-1].pid
    assert result["running"] == [newest]
    assert sorted(result["stopped"]) == sorted([manual[0].pid, manual[1].pid])
    assert result["message"] == (f"demo: keeping {newest}, stopping "
                                 + ", ".join(str(p) for p in result["stopped"]))
    assert manual[0].wait(5) is not None and manual[-1].poll() is None


def test_spawned_instances_survive_over_adopted_ones_and_adopted_are_left_alone_by_default(
        workspace: Workspace, redis_client):
    workspace.add_profile(max_workers=2, min_workers=1)
    guard = workspace.guard(redis_client)
    [ours] = guard.ensure("demo").started
    manual = [workspace.hand_started() for _ in range(2)]  # newer than ours
    poll_for(lambda: len(running(guard)) == 3, message="three instances")
    result = guard.enforce("demo", max_workers=1).contract()
    assert result["kept"] == [ours] and result["stopped"] == []
    assert sorted(result["spare"]) == sorted(m.pid for m in manual)
    assert "stop_adopted" in result["message"]
    assert all(m.poll() is None for m in manual)


def test_ensure_stops_extras_beyond_max_keeping_oldest_when_asked(workspace: Workspace,
                                                                   redis_client):
    workspace.add_profile(keep="oldest", stop_adopted=True)
    guard = workspace.guard(redis_client)
    manual = [workspace.hand_started() for _ in range(3)]
    poll_for(lambda: len(running(guard)) == 3)
    result = guard.ensure("demo").contract()
    assert result["action"] == "stopped_extras"
    assert result["running"] == [manual[0].pid]


def test_stop_all_pauses_until_the_next_ensure(workspace: Workspace, redis_client):
    workspace.add_profile()
    guard = workspace.guard(redis_client)
    decoy = workspace.tracker.sleeper("--tag", workspace.token + "x")  # similar, not ours
    pid = guard.ensure("demo").started[0]
    stopped = guard.stop_all("demo", requested_by="operator").contract()
    assert stopped["action"] == "stopped_all" and stopped["stopped"] == [pid]
    assert stopped["running"] == []
    for _ in range(3):
        [swept] = guard.sweep()
        assert swept.action == "paused" and swept.running == ()
    status = guard.status("demo").profiles["demo"]
    assert status["state"] == "paused" and status["paused"]["by"] == "operator"
    assert guard.stop_all("demo").action == "nothing_to_stop"
    again = guard.ensure("demo")
    assert again.action == "started"
    assert guard.status("demo").profiles["demo"]["state"] == "running"
    assert decoy.poll() is None


def test_sweep_restarts_a_killed_worker_and_cuts_extras_with_one_scan(workspace: Workspace,
                                                                      redis_client):
    workspace.add_profile("a")
    workspace.add_profile("b")
    workspace.profiles["b"]["command"][-1] = workspace.token + "-b"
    workspace.profiles["b"]["match"] = rf"sleeper\.py --tag {workspace.token}-b(\s|$)"
    table = workspace.table(CountingTable)
    guard = workspace.guard(redis_client, table)
    pid_a = guard.ensure("a").started[0]
    guard.ensure("b")
    psutil.Process(pid_a).kill()
    poll_for(lambda: not psutil.pid_exists(pid_a), message="worker a to die")
    table.scans = 0
    results = {r.profile: r for r in guard.sweep()}
    assert results["a"].action == "started"
    assert results["b"].action == "already_running"
    # one scan for the whole host; only profile a converges (its scans before and after starting)
    assert table.scans == 3


def test_dry_run_changes_nothing(workspace: Workspace, redis_client):
    workspace.add_profile()
    guard = workspace.guard(redis_client)
    nothing = guard.ensure("demo", dry_run=True).contract()
    assert nothing["dry_run"] and nothing["would_start"] == 1 and nothing["started"] == []
    assert nothing["message"] == "demo: [dry-run] would start 1"
    assert running(guard) == []
    manual = [workspace.hand_started() for _ in range(2)]
    poll_for(lambda: len(running(guard)) == 2)
    for result in (guard.enforce("demo", dry_run=True), guard.ensure("demo", dry_run=True),
                   guard.stop_all("demo", dry_run=True)):
        assert result.dry_run and result.stopped == ()
        assert "[dry-run]" in result.message
    assert all(p.poll() is None for p in manual)
    assert guard.status("demo").profiles["demo"]["state"] == "running"  # not paused
    assert read_events(redis_client) == []


def test_a_lock_lost_before_acting_touches_nothing(workspace: Workspace, redis_client):
    workspace.add_profile(stop_adopted=True)
    table = workspace.table(CountingTable)
    guard = workspace.guard(redis_client, table)
    manual = [workspace.hand_started() for _ in range(2)]
    poll_for(lambda: len(running(guard)) == 2)
    # the lock expires between the scan and the action
    table.after_discover = lambda: redis_client.delete(keys.lock(workspace.host_id, "demo"))
    with pytest.raises(LockLost, match="nothing was touched"):
        guard.enforce("demo")
    assert all(p.poll() is None for p in manual)


def test_redis_unreachable_fails_clearly_and_kills_nothing(workspace: Workspace, redis_client):
    workspace.add_profile()
    manual = [workspace.hand_started() for _ in range(2)]
    config = workspace.config()
    dead = redis_client_for(f"redis://127.0.0.1:{free_port()}/0", config.settings)
    guard = Guard(dead, config)
    for action in (lambda: guard.enforce("demo"), lambda: guard.ensure("demo"),
                   lambda: guard.stop_all("demo"), guard.sweep):
        with pytest.raises(RedisUnavailable, match="nothing was touched"):
            action()
    assert all(p.poll() is None for p in manual)


def test_unknown_profile_is_refused_before_anything_happens(workspace: Workspace, redis_client):
    workspace.add_profile()
    guard = workspace.guard(redis_client)
    with pytest.raises(UnknownProfile, match="unknown profile 'nope'"):
        guard.ensure("nope")
    assert redis_client.keys(keys.ALL) == []


def test_a_sigkilled_lock_holder_delays_the_next_caller_by_at_most_lock_expire(
        workspace: Workspace, redis_client):
    # The holder spawns a worker and waits out a long start window while holding the lock.
    workspace.add_profile(start_seconds=30)
    config_path = workspace.write_config()
    holder = workspace.tracker.popen([sys.executable, "-m", "workerguard.cli", "ensure", "demo",
                                      "--local", "--config", str(config_path)])
    key = keys.lock(workspace.host_id, "demo")
    guard = workspace.guard(redis_client)
    poll_for(lambda: redis_client.exists(key) and running_the_worker(guard), timeout=20,
             message="holder to take the lock and spawn")
    holder.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    holder.wait(5)
    waiter = ProfileLock(redis_client, workspace.host_id, "demo", expire=2)
    assert waiter.acquire_within(10)
    waited = time.monotonic() - killed_at
    waiter.release()
    assert waited <= 2 + 1.0, f"waited {waited:.2f} s for a lock with expire=2"
    result = guard.ensure("demo")
    assert result.action == "already_running"  # the orphaned spawn is counted: no duplicate
    assert len(result.running) == 1


def test_a_clock_set_back_an_hour_does_not_extend_the_backoff(workspace: Workspace, redis_client):
    workspace.add_profile("demo", "--exit-code", "3", start_retries=1, backoff_max=4)
    now = [1000.0]
    guard = Guard(redis_client, workspace.config(), clock=lambda: now[0])
    assert guard.ensure("demo").contract()["backoff"] == {"failures": 1, "next_attempt": 1001.0}
    now[0] = 1000.5 - 3600  # the clock is set back an hour, half a second later
    blocked = guard.ensure("demo").contract()
    assert blocked["action"] == "backoff"
    assert blocked["backoff"]["next_attempt"] == now[0] + 1  # re-anchored: 1 s from now
    assert guard.status("demo").profiles["demo"]["state"] == "backoff"
    now[0] += 1.01  # one second of the new clock later, not an hour
    assert guard.ensure("demo").action == "start_failed"  # it was tried again


def test_crash_loop_backs_off_exponentially_and_force_overrides(workspace: Workspace,
                                                                redis_client):
    workspace.add_profile("demo", "--exit-code", "3", start_retries=2, backoff_max=4)
    now = [1000.0]
    guard = Guard(redis_client, workspace.config(), clock=lambda: now[0])
    first = guard.ensure("demo").contract()
    assert first["action"] == "start_failed" and not first["ok"]
    assert "exited with code 3" in first["error"] and "failing with 3" in first["error"]
    second = guard.ensure("demo").contract()
    assert second["action"] == "start_failed"
    assert second["backoff"] == {"failures": 2, "next_attempt": 1001.0}
    blocked = guard.ensure("demo").contract()
    assert blocked["action"] == "backoff" and blocked["started"] == []
    assert "next attempt in 1 s" in blocked["message"]
    assert guard.sweep()[0].action == "backoff"
    assert guard.status("demo").profiles["demo"]["state"] == "backoff"
    now[0] = 1001.5
    assert guard.ensure("demo").contract()["backoff"]["next_attempt"] == 1001.5 + 2
    forced = guard.ensure("demo", force=True).contract()
    assert forced["action"] == "start_failed"
    assert forced["backoff"]["next_attempt"] == 1001.5 + 4  # capped by backoff_max
    # A working command resets the count.
    workspace.profiles["demo"]["command"] = workspace.sleeper_profile()["command"]
    fixed = Guard(redis_client, workspace.config(), clock=lambda: now[0])
    assert fixed.ensure("demo", force=True).action == "started"
    assert fixed.status("demo").profiles["demo"]["backoff"] is None


def test_a_sweep_that_converged_in_parallel_leaves_no_idle_connection_open(
        workspace: Workspace, redis_server: RedisServer, redis_client):
    """A pool keeps every connection it ever opened: the parallel converges of one sweep
    (a cold start) would hold one connection per profile to Redis for ever, and Redis's
    ``maxclients`` is shared by the fleet (docs/benchmarks.md, ``redis_idle``)."""
    for i in range(6):
        name = workspace.add_profile(f"p{i}")
        workspace.profiles[name]["command"][-1] = f"{workspace.token}-{i}"
        workspace.profiles[name]["match"] = rf"sleeper\.py --tag {workspace.token}-{i}(\s|$)"
    client = redis.Redis.from_url(redis_server.url, client_name="guard-under-test")
    try:
        guard = workspace.guard(client)
        assert [r.action for r in guard.sweep()] == ["started"] * 6

        def held() -> list[dict[str, str]]:
            return [c for c in redis_client.client_list() if c["name"] == "guard-under-test"]

        # the guard closed them; Redis drops them from its list once it reads the close,
        # which on a loaded machine is a moment later
        poll_for(lambda: len(held()) <= 1, timeout=10, message=f"idle connections closed: {held()}")
    finally:
        client.close()
