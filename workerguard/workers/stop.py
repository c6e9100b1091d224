"""Stop instances: gracefully first, then kill all of each instance after ``stop_timeout``.

With a cgroup: the stop signal goes to the main process (and, once it has exited, to
whatever is left of the instance), and after ``stop_timeout`` ``cgroup.kill`` SIGKILLs
every member at once: nothing escapes, not even a helper that ignores SIGTERM and was
orphaned long ago. Without one: every process of the instance (its members as
discovery saw them and the main process's current descendants) gets the signal, then
SIGKILL.

Every process is held as ``(pid, start)`` from the moment it was identified, never as
a bare pid: each signal goes through ``signals.send_signal``, which re-verifies that
very process under a pidfd, so a pid reused by a bystander (a member that exited, its
number taken) is never signalled, the main process's included. A member of a cgroup is
verified by its membership. A process that is already gone counts as stopped. All
instances are stopped in parallel.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from workerguard.timing import KILL_WAIT, STOP_POLL
from workerguard.workers import cgroups
from workerguard.workers.identity import alive, stat
from workerguard.workers.model import Instance
from workerguard.workers.signals import send_signal, send_signal_if

Proc = tuple[int, int]
"""A process as identified: ``(pid, start)``."""
KILL = signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM


@dataclass
class StopOutcome:
    stopped: list[int] = field(default_factory=list)
    """Main pids of instances that are gone now (including ones already gone)."""
    killed: list[int] = field(default_factory=list)
    """Pids that needed SIGKILL after the grace period."""
    survivors: list[int] = field(default_factory=list)
    """Pids still alive after SIGKILL (should never happen; reported, not hidden)."""


def gone(proc: Proc) -> bool:
    """``proc`` exited or is a zombie; a newer process under its pid does not count."""
    try:
        return not alive(*proc)
    except OSError:  # it exists and cannot be read: not gone
        return False


def signal_all(procs: Sequence[Proc], signum: int) -> list[int]:
    """Send ``signum`` to each of ``procs`` that is still that very process; the pids
    signalled."""
    return [pid for pid, start in procs if send_signal(pid, start, signum)]


def descendants(root: Proc) -> list[Proc]:
    """The live descendants of ``root`` (if it is still that process), as ``(pid, start)``,
    each read with its parent: a pid reused by a stranger meanwhile is not a child."""
    if gone(root):
        return []
    try:
        pids = [c.pid for c in psutil.Process(root[0]).children(recursive=True)]
    except psutil.Error:
        return []
    tree, out = {root[0]}, []
    for pid in pids:  # parents come before their children
        with contextlib.suppress(OSError):
            child = stat(pid)
            if child is not None and not child.zombie and child.ppid in tree:
                tree.add(pid)
                out.append((pid, child.start))
    return out


class _Target:
    """One instance being stopped."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.group = Path(instance.cgroup) if instance.cgroup else None
        self.main: Proc = (instance.pid, instance.start)
        self.procs: list[Proc] = []
        if self.group is None:
            found = {self.main, *descendants(self.main), *instance.members}
            self.procs = [proc for proc in found if not gone(proc)]
        self.rest_signalled = False

    def begin(self, signum: int) -> None:
        if self.group is None:
            signal_all(self.procs, signum)
        elif not gone(self.main):
            signal_all([self.main], signum)
        else:
            self.signal_rest(signum)

    def signal_rest(self, signum: int) -> None:
        """In a cgroup: once the main process is gone, the rest get the stop signal too,
        each only while it is still a member (``signals.send_signal_if``)."""
        if self.group is not None and not self.rest_signalled:
            self.rest_signalled = True
            for pid in cgroups.members(self.group):
                send_signal_if(pid, signum, _in_group(pid, self.group))

    def done(self, signum: int) -> bool:
        if self.group is None:
            return all(gone(p) for p in self.procs)
        if gone(self.main):
            self.signal_rest(signum)
        return not cgroups.populated(self.group)

    def kill(self) -> list[int]:
        if self.group is None:
            return signal_all([p for p in self.procs if not gone(p)], KILL)
        members = cgroups.members(self.group)
        cgroups.kill(self.group, timeout=0)
        return members

    def finish(self) -> None:
        if self.group is not None and not cgroups.populated(self.group):
            cgroups.remove(self.group)

    def survivors(self) -> list[int]:
        if self.group is not None:
            return cgroups.members(self.group)
        return [pid for pid, start in self.procs if not gone((pid, start))]


def _in_group(pid: int, group: Path) -> Callable[[], bool]:
    return lambda: pid in cgroups.members(group)


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
