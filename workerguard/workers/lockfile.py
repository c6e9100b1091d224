"""Lock files: a kernel lock (``flock``) on a file opened safely, released when its holder dies.

Every kernel lock of workerguard is taken here: the host fence (``fence``), one log
rotation at a time (``logs``), the embedded Redis server's ``users``, ``start`` and
``supervisor`` locks (``ops.embedded``) and one ``workerguard up`` per home
(``ops.runners``). None needs a stale timeout: the kernel drops a lock when the last
descriptor of its holder closes, a crash included.

A lock file is opened without following a symlink, close-on-exec (a worker spawned
meanwhile does not inherit, and so cannot keep, the lock), and must be a regular file of
this user with one link; otherwise ``HostError`` names it. A lock is taken at once
(``try_lock``) or by a ``time.monotonic()`` deadline (``lock_by``), never open-ended. The
holder may write its pid into the file (``record_holder``); ``holder_pid`` names the
holder from ``/proc/locks`` (which also knows holders that wrote nothing), else from the
file.

On Windows (untested here: no Windows host in CI) ``msvcrt`` locks the file's first byte,
exclusively only: there is no shared lock (the embedded server, the one user of shared
locks, is POSIX-only).
"""

from __future__ import annotations

import errno
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from workerguard.errors import HostError
from workerguard.timing import LOCK_POLL_FIRST, LOCK_POLL_MAX
from workerguard.workers.rundir import describe, owned_file_problem

_FLAGS = (os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
          | getattr(os, "O_NOINHERIT", 0))


def open_lock_file(path: Path, what: str) -> int:
    """A descriptor on the lock file ``path`` (created 0600), checked as the module says.

    ``what`` names the lock in the ``HostError`` (``refusing host fence <path>: it is a
    symlink``, ``cannot open host fence <path>: No space left on device``).
    """
    try:
        fd = os.open(path, _FLAGS, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise HostError(f"refusing {what} {path}: it is a symlink") from None
        raise HostError(f"cannot open {what} {path}: {describe(exc)}") from None
    problem = owned_file_problem(os.fstat(fd))
    if problem:
        os.close(fd)
        raise HostError(f"refusing {what} {path}: {problem}")
    return fd


@contextmanager
def opened_lock_file(path: Path, what: str) -> Iterator[int]:
    """``open_lock_file`` for the block; closing the descriptor drops any lock on it."""
    fd = open_lock_file(path, what)
    try:
        yield fd
    finally:
        os.close(fd)


def lock_by(fd: int, deadline: float, *, shared: bool = False) -> bool:
    """Take the lock on ``fd``, trying until ``deadline`` (``time.monotonic()``); False if
    it is still held by another then. Tries at once, then after pauses that double from
    ``LOCK_POLL_FIRST`` to ``LOCK_POLL_MAX`` (see ``timing``)."""
    pause = LOCK_POLL_FIRST
    while not try_lock(fd, shared=shared):
        now = time.monotonic()
        if now >= deadline:
            return False
        time.sleep(min(pause, deadline - now))
        pause = min(pause * 2, LOCK_POLL_MAX)
    return True


def record_holder(fd: int) -> None:
    """Write our pid into the lock file, for waiters without ``/proc/locks``; best effort:
    the kernel lock is the lock, the pid only names its holder (a full disk may refuse it)."""
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"\n{os.getpid()}\n".encode())  # byte 0 is what msvcrt locks
    except OSError:
        pass


def holder_pid(fd: int) -> int | None:
    """The pid holding the lock on the file open on ``fd``: from ``/proc/locks``, else the
    pid its holder recorded; None if neither says."""
    if sys.platform != "win32":
        pid = _proc_locks_holder(os.fstat(fd))
        if pid is not None:
            return pid
    try:
        os.lseek(fd, 1, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


if sys.platform == "win32":  # untested here: no Windows host in CI
    import msvcrt

    def try_lock(fd: int, *, shared: bool = False) -> bool:
        """Take the lock on ``fd`` if nobody else holds it; False if somebody does."""
        if shared:
            raise OSError(errno.EINVAL, "shared lock files need a POSIX host")
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def unlock(fd: int) -> None:
        """Drop the lock on ``fd`` and keep the file open (closing it drops the lock too)."""
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def try_lock(fd: int, *, shared: bool = False) -> bool:
        """Take the lock on ``fd`` (``shared``: one of many readers) if nobody holds it in
        a conflicting way; False if somebody does."""
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def unlock(fd: int) -> None:
        """Drop the lock on ``fd`` and keep the file open (closing it drops the lock too)."""
        fcntl.flock(fd, fcntl.LOCK_UN)

    def _proc_locks_holder(info: os.stat_result) -> int | None:
        wanted = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
        try:
            with open("/proc/locks", encoding="ascii") as locks:
                for line in locks:
                    fields = line.split()
                    # "1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF"; waiters have "->".
                    if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
                        return int(fields[4]) if fields[4].isdigit() else None
        except OSError:
            pass
        return None
