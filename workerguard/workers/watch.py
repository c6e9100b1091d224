"""Learn of process exits as they happen, in one thread for the whole process.

On Linux (>= 5.3) each watched process gets a pidfd (``pidfd_open``) in one epoll
set: the kernel wakes the thread the moment a process exits, for any process, not
only our children, and a pidfd pins its process so PID reuse cannot fool it. The
same thread reaps the children this process spawned (no zombie under a long-lived
guard, no thread per child) and so knows their exit code or signal. Elsewhere the
thread polls every ``fallback_interval`` seconds (``identity.alive`` per watched
process and poll: an exit, a zombie or a reused PID ends a watch).

**The fallback is real.** ``pidfd_open`` can fail on Linux too: ``ENOSYS`` (kernel < 5.3,
or a seccomp filter that hides it), ``EPERM``/``EACCES`` (seccomp), ``EMFILE``/``ENFILE``
(out of file descriptors). Then that process is polled instead (for a missing or
forbidden call: every process from then on), the reason is logged once and shown in
``status`` (``exit_watch``): registering a watch never raises, so nothing fails after a
worker started.

**Fork-aware.** A forked child (a Celery prefork pool process) must not use its parent's
watcher: the epoll set and the pidfds are shared with the parent, so both would wake for
the same exits and race to reap the same children (a ``wait()`` that never returns, an
exit reported twice or to the wrong guard). ``os.register_at_fork`` starts every watcher
over in the child: nothing watched, no thread, a fresh lock and epoll set; its copies of
the parent's descriptors are closed (the parent's stay open).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workerguard.timing import EXIT_WATCH_ERROR_PAUSE, EXIT_WATCH_FALLBACK, EXIT_WATCH_WAKE
from workerguard.workers.identity import alive

log = logging.getLogger("workerguard.watch")
_CODES_KEPT = 4096
_PIDFD_MISSING = frozenset({errno.ENOSYS, errno.EPERM, errno.EACCES, errno.EINVAL})
"""``pidfd_open`` errors that will not go away: poll every process from then on.
Any other error (``EMFILE``, ``ENFILE``, ``ENOMEM``) polls only the process it hit."""
PIDFD = "pidfd"


@dataclass(frozen=True)
class Exit:
    pid: int
    returncode: int | None
    """As ``Popen.returncode``: negative for a signal; None when not our child."""
    at: float


Callback = Callable[[Exit], None]


@dataclass
class _Entry:
    pid: int
    fd: int | None
    start: int | None = None
    """Of a watched process (``watch``, ticks since boot); a child (``child``) has its
    ``popen`` instead."""
    popen: subprocess.Popen[bytes] | None = None
    callbacks: dict[str, Callback] = field(default_factory=dict)


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "exit status unknown (not a child of this guard process)"
    if returncode < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


PidfdOpen = Callable[[int], int]


def _system_pidfd_open() -> PidfdOpen | None:
    return getattr(os, "pidfd_open", None) if sys.platform == "linux" else None


class ExitWatcher:
    """One thread that learns of the exits of watched processes (see the module docstring).

    ``pidfd_open`` (tests inject a failing one) defaults to the system's; None polls.
    """

    def __init__(self, fallback_interval: float = EXIT_WATCH_FALLBACK,
                 pidfd_open: PidfdOpen | None = None) -> None:
        self.fallback_interval = fallback_interval
        self._given_pidfd_open = pidfd_open
        self._begin()
        _every_watcher.add(self)

    def _begin(self) -> None:
        """This process's state: nothing watched, no thread yet, a fresh epoll set."""
        self._lock = threading.Lock()
        self._by_pid: dict[int, _Entry] = {}
        self._codes: dict[int, int] = {}
        self._by_fd: dict[int, _Entry] = {}
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._pidfd_open = self._given_pidfd_open or _system_pidfd_open()
        self._polling: str | None = None
        """Why some (or all) processes are polled; None while every one has a pidfd."""
        self._said: set[str] = set()
        self._epoll: Any = None
        if self._pidfd_open is None or sys.platform != "linux":
            self._pidfd_open = None
            self._polling = f"no pidfd_open on {sys.platform}"
        else:
            try:
                self._epoll = select.epoll()
            except OSError as exc:
                self._pidfd_open = None
                self._fall_back(f"epoll: {_reason(exc)}")

    @property
    def mode(self) -> str:
        """``pidfd``, or ``polling every 0.5 s (why)`` once any process is polled."""
        reason = self._polling
        return PIDFD if reason is None else f"polling every {self.fallback_interval:g} s ({reason})"

    # registration --------------------------------------------------------------------
    def child(self, popen: subprocess.Popen[bytes]) -> None:
        """Reap this child when it exits and remember its exit code."""
        self._add(popen.pid, None, popen=popen)

    def watch(self, key: str, pid: int, start: int, callback: Callback) -> None:
        """Call ``callback(Exit)`` once when ``pid`` (started at ``start``) exits.

        ``key`` names the watch (an instance id): watching a key again replaces it.
        A process that is already gone (or whose PID now names another process) is
        reported at once. Watching the same key on the same process again costs a
        dictionary lookup (every fast-path ensure re-watches what it verified).
        """
        with self._lock:
            entry = self._by_pid.get(pid)
            if entry is not None and key in entry.callbacks:
                entry.callbacks[key] = callback
                return
        self.unwatch(key)
        self._add(pid, (key, callback), start=start)

    def unwatch(self, key: str) -> None:
        with self._lock:
            for entry in list(self._by_pid.values()):
                if entry.callbacks.pop(key, None) is not None:
                    self._drop_if_idle(entry)

    def watching(self) -> set[str]:
        with self._lock:
            return {key for entry in self._by_pid.values() for key in entry.callbacks}

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            for entry in self._by_pid.values():
                if entry.fd is not None:
                    os.close(entry.fd)
            self._by_pid.clear()
            self._by_fd.clear()
        if self._epoll is not None:
            self._epoll.close()

    def _begin_in_child(self) -> None:
        """In a forked child: close the copies of the parent's pidfds and epoll set (the
        parent keeps its own: closing a copy removes nothing from the parent's set) and
        start over. The watches stay the parent's: it reaps its children, the child
        watches what it sees itself. No lock is taken: another thread of the parent may
        have held it at the fork, and only this thread exists here."""
        for fd in list(self._by_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._epoll is not None:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.close()
        self._begin()

    # internals -----------------------------------------------------------------------
    def _add(self, pid: int, watch: tuple[str, Callback] | None, *,
             popen: subprocess.Popen[bytes] | None = None, start: int | None = None) -> None:
        gone = False
        with self._lock:
            entry = self._by_pid.get(pid)
            if entry is None:
                fd = None
                try:
                    fd = self._open(pid)
                except ProcessLookupError:
                    gone = True
                if not gone and start is not None and not _still(pid, start):
                    gone = True  # the PID names another process now
                    if fd is not None:
                        os.close(fd)
                if not gone:
                    entry = _Entry(pid, fd, start)
                    self._by_pid[pid] = entry
                    if fd is not None:
                        self._register(entry, fd)
            if entry is not None:
                if popen is not None:
                    entry.popen = popen
                if watch is not None:
                    entry.callbacks[watch[0]] = watch[1]
            self._ensure_thread()
        if gone and watch is not None:
            self._fire(watch[1], Exit(pid, self._codes.get(pid), time.time()))

    def _open(self, pid: int) -> int | None:
        """A pidfd for ``pid``, or None: poll it (``ProcessLookupError``: it is gone)."""
        if self._pidfd_open is None or self._epoll is None:
            return None
        try:
            return self._pidfd_open(pid)
        except ProcessLookupError:
            raise
        except OSError as exc:
            if exc.errno in _PIDFD_MISSING:
                self._pidfd_open = None  # it will not come back: poll from now on
            self._fall_back(f"pidfd_open: {_reason(exc)}")
            return None

    def _register(self, entry: _Entry, fd: int) -> None:
        try:
            if sys.platform == "linux":
                self._epoll.register(fd, select.EPOLLIN)
        except OSError as exc:  # ENOMEM, ENOSPC (max_user_watches): poll this one
            os.close(fd)
            entry.fd = None
            self._fall_back(f"epoll: {_reason(exc)}")
            return
        self._by_fd[fd] = entry

    def _fall_back(self, reason: str) -> None:
        """Poll (some) processes from now on; say why once per reason."""
        self._polling = reason
        if reason not in self._said:
            self._said.add(reason)
            log.warning("exit watcher: %s; polling watched processes every %g s instead",
                        reason, self.fallback_interval)

    def _drop_if_idle(self, entry: _Entry) -> None:
        if entry.callbacks or entry.popen is not None:
            return
        self._forget(entry)

    def _forget(self, entry: _Entry) -> None:
        self._by_pid.pop(entry.pid, None)
        if entry.fd is not None:
            self._by_fd.pop(entry.fd, None)
            if self._epoll is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._epoll.unregister(entry.fd)
            os.close(entry.fd)

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="workerguard-exit-watcher",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                for entry in self._next_exits():
                    self._finish(entry)
            except Exception:  # the watcher must never die: log and go on
                log.exception("exit watcher error")
                self._closed.wait(EXIT_WATCH_ERROR_PAUSE)

    def _next_exits(self) -> list[_Entry]:
        """Wait for exits: the pidfds that became readable, and (while any process is
        polled) every ``fallback_interval`` the polled ones that have gone."""
        wait = self.fallback_interval if self._polling is not None else EXIT_WATCH_WAKE
        ready: list[int] = []
        if self._epoll is not None:
            ready = [fd for fd, _ in self._epoll.poll(wait)]
        else:
            self._closed.wait(wait)
        with self._lock:
            exited = [self._by_fd[fd] for fd in ready if fd in self._by_fd]
            if self._polling is not None:
                exited += [e for e in self._by_pid.values() if e.fd is None and _exited(e)]
        return exited

    def _finish(self, entry: _Entry) -> None:
        code = None
        if entry.popen is not None:
            code = entry.popen.wait()  # exited: returns at once and reaps it
        with self._lock:
            if code is not None:
                self._codes[entry.pid] = code
                if len(self._codes) > _CODES_KEPT:
                    self._codes.pop(next(iter(self._codes)))
            else:
                code = self._codes.get(entry.pid)
            callbacks = list(entry.callbacks.values())
            self._forget(entry)
        event = Exit(entry.pid, code, time.time())
        for callback in callbacks:
            self._fire(callback, event)

    @staticmethod
    def _fire(callback: Callback, event: Exit) -> None:
        try:
            callback(event)
        except Exception:
            log.exception("exit callback for pid %s failed", event.pid)


def _reason(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "")
    return f"{name} {exc.strerror or exc}".strip()


def _still(pid: int, start: int) -> bool:
    """``identity.alive``, where a process that cannot be read counts as alive (polled
    until it can: a watch never raises)."""
    try:
        return alive(pid, start)
    except Exception:
        return True


def _exited(entry: _Entry) -> bool:
    """Our child has exited (not yet reaped), or the watched process is no longer alive."""
    if entry.popen is not None:
        return entry.popen.poll() is not None
    # Every entry has one or the other: ``child`` gives a popen, ``watch`` a start.
    return entry.start is None or not _still(entry.pid, entry.start)


_every_watcher: weakref.WeakSet[ExitWatcher] = weakref.WeakSet()


class _Shared:
    """This process's watcher, made on first use (a forked child gets a fresh lock)."""

    lock = threading.Lock()
    watcher: ExitWatcher | None = None


def _after_fork_in_child() -> None:
    _Shared.lock = threading.Lock()
    for watcher in list(_every_watcher):
        watcher._begin_in_child()


if sys.platform != "win32":
    os.register_at_fork(after_in_child=_after_fork_in_child)


def shared_watcher() -> ExitWatcher:
    """This process's watcher: every child spawned here is reaped by it."""
    with _Shared.lock:
        if _Shared.watcher is None:
            _Shared.watcher = ExitWatcher()
        return _Shared.watcher
