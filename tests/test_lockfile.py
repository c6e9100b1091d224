"""Lock files (``workers/lockfile.py``): opened safely, taken at once or by a deadline, never
for ever; the log rotation's lock through them.

Two descriptors of one process conflict like two processes: a ``flock`` belongs to the
open file, not to the process.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import pytest

from workerguard.errors import HostError
from workerguard.workers import logs
from workerguard.workers.lockfile import (
    holder_pid,
    lock_by,
    open_lock_file,
    opened_lock_file,
    record_holder,
    try_lock,
    unlock,
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock: POSIX")


def test_a_held_lock_is_waited_for_until_the_deadline_and_then_taken_once_freed(tmp_path: Path):
    path = tmp_path / "x.lock"
    with opened_lock_file(path, "test lock") as holder, opened_lock_file(path, "test lock") as waiter:
        assert try_lock(holder)
        record_holder(holder)
        began = time.monotonic()
        assert not lock_by(waiter, began + 0.2)
        assert 0.2 <= time.monotonic() - began < 2
        assert holder_pid(waiter) == os.getpid()
        unlock(holder)
        assert lock_by(waiter, time.monotonic() + 1)
        assert not try_lock(holder)
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_shared_locks_coexist_and_keep_an_exclusive_one_out(tmp_path: Path):
    path = tmp_path / "users.lock"
    with (opened_lock_file(path, "test lock") as one, opened_lock_file(path, "test lock") as two,
          opened_lock_file(path, "test lock") as owner):
        assert try_lock(one, shared=True) and try_lock(two, shared=True)
        assert not try_lock(owner)
        unlock(one)
        unlock(two)
        assert try_lock(owner)


def test_a_symlink_or_a_hard_link_is_refused_and_its_target_untouched(tmp_path: Path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "x.lock"
    link.symlink_to(victim)
    with pytest.raises(HostError, match=rf"^refusing test lock {link}: it is a symlink$"):
        open_lock_file(link, "test lock")
    link.unlink()
    os.link(victim, link)
    with pytest.raises(HostError, match=rf"^refusing test lock {link}: it has 2 hard links$"):
        open_lock_file(link, "test lock")
    assert victim.read_text() == "precious\n"


def test_a_rotation_waits_for_another_at_most_rotation_wait_then_is_skipped_with_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    log = tmp_path / "demo.log"
    log.write_bytes(b"x" * 200)
    monkeypatch.setattr(logs, "ROTATION_WAIT", 0.3)
    with opened_lock_file(tmp_path / ".demo.log.rotate", "test lock") as other:
        assert try_lock(other)  # another guard process rotates this file
        began = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="workerguard.logs"):
            assert logs.rotate_all([log], max_bytes=100, backups=1) == []
        assert 0.3 <= time.monotonic() - began < 3
        assert f"another rotation of {log} still holds" in caplog.text
        assert log.stat().st_size == 200
    assert logs.rotate_all([log], max_bytes=100, backups=1) == [log]


def test_a_rotation_lock_that_is_a_symlink_is_refused_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    log = tmp_path / "demo.log"
    log.write_bytes(b"x" * 200)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / ".demo.log.rotate").symlink_to(victim)
    with caplog.at_level(logging.WARNING, logger="workerguard.logs"):
        assert logs.rotate_all([log], max_bytes=100, backups=1) == []
    assert "it is a symlink" in caplog.text
    assert victim.read_text() == "precious\n" and log.stat().st_size == 200
