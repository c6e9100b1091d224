"""Stop instances: gracefully first, then kill all of each instance after ``stop_timeout``.

With a cgroup: the stop signal goes to the main process (and, once it has exited, to
whatever is left of the instance), and after ``stop_timeout`` ``cgroup.kill`` SIGKILLs
every member at once: nothing escapes, not even a helper that ignores SIGTERM and was
orphaned long ago. Without one: every process of the instance (its tree and the
members recorded for it) gets the signal, then SIGKILL.

A process that is already gone counts as stopped. A PID now used by another process
(create_time differs) is never signalled. All instances are stopped in parallel.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from workerguard.timing import KILL_WAIT, STOP_POLL
from workerguard.workers import cgroups
from workerguard.workers.discover import alive
from workerguard.workers.model import Instance, same_start


@dataclass
class StopOutcome:
    stopped: list[int] = field(default_factory=list)
    """Main pids of instances that are gone now (including ones already gone)."""
    killed: list[int] = field(default_factory=list)
    """Pids that needed SIGKILL after the grace period."""
    survivors: list[int] = field(default_factory=list)
    """Pids still alive after SIGKILL (should never happen; reported, not hidden)."""


def _gone(proc: psutil.Process) -> bool:
    """``proc`` exited or is a zombie; a newer process under its PID does not count.

    Its create_time was read when it was found (``_started``; psutil keeps it), so this
    asks about that very process."""
    try:
        return not alive(proc.pid, proc.create_time())
    except psutil.NoSuchProcess:  # its create_time was never read, and now it is gone
        return True


def _started(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    """``procs`` with their create_time read now, for ``_gone``; those gone already are left out."""
    out = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.create_time()
            out.append(proc)
    return out


def _signal(procs: Sequence[psutil.Process], signum: int) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.send_signal(signum)  # psutil refuses if the PID was reused meanwhile


class _Target:
    """One instance being stopped."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.group = Path(instance.cgroup) if instance.cgroup else None
        self.main: psutil.Process | None = None
        self.procs: list[psutil.Process] = []
        with contextlib.suppress(psutil.NoSuchProcess):
            main = psutil.Process(instance.pid)
            if same_start(main.create_time(), instance.create_time):
                self.main = main
        if self.group is None:
            self.procs = self._tree()
        self.rest_signalled = False

    def _tree(self) -> list[psutil.Process]:
        procs = {} if self.main is None else {self.main.pid: self.main}
        if self.main is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                procs.update({c.pid: c for c in self.main.children(recursive=True)})
        for pid in self.instance.tree:  # recorded members, orphans included
            if pid not in procs:
                with contextlib.suppress(psutil.NoSuchProcess):
                    procs[pid] = psutil.Process(pid)
        return _started(procs.values())

    def begin(self, signum: int) -> None:
        if self.group is None:
            _signal(self.procs, signum)
        elif self.main is not None and not _gone(self.main):
            _signal([self.main], signum)
        else:
            self.signal_rest(signum)

    def signal_rest(self, signum: int) -> None:
        """In a cgroup: once the main process is gone, the rest get the stop signal too."""
        if self.group is not None and not self.rest_signalled:
            self.rest_signalled = True
            _signal(_procs(cgroups.members(self.group)), signum)

    def done(self, signum: int) -> bool:
        if self.group is None:
            return all(_gone(p) for p in self.procs)
        if self.main is None or _gone(self.main):
            self.signal_rest(signum)
        return not cgroups.populated(self.group)

    def kill(self) -> list[int]:
        if self.group is None:
            left = [p for p in self.procs if not _gone(p)]
            _signal(left, signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
            return [p.pid for p in left]
        members = cgroups.members(self.group)
        cgroups.kill(self.group, timeout=0)
        return members

    def finish(self) -> None:
        if self.group is not None and not cgroups.populated(self.group):
            cgroups.remove(self.group)

    def survivors(self) -> list[int]:
        if self.group is not None:
            return cgroups.members(self.group)
        return [p.pid for p in self.procs if not _gone(p)]


def _procs(pids: Sequence[int]) -> list[psutil.Process]:
    out = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            out.append(psutil.Process(pid))
    return out


def _wait(targets: Sequence[_Target], timeout: float, signum: int) -> list[_Target]:
    deadline = time.monotonic() + timeout
    remaining = [t for t in targets if not t.done(signum)]
    while remaining and time.monotonic() < deadline:
        time.sleep(STOP_POLL)
        remaining = [t for t in remaining if not t.done(signum)]
    return remaining


def stop_instances(instances: Sequence[Instance], stop_signal: str = "SIGTERM",
                   stop_timeout: float = 10.0) -> StopOutcome:
    """Stop every instance in parallel; return what stopped and what needed a kill."""
    signum = getattr(signal, stop_signal, signal.SIGTERM)
    outcome = StopOutcome()
    targets = [_Target(inst) for inst in instances]
    for target in targets:
        target.begin(signum)
    remaining = _wait(targets, stop_timeout, signum)
    for target in remaining:
        outcome.killed += target.kill()
    remaining = _wait(remaining, KILL_WAIT, signum)
    for target in targets:
        target.finish()
    for target in remaining:
        outcome.survivors += target.survivors()
    failed = {id(t) for t in remaining}
    outcome.stopped = [t.instance.pid for t in targets if id(t) not in failed]
    return outcome
