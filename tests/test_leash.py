"""The leash (workers/leash.py) as shipped: a real ``python -I leash.py`` over real workers,
in a real cgroup where the machine has one, and in a process group otherwise."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support import SLEEPER, ProcessTracker, alive, poll_for, short_tmpdir
from workerguard.workers import cgroup_layout, cgroups, leash

LEASH = Path(leash.__file__)
# A worker that leaves a daemon behind (double fork, new session): only the group finds it.
DAEMONISING = ["/bin/sh", "-c", "setsid sleep 300 & exec sleep 300"]


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def write_deadline(path: Path, deadline: float) -> None:
    """As the guard does: a temp file renamed over the lease file."""
    temp = path.with_suffix(".tmp")
    temp.write_text(f"{deadline:.6f}")
    os.replace(temp, path)


@pytest.fixture
def lease_dir() -> Iterator[Path]:
    directory = short_tmpdir("wg-leash-")
    yield directory
    for child in directory.iterdir():
        child.unlink()
    directory.rmdir()


@pytest.fixture
def group() -> Iterator[Path]:
    root = cgroup_layout.decide().root
    tree = cgroups.CgroupTree(root) if root is not None else None
    if tree is None or not tree.usable():
        if os.environ.get("CI"):
            raise AssertionError("cgroup v2 is not usable here")  # CI fails, never skips
        pytest.skip("no writable cgroup v2 hierarchy")
    assert root is not None
    path = root / f"leash-test-{uuid.uuid4().hex[:10]}"
    path.mkdir()
    yield path
    cgroups.kill(path)
    cgroups.remove(path)


def start(tracker: ProcessTracker, lease_file: Path, argv: list[str], *, group: Path | None = None,
          grace: float = 0.0, stop: str = "SIGTERM") -> subprocess.Popen[bytes]:
    """The leash as the trampoline would run it: isolated Python, its own session, already
    in the instance's group."""
    command = [sys.executable, "-I", str(LEASH), "--lease-file", str(lease_file), "--grace", str(grace),
               "--signal", stop, *(["--group", str(group)] if group else []), "--", *argv]
    if group is not None:
        command = ["/bin/sh", "-c", f'echo $$ > "{group}/cgroup.procs" && exec "$@"', "sh", *command]
    return tracker.popen(command, start_new_session=True)


def worker_pids(proc: subprocess.Popen[bytes]) -> list[int]:
    return [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]


def test_the_worker_runs_while_renewed_and_its_status_is_the_leashs(tracker: ProcessTracker, lease_dir: Path):
    lease_file = lease_dir / "lease"
    write_deadline(lease_file, boottime() + 60)
    proc = start(tracker, lease_file, ["/bin/sh", "-c", "sleep 0.5; exit 3"])
    assert proc.wait(30) == 3
    assert not (lease_dir / "lease.fenced").exists()


def test_a_worker_killed_by_a_signal_is_reported_as_that_signal(tracker: ProcessTracker, lease_dir: Path):
    lease_file = lease_dir / "lease"
    write_deadline(lease_file, boottime() + 60)
    proc = start(tracker, lease_file, [sys.executable, str(SLEEPER)])
    [worker] = poll_for(lambda: worker_pids(proc), timeout=30, message="the worker")
    os.kill(worker, signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL


def test_stop_signals_are_forwarded_to_the_worker(tracker: ProcessTracker, lease_dir: Path):
    lease_file = lease_dir / "lease"
    write_deadline(lease_file, boottime() + 60)
    proc = start(tracker, lease_file, [sys.executable, str(SLEEPER)])
    poll_for(lambda: worker_pids(proc), timeout=30, message="the worker")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == -signal.SIGTERM  # the sleeper dies of it; the leash says so


def test_a_killed_leash_takes_its_worker_with_it(tracker: ProcessTracker, lease_dir: Path):
    lease_file = lease_dir / "lease"
    write_deadline(lease_file, boottime() + 60)
    proc = start(tracker, lease_file, [sys.executable, str(SLEEPER), "--ignore-term"])
    [worker] = poll_for(lambda: worker_pids(proc), timeout=30, message="the worker")
    proc.kill()
    poll_for(lambda: not alive(worker), timeout=30, message="the worker to die with its leash")


def test_at_the_deadline_the_whole_group_dies_even_a_daemon_that_left_the_session(
        tracker: ProcessTracker, lease_dir: Path, group: Path):
    lease_file = lease_dir / "lease"
    write_deadline(lease_file, boottime() + 60)
    proc = start(tracker, lease_file, DAEMONISING, group=group, grace=0.5)
    poll_for(lambda: len(cgroups.members(group)) >= 3, timeout=30, message="leash and two sleeps")
    write_deadline(lease_file, boottime() + 1.0)  # no renewal acknowledged any more
    proc.wait(30)
    poll_for(lambda: cgroups.members(group) == [], timeout=10, message="the group to empty")
    marker = json.loads((lease_dir / "lease.fenced").read_text())
    assert marker["graceful"] is True  # SIGTERM first, at deadline - grace


def test_a_worker_ignoring_its_stop_signal_is_still_gone_at_the_deadline(
        tracker: ProcessTracker, lease_dir: Path, group: Path):
    lease_file = lease_dir / "lease"
    write_deadline(lease_file, boottime() + 60)
    proc = start(tracker, lease_file, [sys.executable, str(SLEEPER), "--ignore-term", "--children", "2"],
                 group=group, grace=0.3)
    poll_for(lambda: len(cgroups.members(group)) >= 4, timeout=30, message="leash, worker, children")
    deadline = boottime() + 0.8
    write_deadline(lease_file, deadline)
    proc.wait(30)
    # cgroup.kill signals every member; the leash (one of them) can be reaped before the others
    poll_for(lambda: cgroups.members(group) == [], timeout=10, message="the group to empty")
    assert boottime() >= deadline  # never before its deadline


def test_a_lost_lease_fences_at_once(tracker: ProcessTracker, lease_dir: Path, group: Path):
    lease_file = lease_dir / "lease"
    write_deadline(lease_file, boottime() + 60)
    proc = start(tracker, lease_file, [sys.executable, str(SLEEPER)], group=group)
    poll_for(lambda: worker_pids(proc), timeout=30, message="the worker")
    write_deadline(lease_file, 0)  # the guard found the key gone or someone else's
    proc.wait(30)
    # cgroup.kill signals every member; the leash (one of them) can be reaped before the others
    poll_for(lambda: cgroups.members(group) == [], timeout=10, message="the group to empty")


def test_no_lease_file_means_no_lease(tracker: ProcessTracker, lease_dir: Path):
    proc = start(tracker, lease_dir / "absent", [sys.executable, str(SLEEPER)])
    assert proc.wait(30) == -signal.SIGKILL  # its process group, itself included
    assert (lease_dir / "absent.fenced").exists()


def test_without_a_group_the_process_group_is_killed(tracker: ProcessTracker, lease_dir: Path):
    lease_file = lease_dir / "lease"
    write_deadline(lease_file, boottime() + 60)
    proc = start(tracker, lease_file, [sys.executable, str(SLEEPER), "--ignore-term", "--children", "1"])
    poll_for(lambda: len(worker_pids(proc)) >= 2, timeout=30, message="worker and child")
    pids = worker_pids(proc)
    write_deadline(lease_file, boottime() + 0.3)
    assert proc.wait(30) == -signal.SIGKILL
    poll_for(lambda: not any(alive(pid) for pid in pids), timeout=10, message="the process group to die")


def test_an_unreadable_lease_file_keeps_the_last_deadline(tracker: ProcessTracker, lease_dir: Path):
    lease_file = lease_dir / "lease"
    write_deadline(lease_file, boottime() + 1.0)
    proc = start(tracker, lease_file, [sys.executable, str(SLEEPER)])
    poll_for(lambda: worker_pids(proc), timeout=30, message="the worker")
    lease_file.write_text("half-writ")  # as a torn write would look: not a number
    assert proc.wait(30) == -signal.SIGKILL  # the deadline it had read still held


def test_what_an_exited_worker_left_in_its_group_dies_with_the_leash(
        tracker: ProcessTracker, lease_dir: Path, group: Path):
    lease_file = lease_dir / "lease"
    write_deadline(lease_file, boottime() + 60)
    proc = start(tracker, lease_file, ["/bin/sh", "-c", "setsid sleep 300 & sleep 0.5; exit 4"], group=group)
    assert proc.wait(30) == 4
    assert cgroups.members(group) == []  # the daemon did not outlive its instance
    assert not (lease_dir / "lease.fenced").exists()  # an exit, not a fence
