"""Size-capped worker logs, one file per instance slot, rotated copytruncate-style.

Workers write their output straight into ``<home>/logs/<profile>.<slot>.log`` (the slot is
the instance's ``WORKERGUARD_INDEX``: 0, 1 ...), opened ``O_APPEND`` when they were
spawned: no pipe runs through the guard, so a worker keeps running (and logging) while its
guard is down or restarting. One file per slot, not per profile: a failed start quotes its
own lines, never another instance's (``spawn.tail`` from the offset the file had at the
start), and a slot's file carries on across restarts, so the logs of a profile are at most
``max_workers`` files however often it restarts.

Such a file cannot be renamed away (the worker would keep writing to the renamed file), so
a rotation copies it to ``.1`` (after shifting ``.1`` -> ``.2`` ...) and truncates the
live file in place; thanks to ``O_APPEND`` the worker's next write lands at the new end,
offset 0. Lines written between the copy and the truncate are lost (the known cost of
copytruncate; the window is one file copy).

Rotation runs before each spawn (for the slots it starts) and on every sweep, so a live
file holds at most ``max_bytes`` plus what its workers write in one sweep interval.
**It never stalls a spawn**: a file under the cap is left without taking any lock; one
rotation per file at a time (a lock per file, not per process: a stuck file holds up
nothing else), and across processes a ``flock`` polled without blocking until a
monotonic deadline (``lockfile.lock_by``): ``SPAWN_ROTATION_WAIT`` before a spawn,
``ROTATION_WAIT`` on a sweep. Past it the rotation is skipped this time, logged once per
file (until it works again), and the next sweep tries again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from workerguard.errors import HostError
from workerguard.workers.lockfile import lock_by, opened_lock_file

log = logging.getLogger("workerguard.logs")
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 3
ROTATION_WAIT = 10.0
"""How long a sweep's rotation waits for another rotation of the same file: one file copy
(``max_bytes``); one still running after this is stuck (a hung disk), and this rotation is
skipped with a warning (``rotate_all``): the next sweep tries again."""
SPAWN_ROTATION_WAIT = 0.5
"""How long the rotation before a spawn may wait, for all its files together: a spawn must
not wait on another process's copy of a big file; the sweep rotates what it skipped."""


def log_path(log_dir: Path, profile: str, index: int) -> Path:
    """The log of slot ``index`` of ``profile``: ``<profile>.<index>.log``."""
    return log_dir / f"{profile}.{index}.log"


def profile_logs(log_dir: Path, profile: str) -> list[Path]:
    """The live log files of ``profile``, by slot (and the single ``<profile>.log`` of
    versions before logs per slot, if it is still there)."""
    slot = re.compile(re.escape(profile) + r"\.(\d+)\.log")
    try:
        names = os.listdir(log_dir)
    except OSError:
        return []
    found = sorted((int(m.group(1)), name) for name in names if (m := slot.fullmatch(name)))
    legacy = [log_dir / f"{profile}.log"] if f"{profile}.log" in names else []
    return [log_dir / name for _, name in found] + legacy


def backup_path(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


class _FileLocks:
    """One ``threading.Lock`` per log file: rotations of one file in this process take
    turns; rotations of different files never wait for each other."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[Path, threading.Lock] = {}

    def of(self, path: Path) -> threading.Lock:
        with self._guard:
            if len(self._locks) > 4096:  # files of profiles long gone: start afresh
                self._locks = {k: v for k, v in self._locks.items() if v.locked()}
            return self._locks.setdefault(path, threading.Lock())


_file_locks = _FileLocks()


@contextlib.contextmanager
def _one_rotation_at_a_time(path: Path, deadline: float) -> Iterator[None]:
    """One rotation of a file at a time, across threads and (on POSIX) guard processes;
    ``TimeoutError`` if another rotation still holds it at ``deadline`` (monotonic)."""
    lock = _file_locks.of(path)
    if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
        raise TimeoutError(f"another rotation of {path} in this process is still running")
    try:
        if sys.platform == "win32":
            yield
            return
        lock_file = path.with_name(f".{path.name}.rotate")
        with opened_lock_file(lock_file, "rotation lock") as fd:
            if not lock_by(fd, deadline):
                raise TimeoutError(f"another rotation of {path} still holds {lock_file}")
            yield
    finally:
        lock.release()


def _over(path: Path, max_bytes: int) -> bool:
    try:
        return path.stat().st_size > max_bytes
    except FileNotFoundError:
        return False


def rotate(path: Path, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS,
           wait: float | None = None) -> bool:
    """Rotate ``path`` if it is larger than ``max_bytes``; True if it was rotated.

    ``backups`` 0 truncates without keeping a copy. A file under the cap costs one
    ``stat`` and no lock. Raises ``TimeoutError`` when another rotation of the file holds
    it longer than ``wait`` seconds (default ``ROTATION_WAIT``), ``HostError`` when the lock
    file is not one this user may trust (see ``lockfile``).
    """
    if not _over(path, max_bytes):
        return False
    with _one_rotation_at_a_time(path, time.monotonic() + (ROTATION_WAIT if wait is None else wait)):
        if not _over(path, max_bytes):  # another rotation did it meanwhile
            return False
        if backups > 0:
            for n in range(backups - 1, 0, -1):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(backup_path(path, n), backup_path(path, n + 1))
            partial = path.with_name(f".{path.name}.copy")
            shutil.copyfile(path, partial)
            os.replace(partial, backup_path(path, 1))
        with path.open("r+b") as live:
            live.truncate(0)
    return True


_stuck: set[Path] = set()
_stuck_lock = threading.Lock()


def rotate_all(paths: Iterable[Path], max_bytes: int, backups: int,
               wait: float | None = None) -> list[Path]:
    """Rotate each of ``paths`` that is over the cap, all within ``wait`` seconds (default
    ``ROTATION_WAIT``); a failure is logged (a rotation skipped for a busy lock once per
    file until it works again), never raised."""
    deadline = time.monotonic() + (ROTATION_WAIT if wait is None else wait)
    rotated = []
    for path in paths:
        try:
            if rotate(path, max_bytes, backups, max(0.0, deadline - time.monotonic())):
                rotated.append(path)
            with _stuck_lock:
                _stuck.discard(path)
        except TimeoutError as exc:
            with _stuck_lock:
                first = path not in _stuck
                _stuck.add(path)
            (log.warning if first else log.debug)(
                "rotation of %s skipped this time: %s (the next sweep tries again)", path, exc)
        except (OSError, HostError) as exc:  # HostError: its lock file is not a safe one
            log.warning("could not rotate %s: %s", path, exc)
    return rotated
