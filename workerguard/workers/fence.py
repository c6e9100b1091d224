"""The host fence: a host-wide OS lock (``flock``) per profile, held only while acting.

A Redis lock with a TTL is an efficiency lock: after a long pause or a failover two
holders can believe they own it. The fence is the host's own answer: the kernel
releases it when its holder dies, so it needs no stale timeout at all.

It lives in ``<runtime_dir>/fences`` (see ``runtime``), a private directory that every
guard and CLI of the host finds whatever its ``TMPDIR`` or ``HOME``. The file is opened
without following a symlink and must be a regular file of this user. Waiting for it is
bounded by the caller's deadline (the guard passes its lock deadline); the error names
the fence and the pid that holds it. The holder writes its pid into the file; on Linux
the waiter asks ``/proc/locks``, which also names a holder that is not a guard.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from workerguard.errors import FenceTimeout, HostError
from workerguard.workers.rundir import describe, owned_file_problem, private_dir

_FLAGS = (os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
          | getattr(os, "O_NOINHERIT", 0))
_POLL_MIN, _POLL_MAX = 0.002, 0.05


@contextmanager
def host_fence(directory: Path, name: str, deadline: float) -> Iterator[None]:
    """Hold ``directory/<name>.lock`` for the block, waiting until ``deadline`` at most.

    ``deadline`` is a ``time.monotonic()`` value; past it, ``FenceTimeout`` (a
    ``LockTimeout``) names the fence and its holder. ``directory`` and its parent (the
    runtime dir) must be private (``runtime.private_dir``); a problem with them or the
    file raises ``HostError`` naming the path.
    """
    path = open_path(directory, name)
    fd = _open(path)
    try:
        began = time.monotonic()
        poll = _POLL_MIN
        while not _try_lock(fd):
            now = time.monotonic()
            if now >= deadline:
                holder = holder_pid(fd)
                who = f"pid {holder}" if holder else "another process"
                raise FenceTimeout(f"host fence {path} still held by {who} after "
                                   f"{now - began:.1f} s; nothing was touched")
            time.sleep(min(poll, deadline - now))
            poll = min(poll * 2, _POLL_MAX)
        try:
            _record_holder(fd)
            yield
        finally:
            _unlock(fd)
    finally:
        os.close(fd)


def open_path(directory: Path, name: str) -> Path:
    """The fence file's path, after making sure the runtime dir and ``directory`` are private."""
    private_dir(directory.parent)
    private_dir(directory)
    return directory / f"{name}.lock"


def _open(path: Path) -> int:
    try:
        fd = os.open(path, _FLAGS, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise HostError(f"refusing host fence {path}: it is a symlink") from None
        raise HostError(f"cannot open host fence {path}: {describe(exc)}") from None
    problem = owned_file_problem(os.fstat(fd))
    if problem:
        os.close(fd)
        raise HostError(f"refusing host fence {path}: {problem}")
    return fd


def _record_holder(fd: int) -> None:
    """Write our pid into the fence, for waiters without ``/proc/locks``; best effort:
    the kernel lock is the fence, the pid only names its holder (a full disk may refuse it)."""
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"\n{os.getpid()}\n".encode())  # byte 0 is what msvcrt locks
    except OSError:
        pass


def holder_pid(fd: int) -> int | None:
    """The pid holding the fence open on ``fd``: from ``/proc/locks``, else the file."""
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

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
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
