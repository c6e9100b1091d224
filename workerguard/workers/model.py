"""What an instance is: one worker, its main process and every process that belongs to it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from workerguard.workers.identity import started_epoch

MARK_PROFILE = "WORKERGUARD_PROFILE"
MARK_HOST = "WORKERGUARD_HOST_ID"
MARK_INSTANCE = "WORKERGUARD_INSTANCE"
MARK_INDEX = "WORKERGUARD_INDEX"
"""The instance's slot within its profile (0, 1 ...): a worker of several derives its port from it."""
MARK_HELPER = "WORKERGUARD_HELPER"
"""Set (to ``probe``, ...) on a process the guard runs that is not an instance: such a
process carries none of an instance's marks, and discovery never counts it."""
INSTANCE_MARKS = (MARK_PROFILE, MARK_HOST, MARK_INSTANCE)
"""The marks that say "this process is that instance": never given to a helper."""

Origin = Literal["spawned", "adopted"]
"""``spawned``: started by workerguard (a cgroup, a record or, last resort, its mark say so).
``adopted``: started by hand, found through the profile's ``match``."""


@dataclass(frozen=True, order=False)
class Instance:
    """A running instance of a profile.

    ``pid`` and ``start`` (clock ticks since boot, see ``identity``) identify the main
    process; together they survive PID reuse and any step of the wall clock.
    ``members`` holds every process of the instance as ``(pid, start)``: its cgroup's
    members, or the main process with its descendants and the processes recorded as its
    members; a stop signals each only while it is still that very process.
    """

    profile: str
    pid: int
    start: int
    cmdline: tuple[str, ...] = ()
    instance_id: str | None = None
    """The instance id workerguard gave it; None for a process adopted through ``match``."""
    members: tuple[tuple[int, int], ...] = field(default=())
    origin: Origin = "spawned"
    outdated: bool = False
    """Started with another ``command`` than the profile has now."""
    cgroup: str | None = None
    index: int = 0
    """Its slot within the profile, the lowest free one at its start (``WORKERGUARD_INDEX``)."""
    token: int | None = None
    """A cluster instance's fencing token (the grant of its slot); None for a host profile."""

    @property
    def tree(self) -> tuple[int, ...]:
        """The pids of ``members``."""
        return tuple(pid for pid, _ in self.members)

    @property
    def spawned(self) -> bool:
        """Started by workerguard (the status contract calls it ``marked``)."""
        return self.origin == "spawned"

    @property
    def started_at(self) -> float:
        """When it started, in epoch seconds: for reports only (identity never uses it)."""
        return started_epoch(self.start)

    def sort_key(self) -> tuple[int, int]:
        """Age order with a deterministic tie-break: the start ticks at 10 ms."""
        return (self.start, self.pid)


@dataclass(frozen=True)
class Leftover:
    """Processes that remain of an instance whose main process has ended."""

    profile: str
    instance_id: str
    members: tuple[tuple[int, int], ...]
    """``(pid, start)`` of each: only those very processes are killed."""
    cgroup: str | None = None

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(pid for pid, _ in self.members)
