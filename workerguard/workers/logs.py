"""Size-capped worker logs, rotated copytruncate-style.

Workers write their output straight into ``<home>/logs/<profile>.log``, opened
``O_APPEND`` when they were spawned: no pipe runs through the guard, so a worker
keeps running (and logging) while its guard is down or restarting. Such a file
cannot be renamed away (the worker would keep writing to the renamed file), so a
rotation copies it to ``.1`` (after shifting ``.1`` -> ``.2`` ...) and truncates the
live file in place; thanks to ``O_APPEND`` the worker's next write lands at the new
end, offset 0. Lines written between the copy and the truncate are lost (the known
cost of copytruncate; the window is one file copy).

Rotation runs before each spawn and on every sweep, so a live file holds at most
``max_bytes`` plus what its workers write in one sweep interval.
"""

from __future__ import annotations

import contextlib
import logging
import os
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
_rotating = threading.Lock()
ROTATION_WAIT = 10.0
"""How long a rotation waits for another process's rotation of the same file: one file
copy (``max_bytes``); one still running after this is stuck (a hung disk), and this
rotation is skipped with a warning (``rotate_all``): the next sweep tries again."""


def backup_path(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


@contextlib.contextmanager
def _one_rotation_at_a_time(path: Path) -> Iterator[None]:
    """One rotation of a file at a time, across threads and (on POSIX) guard processes;
    ``TimeoutError`` if another process's rotation holds it past ``ROTATION_WAIT``."""
    with _rotating:
        if sys.platform == "win32":
            yield
            return
        lock = path.with_name(f".{path.name}.rotate")
        with opened_lock_file(lock, "rotation lock") as fd:
            if not lock_by(fd, time.monotonic() + ROTATION_WAIT):
                raise TimeoutError(f"another rotation of {path} still holds {lock} after "
                                   f"{ROTATION_WAIT:g} s")
            yield


def rotate(path: Path, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS) -> bool:
    """Rotate ``path`` if it is larger than ``max_bytes``; True if it was rotated.

    ``backups`` 0 truncates without keeping a copy. Raises ``TimeoutError`` when another
    process's rotation of the file holds its lock too long, ``HostError`` when the lock
    file is not one this user may trust (see ``lockfile``).
    """
    with _one_rotation_at_a_time(path):
        try:
            if path.stat().st_size <= max_bytes:
                return False
        except FileNotFoundError:
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


def rotate_all(paths: Iterable[Path], max_bytes: int, backups: int) -> list[Path]:
    """Rotate each of ``paths`` that is over the cap; a failure is logged, never raised."""
    rotated = []
    for path in paths:
        try:
            if rotate(path, max_bytes, backups):
                rotated.append(path)
        except (OSError, HostError) as exc:  # HostError: its lock file is not a safe one
            log.warning("could not rotate %s: %s", path, exc)
    return rotated
