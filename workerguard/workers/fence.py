"""The host fence: a host-wide OS lock (``flock``) per profile, held only while acting.

A Redis lock with a TTL is an efficiency lock: after a long pause or a failover two
holders can believe they own it. The fence is the host's own answer: the kernel
releases it when its holder dies, so it needs no stale timeout at all.

It lives in ``<runtime_dir>/fences`` (see ``rundir``), a private directory that every
guard and CLI of the host finds whatever its ``TMPDIR`` or ``HOME``. The file is a
``lockfile``: opened without following a symlink, a regular file of this user. Waiting
for it is bounded by the caller's deadline (the guard passes its lock deadline); the
error names the fence and the pid that holds it. The holder writes its pid into the
file; on Linux the waiter asks ``/proc/locks``, which also names a holder that is not a
guard.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from workerguard.errors import FenceTimeout
from workerguard.workers.lockfile import holder_pid, lock_by, opened_lock_file, record_holder, unlock
from workerguard.workers.rundir import private_dir


@contextmanager
def host_fence(directory: Path, name: str, deadline: float) -> Iterator[None]:
    """Hold ``directory/<name>.lock`` for the block, waiting until ``deadline`` at most.

    ``deadline`` is a ``time.monotonic()`` value; past it, ``FenceTimeout`` (a
    ``LockTimeout``) names the fence and its holder. ``directory`` and its parent (the
    runtime dir) must be private (``rundir.private_dir``); a problem with them or the
    file raises ``HostError`` naming the path.
    """
    path = open_path(directory, name)
    with opened_lock_file(path, "host fence") as fd:
        began = time.monotonic()
        if not lock_by(fd, deadline):
            holder = holder_pid(fd)
            who = f"pid {holder}" if holder else "another process"
            raise FenceTimeout(f"host fence {path} still held by {who} after "
                               f"{time.monotonic() - began:.1f} s; nothing was touched")
        try:
            record_holder(fd)
            yield
        finally:
            unlock(fd)


def open_path(directory: Path, name: str) -> Path:
    """The fence file's path, after making sure the runtime dir and ``directory`` are private."""
    private_dir(directory.parent)
    private_dir(directory)
    return directory / f"{name}.lock"
