"""Learn of process exits as they happen, in one thread for the whole process.

On Linux (>= 5.3) each watched process gets a pidfd (``pidfd_open``) in one epoll
set: the kernel wakes the thread the moment a process exits, for any process, not
only our children, and a pidfd pins its process so PID reuse cannot fool it. The
same thread reaps the children this process spawned (no zombie under a long-lived
guard, no thread per child) and so knows their exit code or signal. Elsewhere the
thread polls every ``fallback_interval`` seconds (``discover.alive`` per watched
process and poll: an exit, a zombie or a reused PID ends a watch).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workerguard.timing import EXIT_WATCH_ERROR_PAUSE, EXIT_WATCH_FALLBACK, EXIT_WATCH_WAKE
from workerguard.workers.discover import alive

log = logging.getLogger("workerguard.watch")
_CODES_KEPT = 4096


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
    create_time: float | None = None
    """Of a watched process (``watch``); a child (``child``) has its ``popen`` instead."""
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


class ExitWatcher:
    def __init__(self, fallback_interval: float = EXIT_WATCH_FALLBACK) -> None:
        self.fallback_interval = fallback_interval
        self._lock = threading.Lock()
        self._by_pid: dict[int, _Entry] = {}
        self._codes: dict[int, int] = {}
        self._epoll: Any = None
        if sys.platform == "linux":
            self._epoll = select.epoll()
        self._by_fd: dict[int, _Entry] = {}
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    # registration --------------------------------------------------------------------
    def child(self, popen: subprocess.Popen[bytes]) -> None:
        """Reap this child when it exits and remember its exit code."""
        self._add(popen.pid, None, popen=popen)

    def watch(self, key: str, pid: int, create_time: float, callback: Callback) -> None:
        """Call ``callback(Exit)`` once when ``pid`` (started at ``create_time``) exits.

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
        self._add(pid, (key, callback), create_time=create_time)

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

    # internals -----------------------------------------------------------------------
    def _add(self, pid: int, watch: tuple[str, Callback] | None, *,
             popen: subprocess.Popen[bytes] | None = None, create_time: float | None = None) -> None:
        gone = False
        with self._lock:
            entry = self._by_pid.get(pid)
            if entry is None:
                fd = None
                if sys.platform == "linux" and self._epoll is not None:
                    try:
                        fd = os.pidfd_open(pid)
                    except ProcessLookupError:
                        gone = True
                if not gone and create_time is not None and not alive(pid, create_time):
                    gone = True  # the PID names another process now
                    if fd is not None:
                        os.close(fd)
                if not gone:
                    entry = _Entry(pid, fd, create_time)
                    self._by_pid[pid] = entry
                    if sys.platform == "linux" and fd is not None and self._epoll is not None:
                        self._by_fd[fd] = entry
                        self._epoll.register(fd, select.EPOLLIN)
            if entry is not None:
                if popen is not None:
                    entry.popen = popen
                if watch is not None:
                    entry.callbacks[watch[0]] = watch[1]
            self._ensure_thread()
        if gone and watch is not None:
            self._fire(watch[1], Exit(pid, self._codes.get(pid), time.time()))

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
                if self._epoll is not None:
                    ready = [fd for fd, _ in self._epoll.poll(EXIT_WATCH_WAKE)]
                    with self._lock:
                        exited = [self._by_fd[fd] for fd in ready if fd in self._by_fd]
                else:
                    self._closed.wait(self.fallback_interval)
                    with self._lock:
                        exited = [e for e in self._by_pid.values() if _exited(e)]
                for entry in exited:
                    self._finish(entry)
            except Exception:  # the watcher must never die: log and go on
                log.exception("exit watcher error")
                self._closed.wait(EXIT_WATCH_ERROR_PAUSE)

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


def _exited(entry: _Entry) -> bool:
    """Our child has exited (not yet reaped), or the watched process is no longer alive."""
    if entry.popen is not None:
        return entry.popen.poll() is not None
    # Every entry has one or the other: ``child`` gives a popen, ``watch`` a create_time.
    return entry.create_time is None or not alive(entry.pid, entry.create_time)


_shared: list[ExitWatcher] = []
_shared_lock = threading.Lock()


def shared_watcher() -> ExitWatcher:
    """This process's watcher: every child spawned here is reaped by it."""
    with _shared_lock:
        if not _shared:
            _shared.append(ExitWatcher())
        return _shared[0]
