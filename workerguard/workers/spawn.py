"""Start instances detached from the guard: own session, explicit environment, and
(where the host allows it) a cgroup of their own, joined before the worker runs.

A Celery prefork child ignores SIGINT, a background job of a shell or ``nohup`` ignores
others, and an exec keeps an ignored signal ignored, so the worker would inherit that:
every signal of ``_RESET_SIGNALS`` ignored here is back at its default in the worker (a
handler, the usual case, is reset by exec itself).

**Into a cgroup, as cheap as without one.** The worker's first instruction must already
run inside its group: a process that forks before it is moved leaves its children
behind. Measured on the 2-core dev machine (``launch`` of ``/bin/true``, 200 back to back,
from an interpreter of 114 MB with a thread, as a guard worker; p50/p99 ms until
``launch`` returns):

- ``preexec_fn`` joining between fork and exec (the old way): 9.4/23 (registry mode,
  whose ``preexec_fn`` only reset SIGINT: 10/13). A ``preexec_fn`` makes CPython
  ``fork()`` the whole interpreter instead of ``vfork()`` (the cost grows with its
  memory: 5.1/15 at 50 MB), and Python code in a forked child of a threaded process can
  deadlock. Without one, CPython (3.10+, ``_posixsubprocess``) uses ``vfork()`` whenever
  no uid/gid/groups change is asked for — but then nothing runs between fork and exec.
- ``clone3`` with ``CLONE_INTO_CGROUP``, the kernel's own answer (1.3 ms even after a
  quiet second, in C): from Python only through ctypes, where without ``CLONE_VM`` it is
  a ``fork()`` again whose child runs Python code, and with it the child would run the
  interpreter on the parent's memory. ``os.posix_spawn`` has no cgroup option; glibc's
  ``posix_spawnattr_setcgroup_np`` is 2.39+ (Debian 12 has 2.36). Rejected.
- **A trampoline (chosen): 0.9/11** (the p99 is the kernel's move, below; registry mode
  now 0.4/1.2): ``vfork``-exec ``/bin/sh``, which waits on a pipe; the guard writes its
  pid to the group's ``cgroup.procs`` and then lets it go; it execs ``env``, which execs
  the worker: the same pid all along, in the group before the worker's first
  instruction. The join happens in the guard, so a group that cannot be joined is an
  ``OSError`` here (``JoinFailed``: a host error, never a worker failure) and the
  waiting shell is killed: nothing stray, nothing ran. If the guard dies first, the
  shell reads end-of-file and exits without running the worker. (The simpler
  ``sh -c 'echo 0 > "$0"; exec "$@"'`` joins in the child, so its failure would only
  show later as an exit code of the "worker".)

The shell never sees a command line: the worker's argv is passed as ``"$@"``, byte for
byte. A shell does touch its environment (dash adds ``PWD``, bash ``SHLVL``; both reset
``IFS``/``OPTIND``/``PPID`` and drop names that are not identifiers), so ``env -u`` strips
what a shell adds, and an environment that a shell cannot carry unchanged, or an argv[0]
with ``=`` (``env`` would read it as an assignment) takes the old path (fork, join in the
child). Signals the guard ignores (SIGINT in a prefork child, SIGHUP under ``nohup``) are
back at their default in the worker: ``env --default-signal`` resets them on the
trampoline's path (where ``env`` lacks the option, the old path is taken), a
``preexec_fn`` on the others. Exec errors of the worker (missing, not executable) are
checked here before it is released, as ``Popen`` would raise them; the rare ones only
exec can see (a bad ``#!`` interpreter) end the instance with 126/127 and the message in
its log. A file without ``#!`` is run by ``/bin/sh`` (as ``execvp`` does).

Moving a process into a cgroup (``cgroup.procs``) waits for an RCU grace period in the
kernel when no other move happened in the last few ms; ``clone3(CLONE_INTO_CGROUP)``
does not. The trampoline pays it too; the guard pays it ahead with ``cgroups.prime`` as
soon as an instance exits, so a restart does not (see ``cgroups.join``; the restart row of
docs/benchmarks.md, ``python benchmarks/run.py --only restart``, measures the result).

The start window: an instance counts once it is still there after ``start_seconds``.
"There" means its main process runs — or, for a worker that daemonises (its launcher
forks and exits 0), that processes of the instance live on: its cgroup is populated,
or (without cgroups) a descendant or a process carrying its instance id lives. The
oldest of those becomes the instance's main process (systemd's GuessMainPID).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from workerguard.config.schema import Profile
from workerguard.timing import START_WINDOW_POLL
from workerguard.workers import cgroups
from workerguard.workers.childenv import base_environment, helper_environment
from workerguard.workers.identity import start_of, ticks_now
from workerguard.workers.leashed import LeaseTerms, lease_environment, leashed_argv
from workerguard.workers.model import MARK_HOST, MARK_INDEX, MARK_INSTANCE, MARK_PROFILE

_WINDOWS_FLAGS = 0x08000000 | 0x00000200 | 0x00000008
"""CREATE_NO_WINDOW | CREATE_NEW_PROCESS_GROUP | DETACHED_PROCESS (untested here)."""
HOST_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EMFILE, errno.ENFILE,
                         errno.ENOMEM, errno.EAGAIN})
"""Errors of the host, not of the worker: they never count toward crash-loop backoff."""


@dataclass(frozen=True)
class Launched:
    """A process started for an instance, not yet through its start window."""

    instance_id: str
    popen: subprocess.Popen[bytes]
    start: int
    """Of its first process, in clock ticks since boot (``identity``)."""
    started_at: float
    """Epoch seconds, for reports only."""
    group: Path | None
    index: int = 0
    log_start: int = 0
    """The size of its log file when it started: its own lines begin there (``tail``)."""


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


def tail(path: Path, lines: int = 10, since: int = 0) -> str:
    """The last ``lines`` lines of the log ``path`` written from offset ``since`` on (the
    size the file had when the instance started: only its own lines; from the start if
    a rotation truncated it since)."""
    try:
        with path.open("rb") as fh:
            end = fh.seek(0, os.SEEK_END)
            start = since if since <= end else 0
            fh.seek(max(start, end - 4096))
            return "\n".join(fh.read().decode("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return ""


class JoinFailed(subprocess.SubprocessError):
    """The instance could not be placed in its cgroup (a host error: no backoff)."""


_SHELL = "/bin/sh"
_ENV = "/usr/bin/env"
_SHELL_OWNED = ("PWD", "OLDPWD", "SHLVL", "_", "IFS", "OPTIND", "PPID", "LINENO", "ENV",
                "CDPATH", "SHELLOPTS", "BASHOPTS", "BASH_ENV", "POSIXLY_CORRECT")
"""Variables some ``/bin/sh`` sets, resets or reads: an environment with one of them takes
the old path; the trampoline's ``env -u`` removes them from every other one."""
_RESET_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT") if hasattr(signal, name))
"""Signals a worker must start with at their default action, however the guard was
started: a Celery prefork child, ``nohup`` or a shell's background job ignores some of
them, and an exec keeps an ignored signal ignored (a handler is reset by exec itself)."""


def _trampoline_script(reset: Sequence[signal.Signals]) -> str:
    """Wait for the guard's go (end of file: the guard died, the worker never runs), then
    exec the worker through ``env``, stdin from /dev/null, with the signals of ``reset``
    back at their default action."""
    defaults = (" --default-signal=" + ",".join(s.name.removeprefix("SIG") for s in reset)) if reset else ""
    return ('read -r go || exit 1; exec ' + _ENV + defaults
            + ''.join(f" -u {name}" for name in _SHELL_OWNED) + ' -- "$@" </dev/null')


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _ignored_signals() -> tuple[signal.Signals, ...]:
    return tuple(sig for sig in _RESET_SIGNALS if signal.getsignal(sig) == signal.SIG_IGN)


@functools.cache
def _env_resets_signals() -> bool:
    """True if ``env`` takes ``--default-signal`` (GNU coreutils 8.31+; not busybox)."""
    try:
        return subprocess.run([_ENV, "--default-signal=INT", "true"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=helper_environment("check"), timeout=10,
                              check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _in_child(join: int | None, reset: Sequence[signal.Signals]) -> Callable[[], None]:
    def prepare() -> None:  # runs in the child between fork and exec: no locks, no logging
        for sig in reset:
            signal.signal(sig, signal.SIG_DFL)
        if join is not None:
            os.write(join, b"0")

    return prepare


def trampoline_carries(argv: Sequence[str], env: Mapping[str, str]) -> bool:
    """True if the trampoline starts exactly ``argv`` with exactly ``env``."""
    return (bool(argv) and "=" not in argv[0] and "PATH" in env
            and all(_NAME.match(name) and name not in _SHELL_OWNED for name in env)
            and os.access(_ENV, os.X_OK) and (not _ignored_signals() or _env_resets_signals()))


def trampoline_argv(argv: Sequence[str]) -> list[str]:
    return [_SHELL, "-c", _trampoline_script(_ignored_signals()), "workerguard-spawn", *argv]


def check_executable(command: str, cwd: str | None, env: Mapping[str, str]) -> None:
    """Raise the ``OSError`` that ``Popen`` would raise if ``command`` cannot be executed
    in ``cwd`` with ``env``'s PATH (the trampoline execs it too late to tell the caller)."""
    base = cwd or os.getcwd()
    candidates = ([os.path.join(base, command)] if os.path.dirname(command)
                  else [os.path.join(base, directory, command) for directory in os.get_exec_path(env)])
    if any(os.path.isfile(path) and os.access(path, os.X_OK) for path in candidates):
        return
    code = errno.EACCES if any(os.path.exists(path) for path in candidates) else errno.ENOENT
    raise OSError(code, os.strerror(code), command)


def _popen(argv: Sequence[str], cwd: str | None, env: Mapping[str, str], out: IO[bytes], *,
           stdin: int = subprocess.DEVNULL, join: int | None = None, reset_signals: bool = True,
           ) -> subprocess.Popen[bytes]:
    """``Popen`` detached into its own session; with a ``preexec_fn`` (which costs a fork of
    this interpreter) only for a cgroup ``join`` in the child or an ignored signal to reset
    (the trampoline resets them through ``env`` instead)."""
    reset = () if argv and argv[0] == _SHELL and argv[2:3] == ["workerguard-spawn"] else _ignored_signals()
    needs_child_code = join is not None or bool(reset)
    return subprocess.Popen(
        list(argv), cwd=cwd, env=env, stdin=stdin, stdout=out, stderr=subprocess.STDOUT,
        close_fds=True, start_new_session=True,
        preexec_fn=_in_child(join, reset) if needs_child_code else None)  # noqa: PLW1509 (one fd write)


def _join_failed(group: Path, exc: OSError) -> JoinFailed:
    return JoinFailed(f"{group / 'cgroup.procs'}: {exc.strerror or exc}")


def _trampoline(argv: Sequence[str], cwd: str | None, env: Mapping[str, str], out: IO[bytes],
                group: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in ``group`` through the trampoline (see the module docstring)."""
    popen = _popen(trampoline_argv(argv), cwd, env, out, stdin=subprocess.PIPE,
                   reset_signals=False)  # env resets them, as the worker starts
    assert popen.stdin is not None
    try:
        check_executable(argv[0], cwd, env)
        try:
            cgroups.join(group, popen.pid)
        except OSError as exc:
            raise _join_failed(group, exc) from exc
    except BaseException:
        popen.kill()  # it waits for the go: nothing of the worker ran
        popen.wait()
        popen.stdin.close()
        raise
    with contextlib.suppress(OSError):  # gone already (killed): its exit is the failure
        popen.stdin.write(b"go\n")
        popen.stdin.flush()
    with contextlib.suppress(OSError):
        popen.stdin.close()
    return popen


def launch(profile: Profile, host_id: str, log: Path, group: Path | None,
           index: int = 0, lease: LeaseTerms | None = None) -> Launched:
    """Start one instance (in ``group`` if given) in slot ``index``; a cluster instance
    (``lease``) in its grant's slot, behind its leash (workers/leashed.py). Raises OSError
    when it cannot start, ``JoinFailed`` when it cannot be placed in ``group``."""
    instance_id = group.name if group is not None else uuid.uuid4().hex
    if lease is not None:
        index = lease.slot
    env = child_environment(profile, host_id, instance_id, index)
    argv = list(profile.command)
    if lease is not None:
        env.update(lease_environment(lease))
        argv = leashed_argv(argv, lease, group) if lease.leashed else argv
    with log.open("ab") as out:
        log_start = out.tell()
        started_at = time.time()
        if sys.platform == "win32":
            popen = subprocess.Popen(
                argv, cwd=profile.cwd, env=env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, close_fds=True,
                creationflags=_WINDOWS_FLAGS)
        elif group is not None and trampoline_carries(argv, env):
            popen = _trampoline(argv, profile.cwd, env, out, group)
        elif group is not None:
            try:
                join = cgroups.join_fd(group)
            except OSError as exc:
                raise _join_failed(group, exc) from exc
            try:
                popen = _popen(argv, profile.cwd, env, out, join=join)
            finally:
                os.close(join)
        else:
            popen = _popen(argv, profile.cwd, env, out)
    _remember_launch(instance_id, time.monotonic())
    # Our child, unreaped: its pid is its own until we wait for it, zombie or not.
    start = start_of(popen.pid)
    return Launched(instance_id, popen, ticks_now() if start is None else start, started_at,
                    group, index, log_start)


LAUNCHES_KEPT = 4096
"""Launch times kept (the newest): far more instances than one guard starts within any
readiness wait or liveness start window, a few hundred kB at most."""
_launches: dict[str, float] = {}
_launches_lock = threading.Lock()


def _remember_launch(instance_id: str, at: float) -> None:
    with _launches_lock:
        _launches[instance_id] = at
        while len(_launches) > LAUNCHES_KEPT:
            del _launches[next(iter(_launches))]


def launched_at(instance_id: str) -> float | None:
    """When this process launched ``instance_id``, on the monotonic clock (taken once the
    process exists, so never before its start); None for an instance it did not launch
    (or too long ago). Readiness deadlines and liveness start windows count from it: a
    start read back from the process table is only as exact as the boot time it is built
    on (psutil's, in whole seconds, was 0.77 s early on one VM) and moves with the wall
    clock."""
    with _launches_lock:
        return _launches.get(instance_id)


def _reset_launches_lock() -> None:
    """In a forked child: a lock another thread held at the fork would never be freed."""
    global _launches_lock  # noqa: PLW0603 (a fresh lock is the point)
    _launches_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_launches_lock)


def start_failure(profile: Profile, exc: BaseException) -> SpawnFailure:
    """A start that could not begin: no line of its log is its own, so none is quoted."""
    if isinstance(exc, subprocess.SubprocessError):  # it could not join its cgroup
        return SpawnFailure(None, None, "", f"could not place {profile.command[0]!r} in its "
                                            f"cgroup: {exc}", host_error=True)
    assert isinstance(exc, OSError)
    host = exc.errno in HOST_ERRNOS
    where = f" ({exc.filename})" if exc.filename else ""
    return SpawnFailure(None, None, "", f"could not start {profile.command[0]!r}: "
                        f"{exc.strerror or exc}{where}", host_error=host)


def exit_code(popen: subprocess.Popen[bytes]) -> int | None:
    """``popen.poll()`` without its blind spot: the exit code, or None while it runs.

    ``Popen.poll`` answers None ("we know nothing yet") when another thread holds the
    Popen's wait lock, as the exit watcher does while it reaps this child
    (``watch.ExitWatcher._finish``): a worker that had already failed was once reported
    started this way (CI, a loaded machine). So a None is checked with ``waitid``, which
    does not reap; a child that has exited is then waited for, which returns as soon as
    whoever reaps it is done."""
    code = popen.poll()
    if code is not None or sys.platform == "win32" or not hasattr(os, "waitid"):
        return code
    try:
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        if os.waitid(os.P_PID, popen.pid, flags) is None:
            return None  # still running
    except ChildProcessError:
        pass  # reaped by another thread since: it has exited
    return popen.wait()


def wait_window(launched: list[Launched], seconds: float,
                any_left: Callable[[Launched], bool]) -> None:
    """Wait the start window once for all; return early once no instance has a process left.

    ``any_left`` is asked about each instance every poll (it may record what it sees).
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not [item for item in launched if any_left(item)]:
            return
        time.sleep(START_WINDOW_POLL)
