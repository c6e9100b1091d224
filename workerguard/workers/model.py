"""What an instance is: one worker, its main process and every process that belongs to it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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
CREATE_TIME_TICK = 0.01
"""psutil's create_time has the resolution of a clock tick (100 Hz)."""

Origin = Literal["spawned", "adopted"]
"""``spawned``: started by workerguard (a cgroup, a record or, last resort, its mark say so).
``adopted``: started by hand, found through the profile's ``match``."""


def same_start(seen: float, known: float) -> bool:
    """True if two create_times name the same process: a reused PID starts later."""
    return abs(seen - known) < CREATE_TIME_TICK


@dataclass(frozen=True, order=False)
class Instance:
    """A running instance of a profile.

    ``pid`` and ``create_time`` identify the main process; together they survive PID
    reuse. ``tree`` holds every process of the instance: its cgroup's members, or the
    main process with its descendants and the processes recorded as its members.
    """

    profile: str
    pid: int
    create_time: float
    cmdline: tuple[str, ...] = ()
    instance_id: str | None = None
    """The instance id workerguard gave it; None for a process adopted through ``match``."""
    tree: tuple[int, ...] = field(default=())
    origin: Origin = "spawned"
    outdated: bool = False
    """Started with another ``command`` than the profile has now."""
    cgroup: str | None = None
    index: int = 0
    """Its slot within the profile, the lowest free one at its start (``WORKERGUARD_INDEX``)."""

    @property
    def spawned(self) -> bool:
        """Started by workerguard (the status contract calls it ``marked``)."""
        return self.origin == "spawned"

    def sort_key(self) -> tuple[float, int]:
        """Age order with a deterministic tie-break: create_time ticks at 10 ms."""
        return (self.create_time, self.pid)


@dataclass(frozen=True)
class Leftover:
    """Processes that remain of an instance whose main process has ended."""

    profile: str
    instance_id: str
    pids: tuple[int, ...]
    cgroup: str | None = None
