"""The exit watcher (workers/watch.py) with real processes, its pidfd_open injected."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from tests.support import SLEEPER, poll_for
from workerguard.workers.identity import start_of
from workerguard.workers.spawn import exit_code
from workerguard.workers.watch import Exit, ExitWatcher, shared_watcher

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="pidfds: Linux only")


class FailingPidfd:
    """``os.pidfd_open`` that fails with ``code`` the first ``times`` calls."""

    def __init__(self, code: int, times: int) -> None:
        self.code, self.times, self.calls = code, times, 0

    def __call__(self, pid: int) -> int:
        self.calls += 1
        if self.calls <= self.times:
            raise OSError(self.code, os.strerror(self.code))
        return os.pidfd_open(pid)


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for child in started:
        child.kill()
        child.wait()


def start(children: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    child = subprocess.Popen([sys.executable, str(SLEEPER)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    children.append(child)
    return child


class Seen:
    """The exits a watcher reported (from its thread)."""

    def __init__(self) -> None:
        self.exits: list[Exit] = []
        self._lock = threading.Lock()

    def record(self, event: Exit) -> None:
        with self._lock:
            self.exits.append(event)

    def watch(self, watcher: ExitWatcher, child: subprocess.Popen[bytes]) -> None:
        """Reap ``child`` and report its exit, as the guard does for an instance it started."""
        watcher.child(child)
        start = start_of(child.pid)
        assert start is not None
        watcher.watch(f"i{child.pid}", child.pid, start, self.record)


@contextlib.contextmanager
def two_watched(opener: FailingPidfd, children: list[subprocess.Popen[bytes]],
                ) -> Iterator[tuple[ExitWatcher, Seen, subprocess.Popen[bytes], subprocess.Popen[bytes]]]:
    """A watcher with ``opener`` as its pidfd_open, watching two fresh children."""
    watcher = ExitWatcher(pidfd_open=opener)
    seen = Seen()
    try:
        first, second = start(children), start(children)
        seen.watch(watcher, first)
        seen.watch(watcher, second)
        yield watcher, seen, first, second
    finally:
        watcher.close()


def test_out_of_descriptors_polls_only_the_process_it_hit(children, caplog):
    """EMFILE for the first process: that one is polled, the next gets its pidfd; both
    exits are reported with their signal, and the watcher says why it polls, once."""
    opener = FailingPidfd(errno.EMFILE, times=1)
    with two_watched(opener, children) as (watcher, seen, polled, pinned):
        assert watcher.mode.startswith("polling every 0.5 s (pidfd_open: EMFILE")
        polled.kill()
        pinned.kill()
        poll_for(lambda: len(seen.exits) == 2, message="both exits")
        assert sorted((e.pid, e.returncode) for e in seen.exits) == sorted(
            [(polled.pid, -9), (pinned.pid, -9)])
        assert opener.calls == 2
        assert caplog.text.count("pidfd_open: EMFILE") == 1


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.EPERM])
def test_a_missing_or_forbidden_pidfd_open_is_not_tried_again(children, code):
    """ENOSYS (kernel < 5.3) or EPERM (seccomp): every process is polled from then on."""
    opener = FailingPidfd(code, times=1_000)
    with two_watched(opener, children) as (watcher, seen, first, second):
        assert opener.calls == 1
        second.kill()
        poll_for(lambda: [e.pid for e in seen.exits] == [second.pid], message="the exit")
        first.kill()
        poll_for(lambda: len(seen.exits) == 2, message="the second exit")
        assert watcher.watching() == set()


def test_a_forked_child_starts_with_its_own_watcher_and_the_parent_keeps_its_watches(children):
    """A prefork pool child forks from a guard process whose watcher has a thread, an
    epoll set and watches: in the child every watcher starts over (nothing watched, its
    own epoll), and it learns of the exits of what it watches itself; the parent still
    gets each of its exits, once."""
    watcher = shared_watcher()
    seen = Seen()
    mine = start(children)
    seen.watch(watcher, mine)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        code = 1
        try:
            os.close(read)
            inherited = watcher.watching()
            own = Seen()
            theirs = subprocess.Popen([sys.executable, str(SLEEPER)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            own.watch(shared_watcher(), theirs)
            theirs.kill()
            poll_for(lambda: own.exits, message="the child's own exit")
            os.write(write, f"{sorted(inherited)} {own.exits[0].pid == theirs.pid} "
                            f"{own.exits[0].returncode}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        said = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert said == "[] True -9"
    mine.kill()
    poll_for(lambda: seen.exits, message="the parent's exit")
    assert [(e.pid, e.returncode) for e in seen.exits] == [(mine.pid, -9)]


def test_an_exit_code_is_read_even_while_the_watcher_is_reaping_the_child(children):
    """``Popen.poll`` says None ("we know nothing yet") while another thread holds the
    Popen's wait lock, as the watcher does while it reaps: a worker that had failed at once
    was reported started that way. ``spawn.exit_code`` waits for the reaper instead."""
    child = subprocess.Popen([sys.executable, str(SLEEPER), "--exit-code", "7"])
    children.append(child)
    poll_for(lambda: os.waitid(os.P_PID, child.pid,
                               os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None,
             timeout=30, message="the child to exit")
    read: list[int | None] = []
    with child._waitpid_lock:  # type: ignore[attr-defined]  # the reaper, mid-wait
        assert child.poll() is None  # the trap: it has exited, yet poll says None
        reader = threading.Thread(target=lambda: read.append(exit_code(child)))
        reader.start()
        reader.join(0.3)
        assert reader.is_alive() and read == []  # waiting for the reaper, not guessing
    reader.join(10)
    assert read == [7]


def test_an_exit_code_is_none_while_the_child_runs_and_read_once_it_was_reaped(children):
    child = subprocess.Popen([sys.executable, str(SLEEPER)])
    children.append(child)
    assert exit_code(child) is None
    child.kill()
    os.waitpid(child.pid, 0)  # reaped behind the Popen's back
    assert exit_code(child) == 0  # Popen's own answer for a child it cannot wait for
