"""Identity free of the wall clock: a process is (pid, start ticks since boot, boot id).

psutil 7 derives ``create_time()`` from ``btime``, which follows the wall clock: a step
(NTP/chrony, ``date -s``, VM resume) moved every instance's create_time, and identity
compared it within 10 ms, so every instance became "another process". The unit tests
inject the wall clock and psutil's boot time (+1 h, -1 h) and show that nothing of the
identity moves; the slow test steps the real clock, in both identity modes, with a real
guard. Records and known instances of the format before start ticks are treated as lost
and found again, never a crash.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from tests.conftest import Workspace
from tests.support import SLEEPER, ProcessTracker, poll_for
from tests.test_identity import mode  # noqa: F401 (the fixture: both identity modes)
from workerguard.config import Profile
from workerguard.store import keys
from workerguard.store.known_instances import decode_known, encode_known
from workerguard.workers.discover import (
    SPAWN_GRACE,
    Scan,
    fingerprint,
    identify,
    scan_processes,
    verify_known,
)
from workerguard.workers.identity import age_seconds, alive, boot_id, start_of
from workerguard.workers.model import Instance
from workerguard.workers.registry import Record

LINUX = sys.platform == "linux"
HOUR = 3600.0


def a_sleeper(tracker: ProcessTracker, tag: str) -> tuple[int, Profile]:
    command = (sys.executable, str(SLEEPER), "--tag", tag)
    proc = tracker.popen(list(command))
    poll_for(lambda: psutil.Process(proc.pid).cmdline(), message="the process to start")
    return proc.pid, Profile(name="demo", command=command)


@contextlib.contextmanager
def wall_clock_moved(monkeypatch: pytest.MonkeyPatch, step: float) -> Iterator[None]:
    """The wall clock and psutil's boot time (``btime``, what its create_time adds to
    the ticks) ``step`` seconds off, as after a clock step, in this process."""
    from psutil import _pslinux

    real_boot, real_time = _pslinux.boot_time, time.time
    with monkeypatch.context() as patch:
        patch.setattr(_pslinux, "boot_time", lambda: real_boot() + step)
        patch.setattr(time, "time", lambda: real_time() + step)
        yield


@pytest.mark.skipif(not LINUX, reason="/proc and psutil's Linux boot time")
@pytest.mark.parametrize("step", [HOUR, -HOUR], ids=["plus-1h", "minus-1h"])
def test_a_step_of_the_wall_clock_changes_no_identity(tracker: ProcessTracker,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      step: float) -> None:
    pid, profile = a_sleeper(tracker, f"clock{int(step)}")
    start = start_of(pid)
    assert start is not None
    created, age = psutil.Process(pid).create_time(), age_seconds(start)
    record = Record("h1", "demo", "ab" * 16, pid, start, time.time(), fingerprint(profile),
                    ((pid, start),), confirmed=True)
    known = encode_known(profile, [Instance("demo", pid, start, instance_id="ab" * 16)])
    with wall_clock_moved(monkeypatch, step):
        # the injection works: psutil's view of the very same process moved by the step
        assert abs(psutil.Process(pid).create_time() - created - step) < 1.0
        # ... and nothing that decides identity did
        assert start_of(pid) == start and alive(pid, start)
        scan = scan_processes([pid])
        assert scan.processes[pid].start == start
        found = identify(scan, "h1", [profile], configured={"demo": fingerprint(profile)},
                         records=[record], groups={}, tree=None)
        assert [(i.pid, i.start, i.instance_id) for i in found.instances["demo"]] == \
            [(pid, start, "ab" * 16)]
        assert found.gone == [] and found.leftovers == [] and found.updates == []
        remembered = decode_known(profile, known)
        assert remembered is not None and verify_known(remembered) == remembered
        assert 0.0 <= age_seconds(start) - age < 60.0  # on the boot clock: no jump of an hour


@pytest.mark.parametrize("step", [HOUR, -HOUR, 0.0], ids=["plus-1h", "minus-1h", "no-step"])
def test_a_step_of_the_wall_clock_changes_no_empty_groups_age(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             step: float) -> None:
    """An empty instance group is a start in progress (kept) until it has been seen empty
    for ``SPAWN_GRACE`` seconds of the monotonic clock, whatever the wall clock did: its
    ctime (a wall-clock time) made every empty group old after a step of +1 h (a start in
    progress lost its group) and young for an hour after -1 h."""
    group = tmp_path / "instance-group"
    group.mkdir()
    (group / "cgroup.procs").write_text("")  # an empty group, as cgroups.members reads it
    profile = Profile(name="demo", command=("x",))

    def gone(taken_at: float) -> list[tuple[str, str, Path | None]]:
        return identify(Scan(processes={}, taken_at=taken_at), "h1", [profile],
                        configured={"demo": fingerprint(profile)}, records=[],
                        groups={("demo", "g"): group}, tree=None).gone

    now = time.monotonic()
    with wall_clock_moved(monkeypatch, step):
        assert gone(now) == []  # first seen empty: a start may be filling it
        assert gone(now + SPAWN_GRACE - 1) == []
        assert gone(now + SPAWN_GRACE) == [("demo", "g", group)]


def test_a_known_instance_of_another_boot_or_of_the_older_format_is_not_trusted() -> None:
    profile = Profile(name="demo", command=("x",))
    ours = encode_known(profile, [Instance("demo", 1, 100, instance_id="i")])
    assert decode_known(profile, ours) == [Instance("demo", 1, 100, instance_id="i",
                                                    members=((1, 100),))]
    other_boot = json.loads(ours) | {"boot": "another-boot"}
    assert decode_known(profile, json.dumps(other_boot)) is None
    older = {"fp": json.loads(ours)["fp"], "instances": [[1, 1_796_447_530.89, "i", 0]]}
    assert decode_known(profile, json.dumps(older)) is None
    float_start = json.loads(ours)
    float_start["instances"][0][1] = 100.5
    assert decode_known(profile, json.dumps(float_start)) is None


def _to_older_format(path: Path) -> None:
    """Rewrite a record as a workerguard before start ticks wrote it."""
    data = json.loads(path.read_text())
    data["create_time"] = data.pop("start") / 100 + psutil.boot_time()
    data["members"] = [[pid, start / 100 + psutil.boot_time()] for pid, start in data["members"]]
    del data["boot"]
    path.write_text(json.dumps(data))


def test_records_and_known_instances_of_the_older_format_are_found_again_never_a_crash(
        workspace: Workspace, redis_client: redis.Redis, mode: str) -> None:  # noqa: F811
    workspace.add_profile()
    guard = workspace.guard(redis_client)
    [worker] = guard.ensure("demo").started
    [path] = workspace.config().settings.registry_dir.glob(f"{workspace.host_id}/demo/*.json")
    _to_older_format(path)
    redis_client.set(keys.known(workspace.host_id, "demo"), json.dumps(
        {"fp": fingerprint(workspace.config().profile("demo"), with_match=True),
         "instances": [[worker, psutil.Process(worker).create_time(), path.stem, 0]]}))
    assert guard.ensure("demo").contract()["running"] == [worker]
    [swept] = guard.sweep()
    assert swept.action == "already_running" and [i.pid for i in swept.running] == [worker]
    assert list(guard.status("demo").running) == [worker]
    rewritten = json.loads(path.read_text())  # found again (group or mark), in today's format
    assert rewritten["pid"] == worker and rewritten["boot"] == boot_id()
    assert rewritten["start"] == start_of(worker)


# --- the real clock ----------------------------------------------------------------------
_RESTORER = textwrap.dedent("""
    import sys, time
    wall, mono, limit = (float(a) for a in sys.argv[1:])
    import select
    select.select([sys.stdin], [], [], limit)  # the test ends (EOF), dies, or overruns
    time.clock_settime(time.CLOCK_REALTIME, wall + time.clock_gettime(time.CLOCK_MONOTONIC) - mono)
""")


@contextlib.contextmanager
def real_clock_stepped(step: float, limit: float = 60.0) -> Iterator[None]:
    """Step the machine's wall clock by ``step`` seconds for at most ``limit`` seconds.

    The clock is set back to the true time (the time before the step plus what the
    monotonic clock counted since) in ``finally``, and by a watchdog process as well if
    this process dies or the block overruns ``limit``: the machine is shared."""
    wall, mono = time.clock_gettime(time.CLOCK_REALTIME), time.clock_gettime(time.CLOCK_MONOTONIC)
    watchdog = subprocess.Popen([sys.executable, "-c", _RESTORER, str(wall), str(mono), str(limit)],
                                stdin=subprocess.PIPE)
    try:
        time.clock_settime(time.CLOCK_REALTIME, wall + step)
        yield
    finally:
        true = wall + time.clock_gettime(time.CLOCK_MONOTONIC) - mono
        time.clock_settime(time.CLOCK_REALTIME, true)
        assert watchdog.stdin is not None
        watchdog.stdin.close()
        watchdog.wait(30)


def _can_set_the_clock() -> bool:
    try:
        time.clock_settime(time.CLOCK_REALTIME, time.clock_gettime(time.CLOCK_REALTIME))
    except (OSError, AttributeError):
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not LINUX or not _can_set_the_clock(), reason="needs CAP_SYS_TIME on Linux")
def test_a_step_of_the_real_clock_kills_nothing_and_starts_nothing(
        workspace: Workspace, redis_client: redis.Redis, mode: str) -> None:  # noqa: F811
    workspace.add_profile(min_workers=2, max_workers=2)
    guard = workspace.guard(redis_client)
    workers = sorted(guard.ensure("demo").started)
    assert len(workers) == 2
    starts = {pid: start_of(pid) for pid in workers}
    created = psutil.Process(workers[0]).create_time()
    for step in (HOUR, -HOUR):
        with real_clock_stepped(step):  # psutil sees every process move by the step ...
            assert abs(psutil.Process(workers[0]).create_time() - created - step) < 5.0
            for _ in range(3):
                [swept] = guard.sweep()
                assert swept.action == "already_running", swept.contract()
                assert sorted(i.pid for i in swept.running) == workers
                ensured = guard.ensure("demo").contract()
                assert ensured["action"] == "already_running" and sorted(ensured["running"]) == workers
            assert sorted(guard.status("demo").running) == workers
        assert all(alive(pid, start) for pid, start in starts.items() if start is not None)
    [swept] = guard.sweep()
    assert swept.action == "already_running" and sorted(i.pid for i in swept.running) == workers
