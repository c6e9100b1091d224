"""Trust under faults, the points not covered elsewhere (issue 11, points 6-10): backoff that
cannot race, per-profile isolation in sweeps, parallel cold start, bounded caches, host
errors that do not count as crashes."""

from __future__ import annotations

import threading
import time
from typing import Any

from tests.conftest import Workspace
from tests.support import events, poll_for, tiny_tmpfs
from workerguard.ops.connect import redis_client as client_for
from workerguard.policy.outcome import Outcome
from workerguard.workers.discover import BoundedCache, _Classifier
from workerguard.workers.host import HostProcesses, SpawnOutcome


def test_eight_concurrent_ensures_of_a_failing_worker_make_one_failed_start(
        workspace: Workspace, redis_client):
    workspace.add_profile("demo", "--exit-code", "3", start_retries=1, backoff_max=60)
    config_path = workspace.write_config()
    barrier = threading.Barrier(8)
    results: list[Outcome] = []

    def caller() -> None:  # each like a CLI process: its own guard and connection
        from workerguard.config import load_config
        from workerguard.policy.guard import Guard

        config = load_config(config_path, environ={})
        client = client_for(workspace.redis_url, config.settings)
        guard = Guard(client, config, clock=lambda: 1000.0)  # every waiter inside the 1 s backoff
        barrier.wait()
        results.append(guard.ensure("demo"))
        client.close()

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    actions = sorted(r.action for r in results)
    assert actions == ["backoff"] * 7 + ["start_failed"], actions  # the waiters read its backoff
    assert len(events(redis_client, "start_failed")) == 1


class ExplodingTable(HostProcesses):
    """Raises an error nobody planned for when asked to start ``bad``."""

    def spawn(self, profile: Any, count: int, taken: Any = (), leases: Any = ()) -> SpawnOutcome:
        if profile.name == "bad":
            raise RuntimeError("something nobody planned for")
        return super().spawn(profile, count, taken, leases)


def test_a_profile_raising_an_unexpected_error_does_not_stop_the_sweep(
        workspace: Workspace, redis_client):
    for name in ("alpha", "bad", "omega"):
        workspace.add_profile(name)
        del workspace.profiles[name]["match"]  # one command, three profiles: none adopts
    guard = workspace.guard(redis_client, workspace.table(ExplodingTable))
    results = {r.profile: r.contract() for r in guard.sweep()}
    assert results["bad"]["action"] == "error" and "nobody planned" in results["bad"]["error"]
    assert results["alpha"]["action"] == results["omega"]["action"] == "started", results
    assert len(workspace.running("alpha")) == len(workspace.running("omega")) == 1


def test_a_hundred_profiles_start_in_parallel(workspace: Workspace, redis_client):
    for i in range(100):
        workspace.profiles[f"p{i:03d}"] = {"command": ["sleep", f"{86400 + i}"],
                                          "start_seconds": 1.0, "stop_timeout": 2}
    guard = workspace.guard(redis_client)
    began = time.monotonic()
    results = guard.sweep()
    took = time.monotonic() - began
    assert [r.action for r in results] == ["started"] * 100
    # Serial, each start waits its own start_seconds: 100 s. In parallel (up to 128 at a
    # time): one window of 1 s plus the spawning itself (the benchmark's coldstart row).
    assert took < 50, f"100 profiles took {took:.1f} s (serial: over 100 s)"
    print(f"\n100 profiles up in {took:.1f} s")


def test_caches_are_bounded_by_bytes_not_only_by_entries():
    cache: BoundedCache[str, int] = BoundedCache(max_entries=50_000, max_bytes=1_000_000,
                                                 size=len)
    for i in range(600):  # unique 100 kB command lines: 60 MB if nothing were dropped
        cache.put(f"{i:06d}" + "x" * 100_000, i)
    assert cache.bytes <= 1_000_000 and len(cache) <= 10
    hit, value = cache.get(f"{599:06d}" + "x" * 100_000)
    assert hit and value == 599  # the newest stays
    assert _Classifier([]).cache.max_bytes <= 8_000_000


def test_a_full_log_disk_or_a_missing_log_dir_is_a_host_error_not_a_crash(
        workspace: Workspace, redis_client, tmp_path):
    workspace.add_profile(start_retries=1)
    with tiny_tmpfs(inodes=2) as full:
        (full / "logs").mkdir()  # the last inode: the log file cannot be created
        workspace.guard_settings["home"] = str(full)
        guard = workspace.guard(redis_client)
        for _ in range(3):
            result = guard.ensure("demo").contract()
            assert result["action"] == "start_failed"
            assert "No space left on device" in result["error"]
            assert "backoff" not in result, result  # the host failed, not the worker
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the home directory should be")
    workspace.guard_settings["home"] = str(blocked)
    result = workspace.guard(redis_client).ensure("demo").contract()
    assert result["action"] == "start_failed" and "backoff" not in result, result
    assert guard.status("demo").profiles["demo"]["backoff"] is None
    assert workspace.running() == []
    workspace.guard_settings["home"] = str(workspace.home)
    assert workspace.guard(redis_client).ensure("demo").action == "started"
    poll_for(lambda: len(workspace.running()) == 1)
