"""Start instances detached from the guard: own session, no shell, explicit environment.

A Celery prefork child ignores SIGINT and a spawned process would inherit that, so
SIGINT is reset to its default for the child. A daemon thread waits on each child so
that one that exits never lingers as a zombie under a long-lived guard process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..config import Profile
from .logs import DEFAULT_BACKUPS, DEFAULT_MAX_BYTES, rotate_all
from .model import MARK_HOST, MARK_INSTANCE, MARK_PROFILE

_BASE_ENV_KEYS = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR",
                  "SYSTEMROOT", "WINDIR", "COMSPEC", "PATHEXT", "TEMP", "TMP", "USERPROFILE")
_signal_swap = threading.Lock()
_WINDOWS_FLAGS = 0x08000000 | 0x00000200 | 0x00000008
"""CREATE_NO_WINDOW | CREATE_NEW_PROCESS_GROUP | DETACHED_PROCESS (untested here)."""


@dataclass(frozen=True)
class Spawned:
    pid: int
    create_time: float
    instance_id: str


@dataclass(frozen=True)
class SpawnFailure:
    """A start that did not stay up for ``start_seconds``."""

    pid: int | None
    returncode: int | None
    log_tail: str
    reason: str

    def describe(self) -> str:
        tail = f"; last log lines:\n{self.log_tail}" if self.log_tail.strip() else ""
        return f"{self.reason}{tail}"


def child_environment(profile: Profile, host_id: str, instance_id: str,
                      parent_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment: a few basics from the parent, the profile's env, the marks.

    Nothing of Celery, multiprocessing or PYTHONPATH leaks into the worker.
    """
    parent_env = os.environ if parent_env is None else parent_env
    env = {k: parent_env[k] for k in _BASE_ENV_KEYS if k in parent_env}
    env.update(profile.env)
    env[MARK_PROFILE] = profile.name
    env[MARK_HOST] = host_id
    env[MARK_INSTANCE] = instance_id
    return env


def log_path(log_dir: Path, profile: str) -> Path:
    return log_dir / f"{profile}.log"


def _tail(path: Path, lines: int = 10) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            return "\n".join(fh.read().decode("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return ""


def _reset_sigint() -> None:  # runs in the child between fork and exec
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _popen(argv: list[str], cwd: str | None, env: dict[str, str], log: Path,
           ) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        if sys.platform == "win32":
            return subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, close_fds=True,
                                    creationflags=_WINDOWS_FLAGS)
        if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
            return _detached(argv, cwd, env, out)
        if threading.current_thread() is threading.main_thread():
            with _signal_swap:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                try:
                    return _detached(argv, cwd, env, out)
                finally:
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
        # Off the main thread we cannot swap the handler: reset it in the child instead.
        return _detached(argv, cwd, env, out, _reset_sigint)


def _detached(argv: list[str], cwd: str | None, env: dict[str, str], out: BinaryIO,
              preexec: Callable[[], None] | None = None) -> subprocess.Popen[bytes]:
    """POSIX: own session, stdin from /dev/null, output appended to the profile's log."""
    return subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT, close_fds=True, start_new_session=True,
                            preexec_fn=preexec)  # noqa: PLW1509 (only off the main thread)


def _reap(proc: subprocess.Popen[bytes]) -> None:
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()


def spawn_instances(profile: Profile, count: int, host_id: str, log_dir: Path,
                    log_max_bytes: int = DEFAULT_MAX_BYTES, log_backups: int = DEFAULT_BACKUPS,
                    ) -> tuple[list[Spawned], list[SpawnFailure]]:
    """Start ``count`` instances, then wait ``start_seconds`` once for all of them.

    Returns the instances that stayed up and the failures (exit code and log tail).
    """
    import psutil

    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_path(log_dir, profile.name)
    rotate_all([log], log_max_bytes, log_backups)
    started: list[tuple[subprocess.Popen[bytes], Spawned]] = []
    failures: list[SpawnFailure] = []
    for _ in range(count):
        instance_id = uuid.uuid4().hex
        env = child_environment(profile, host_id, instance_id)
        try:
            proc = _popen(list(profile.command), profile.cwd, env, log)
        except OSError as exc:
            failures.append(SpawnFailure(None, None, _tail(log), f"could not start "
                                         f"{profile.command[0]!r}: {exc.strerror or exc}"))
            continue
        try:
            create_time = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:
            create_time = time.time()
        started.append((proc, Spawned(proc.pid, create_time, instance_id)))

    deadline = time.monotonic() + profile.start_seconds
    # The start window is part of the contract: an instance counts once it stayed up.
    while time.monotonic() < deadline and any(proc.poll() is None for proc, _ in started):
        time.sleep(0.02)

    alive: list[Spawned] = []
    for proc, spawned in started:
        code = proc.poll()
        if code is None:
            _reap(proc)
            alive.append(spawned)
        else:
            failures.append(SpawnFailure(
                proc.pid, code, _tail(log),
                f"pid {proc.pid} exited with code {code} within {profile.start_seconds:g} s",
            ))
    return alive, failures
