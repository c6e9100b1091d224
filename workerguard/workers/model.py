"""What an instance is: one worker process, with its descendants folded in."""

from __future__ import annotations

from dataclasses import dataclass, field

MARK_PROFILE = "WORKERGUARD_PROFILE"
MARK_HOST = "WORKERGUARD_HOST_ID"
MARK_INSTANCE = "WORKERGUARD_INSTANCE"
CREATE_TIME_TICK = 0.01
"""psutil's create_time has the resolution of a clock tick (100 Hz)."""


def same_start(seen: float, known: float) -> bool:
    """True if two create_times name the same process: a reused PID starts later."""
    return abs(seen - known) < CREATE_TIME_TICK


@dataclass(frozen=True, order=False)
class Instance:
    """A running instance of a profile.

    ``pid`` and ``create_time`` identify the root process; together they survive PID
    reuse. ``tree`` holds the root and every descendant seen in the same scan.
    """

    profile: str
    pid: int
    create_time: float
    cmdline: tuple[str, ...] = ()
    instance_id: str | None = None
    """The WORKERGUARD_INSTANCE mark; None for a process found only by ``match``."""
    tree: tuple[int, ...] = field(default=())

    @property
    def marked(self) -> bool:
        return self.instance_id is not None

    def sort_key(self) -> tuple[float, int]:
        """Age order with a deterministic tie-break: create_time ticks at 10 ms."""
        return (self.create_time, self.pid)
