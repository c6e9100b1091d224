"""Worker logs per instance slot, and a rotation that never stalls a spawn.

Real guards and real workers: two instances of one profile write two files, and a failed
start quotes its own lines only (not the other instance's, not an earlier instance's of
its slot). A real process holding a log's rotation lock holds up neither a
spawn of that profile nor the rotation of any other log, and is said once.
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import pytest
import redis

from tests.conftest import Workspace
from tests.support import poll_for
from workerguard.workers.lockfile import opened_lock_file, try_lock
from workerguard.workers.logs import log_path, profile_logs, rotate_all

SLOT_WORKER = ('i=$WORKERGUARD_INDEX; for n in 1 2 3 4 5 6 7 8 9 10 11 12; do '
               'echo "slot $i pid $$ line $n"; done; '
               '[ "$i" = 1 ] && exit 3; exec sleep 3600')
"""Writes 12 lines naming its slot and pid; slot 1 then fails, slot 0 keeps running."""
HOLD_FLOCK = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600); "
              "fcntl.flock(fd, fcntl.LOCK_EX); time.sleep(3600)")
"""Another process's rotation that never ends (a hung disk): it holds the lock until killed."""


def test_two_instances_write_their_own_logs_and_a_failed_start_quotes_only_its_own_lines(
        workspace: Workspace, redis_client: redis.Redis):
    workspace.profiles["demo"] = {"command": ["/bin/sh", "-c", SLOT_WORKER], "min_workers": 2,
                                  "max_workers": 2, "start_seconds": 2.0, "stop_timeout": 3}
    guard = workspace.guard(redis_client)
    logs = workspace.home / "logs"

    first = guard.ensure("demo")
    [running] = first.started
    [failed] = first.failures
    assert failed.returncode == 3 and failed.pid is not None
    quoted = failed.describe()
    assert f"slot 1 pid {failed.pid} line 12" in quoted
    assert "slot 0" not in quoted, quoted
    assert profile_logs(logs, "demo") == [log_path(logs, "demo", 0), log_path(logs, "demo", 1)]
    assert "slot 1" not in log_path(logs, "demo", 0).read_text()
    assert f"slot 0 pid {running}" not in log_path(logs, "demo", 1).read_text()

    again = guard.ensure("demo", force=True)  # slot 1 again: its file holds the first one's lines
    [failed_again] = again.failures
    assert failed_again.pid not in (None, failed.pid)
    quoted = failed_again.describe()
    assert f"slot 1 pid {failed_again.pid} line 1" in quoted
    assert f"pid {failed.pid}" not in quoted and "slot 0" not in quoted, quoted


def over_the_cap(path: Path, cap: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"old line\n" * (cap // 9 + 10))


def test_a_held_rotation_lock_stalls_neither_a_spawn_nor_other_logs_and_is_said_once(
        workspace: Workspace, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture):
    cap = 1024
    workspace.add_profile("demo")
    workspace.add_profile("other")
    workspace.guard_settings.update(log_max_bytes=cap, log_backups=1)
    guard = workspace.guard(redis_client)
    logs = workspace.home / "logs"
    stuck, free = log_path(logs, "demo", 0), log_path(logs, "other", 0)
    over_the_cap(stuck, cap)
    over_the_cap(free, cap)
    lock = stuck.with_name(f".{stuck.name}.rotate")
    holder = workspace.tracker.popen([sys.executable, "-c", HOLD_FLOCK, str(lock)])

    def held() -> bool:
        with opened_lock_file(lock, "rotation lock") as fd:
            return not try_lock(fd)

    poll_for(held, message="the holder to take the rotation lock")
    sweep_rotation = threading.Thread(  # a sweep's rotation, willing to wait two minutes
        target=rotate_all, args=([stuck], cap, 1), kwargs={"wait": 120.0}, daemon=True)
    sweep_rotation.start()

    with caplog.at_level(logging.DEBUG, logger="workerguard.logs"):
        assert guard.ensure("demo").started, "the spawn went on without its rotation"
        assert guard.ensure("other").started
        assert free.with_name(f"{free.name}.1").exists(), "another log rotates meanwhile"
        assert sweep_rotation.is_alive(), "the spawns did not wait for the stuck rotation"
        assert guard.stop_all("demo").ok and guard.ensure("demo").started
    assert stuck.read_bytes().startswith(b"old line\n"), "not rotated while the lock is held"
    said = [r for r in caplog.records
            if r.name == "workerguard.logs" and r.levelno == logging.WARNING and str(stuck) in r.getMessage()]
    assert len(said) == 1 and "skipped this time" in said[0].getMessage(), said

    holder.kill()
    holder.wait(10)
    sweep_rotation.join(60)
    assert not sweep_rotation.is_alive()
    assert stuck.with_name(f"{stuck.name}.1").read_bytes().startswith(b"old line\n")
