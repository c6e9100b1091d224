"""Start instances detached from the guard: own session, no shell, explicit environment,
and (where the host allows it) a cgroup of their own, joined before exec.

A Celery prefork child ignores SIGINT and a spawned process would inherit that, so
SIGINT is reset to its default in the child. The child joins its instance's cgroup
between fork and exec, so nothing it runs can start outside it.

The start window: an instance counts once it is still there after ``start_seconds``.
"There" means its main process runs — or, for a worker that daemonises (its launcher
forks and exits 0), that processes of the instance live on: its cgroup is populated,
or (without cgroups) a descendant or a process carrying its instance id lives. The
oldest of those becomes the instance's main process (systemd's GuessMainPID).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from ..childenv import base_environment
from ..config import Profile
from . import cgroups
from .model import MARK_HOST, MARK_INDEX, MARK_INSTANCE, MARK_PROFILE

_WINDOWS_FLAGS = 0x08000000 | 0x00000200 | 0x00000008
"""CREATE_NO_WINDOW | CREATE_NEW_PROCESS_GROUP | DETACHED_PROCESS (untested here)."""
_POLL = 0.02
HOST_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EMFILE, errno.ENFILE,
                         errno.ENOMEM, errno.EAGAIN})
"""Errors of the host, not of the worker: they never count toward crash-loop backoff."""


@dataclass(frozen=True)
class Launched:
    """A process started for an instance, not yet through its start window."""

    instance_id: str
    popen: subprocess.Popen[bytes]
    create_time: float
    started_at: float
    group: Path | None
    index: int = 0


@dataclass(frozen=True)
class SpawnFailure:
    """A start that did not stay up for ``start_seconds`` (or could not begin at all)."""

    pid: int | None
    returncode: int | None
    log_tail: str
    reason: str
    host_error: bool = False
    """The host failed (full disk, no memory, ...), not the worker: no backoff."""

    def describe(self) -> str:
        tail = f"; last log lines:\n{self.log_tail}" if self.log_tail.strip() else ""
        return f"{self.reason}{tail}"


def child_environment(profile: Profile, host_id: str, instance_id: str, index: int = 0,
                      parent_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment: a few basics from the parent, the profile's env, the marks.

    Nothing of Celery, multiprocessing or PYTHONPATH leaks into the worker.
    """
    env = base_environment(parent_env)
    env.update(profile.env)
    env[MARK_PROFILE] = profile.name
    env[MARK_HOST] = host_id
    env[MARK_INSTANCE] = instance_id
    env[MARK_INDEX] = str(index)
    return env


def log_path(log_dir: Path, profile: str) -> Path:
    return log_dir / f"{profile}.log"


def tail(path: Path, lines: int = 10) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            return "\n".join(fh.read().decode("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return ""


def _in_child(join: int | None) -> Callable[[], None]:
    def prepare() -> None:  # runs in the child between fork and exec: no locks, no logging
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if join is not None:
            os.write(join, b"0")

    return prepare


def launch(profile: Profile, host_id: str, log: Path, group: Path | None,
           index: int = 0) -> Launched:
    """Start one instance (in ``group`` if given) in slot ``index``. Raises OSError when it
    cannot start."""
    instance_id = group.name if group is not None else uuid.uuid4().hex
    env = child_environment(profile, host_id, instance_id, index)
    join = cgroups.join_fd(group) if group is not None else None
    try:
        with log.open("ab") as out:
            started_at = time.time()
            if sys.platform == "win32":
                popen = subprocess.Popen(
                    list(profile.command), cwd=profile.cwd, env=env, stdin=subprocess.DEVNULL,
                    stdout=out, stderr=subprocess.STDOUT, close_fds=True,
                    creationflags=_WINDOWS_FLAGS)
            else:
                popen = subprocess.Popen(
                    list(profile.command), cwd=profile.cwd, env=env, stdin=subprocess.DEVNULL,
                    stdout=out, stderr=subprocess.STDOUT, close_fds=True, start_new_session=True,
                    preexec_fn=_in_child(join))  # noqa: PLW1509 (writes one fd, nothing else)
    finally:
        if join is not None:
            os.close(join)
    try:
        create_time = psutil.Process(popen.pid).create_time()
    except psutil.NoSuchProcess:
        create_time = started_at
    return Launched(instance_id, popen, create_time, started_at, group, index)


def start_failure(profile: Profile, exc: BaseException, log: Path) -> SpawnFailure:
    if isinstance(exc, subprocess.SubprocessError):  # the child could not join its cgroup
        return SpawnFailure(None, None, "", f"could not place {profile.command[0]!r} in its "
                                            f"cgroup: {exc}", host_error=True)
    assert isinstance(exc, OSError)
    host = exc.errno in HOST_ERRNOS
    where = f" ({exc.filename})" if exc.filename else ""
    return SpawnFailure(None, None, tail(log), f"could not start {profile.command[0]!r}: "
                        f"{exc.strerror or exc}{where}", host_error=host)


def wait_window(launched: list[Launched], seconds: float,
                alive: Callable[[Launched], bool]) -> None:
    """Wait the start window once for all; return early once no instance is alive.

    ``alive`` is asked about each instance every poll (it may record what it sees).
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not [item for item in launched if alive(item)]:
            return
        time.sleep(_POLL)
