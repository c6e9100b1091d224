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

Instance records (``registry``) are written and removed only under their profile's
fence: ``fenced`` lets a writer that already holds it (a converge, on its thread) go on,
and takes it otherwise (at once, or by a deadline); which fences a thread holds is
remembered per thread, as a second ``flock`` of the same file from the same process
would wait for itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from workerguard.errors import FenceTimeout
from workerguard.workers.lockfile import (
    holder_pid,
    lock_by,
    opened_lock_file,
    record_holder,
    try_lock,
    unlock,
)
from workerguard.workers.rundir import checked_runtime_dir, private_dir


def profile_fence(host: str, profile: str) -> str:
    """The name of a profile's fence: what a converge holds, and a record write takes."""
    return f"{host}.{profile}"


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
            with _holding(path):
                yield
        finally:
            unlock(fd)


_held = threading.local()


def _held_here() -> set[Path]:
    paths: set[Path] | None = getattr(_held, "paths", None)
    if paths is None:
        paths = _held.paths = set()
    return paths


@contextmanager
def _holding(path: Path) -> Iterator[None]:
    held = _held_here()
    held.add(path)
    try:
        yield
    finally:
        held.discard(path)


def holds(directory: Path, name: str) -> bool:
    """True if this thread holds the fence ``directory/<name>.lock``."""
    return directory / f"{name}.lock" in _held_here()


@contextmanager
def fenced(directory: Path, name: str, deadline: float | None = None) -> Iterator[bool]:
    """Hold the fence for the block: True if this thread holds it already or took it
    (at once, or by ``deadline``, a ``time.monotonic()`` value); False (nothing held) if
    another holds it. Raises ``HostError`` as ``host_fence`` does."""
    if holds(directory, name):
        yield True
        return
    path = open_path(directory, name)
    with opened_lock_file(path, "host fence") as fd:
        if not (try_lock(fd) if deadline is None else lock_by(fd, deadline)):
            yield False
            return
        try:
            with _holding(path):
                yield True
        finally:
            unlock(fd)


def open_path(directory: Path, name: str) -> Path:
    """The fence file's path, after making sure the runtime dir and ``directory`` are private."""
    checked_runtime_dir(directory.parent)
    private_dir(directory)
    return directory / f"{name}.lock"
