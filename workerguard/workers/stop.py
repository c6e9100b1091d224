"""Stop instances: the whole tree, gracefully first, then SIGKILL after ``stop_timeout``.

A process that is already gone counts as stopped. A PID now used by another process
(create_time differs) is never signalled.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import psutil

from .model import Instance, same_start

_POLL = 0.02
_KILL_GRACE = 5.0


@dataclass
class StopOutcome:
    stopped: list[int] = field(default_factory=list)
    """Root pids of instances that are gone now (including ones already gone)."""
    killed: list[int] = field(default_factory=list)
    """Pids that needed SIGKILL after the grace period."""
    survivors: list[int] = field(default_factory=list)
    """Pids still alive after SIGKILL (should never happen; reported, not hidden)."""


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _tree(instance: Instance) -> list[psutil.Process]:
    """The live processes of an instance, or [] if its root is gone or its PID was reused."""
    try:
        root = psutil.Process(instance.pid)
        if not same_start(root.create_time(), instance.create_time):
            return []  # PID reused by an unrelated process: never touch it
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _signal_all(procs: Sequence[psutil.Process], signum: int) -> None:
    for proc in procs:
        try:
            proc.send_signal(signum)  # psutil refuses if the PID was reused meanwhile
        except psutil.NoSuchProcess:
            pass
        except psutil.AccessDenied:
            pass  # reported as a survivor if it does not go away


def _wait_gone(procs: Sequence[psutil.Process], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    remaining = [p for p in procs if not _gone(p)]
    while remaining and time.monotonic() < deadline:
        time.sleep(_POLL)
        remaining = [p for p in remaining if not _gone(p)]
    return remaining


def stop_instances(instances: Sequence[Instance], stop_signal: str = "SIGTERM",
                   stop_timeout: float = 10.0) -> StopOutcome:
    """Stop every instance's tree in parallel; return what stopped and what needed a kill."""
    outcome = StopOutcome()
    trees = {inst.pid: _tree(inst) for inst in instances}
    everyone = [proc for tree in trees.values() for proc in tree]
    _signal_all(everyone, getattr(signal, stop_signal, signal.SIGTERM))
    remaining = _wait_gone(everyone, stop_timeout)
    if remaining:
        outcome.killed = [p.pid for p in remaining]
        _signal_all(remaining, getattr(signal, "SIGKILL", signal.SIGTERM))
        remaining = _wait_gone(remaining, _KILL_GRACE)
    outcome.survivors = [p.pid for p in remaining]
    survivor_set = set(outcome.survivors)
    outcome.stopped = [pid for pid, tree in trees.items()
                       if not any(p.pid in survivor_set for p in tree)]
    return outcome
