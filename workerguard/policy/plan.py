"""The pure planning function: instances + policy -> keep, stop, how many to start.

Most of workerguard's correctness lives here, away from processes and Redis, so it
is tested exhaustively with generated inputs (tests/test_plan.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from workerguard.config.schema import Keep
from workerguard.workers.leashed import LeaseTerms
from workerguard.workers.model import Instance


@dataclass(frozen=True)
class Plan:
    keep: tuple[Instance, ...]
    stop: tuple[Instance, ...]
    start: int
    spare: tuple[Instance, ...] = ()
    """Adopted instances beyond ``max_workers`` that the profile does not let us stop."""
    leases: tuple[LeaseTerms, ...] = ()
    """A cluster profile's starts: the grant of each (``start`` is their number)."""

    @property
    def is_noop(self) -> bool:
        return not self.stop and self.start == 0

    def without_starts(self) -> Plan:
        """The same plan with nothing started (crash-loop backoff is active)."""
        return Plan(keep=self.keep, stop=self.stop, start=0, spare=self.spare)


def _preference(instance: Instance) -> int:
    """Survivors are chosen from instances workerguard started with the current command
    first, then ones started with an older command, then adopted ones."""
    if instance.origin == "adopted":
        return 2
    return 1 if instance.outdated else 0


def make_plan(instances: Sequence[Instance], *, min_workers: int, max_workers: int,
              keep: Keep = "newest", may_start: bool = True, stop_adopted: bool = False) -> Plan:
    """Decide which instances survive and how many to start.

    Instances beyond ``max_workers`` are stopped, keeping the newest (or oldest) by
    ``(start, pid)`` within each preference class (``_preference``);
    ``start`` ticks at 10 ms, so the pid breaks ties. An adopted instance is
    stopped only with ``stop_adopted``; otherwise an extra one is left alone as
    ``spare``. When ``may_start`` is true, instances are started up to ``min_workers``.
    """
    if max_workers < 0 or min_workers < 0:
        raise ValueError("min_workers and max_workers must be >= 0")
    if may_start and min_workers > max_workers:
        raise ValueError("min_workers must be <= max_workers")
    unique = {inst.pid: inst for inst in instances}
    ordered = sorted(unique.values(), key=Instance.sort_key, reverse=(keep == "newest"))
    ordered.sort(key=_preference)  # stable: age order holds within each class
    kept = ordered[:max_workers]
    extras = ordered[max_workers:]
    stopped = [i for i in extras if stop_adopted or i.origin != "adopted"]
    spare = [i for i in extras if not (stop_adopted or i.origin != "adopted")]
    start = max(0, min_workers - len(kept)) if may_start else 0
    return Plan(
        keep=tuple(sorted(kept, key=Instance.sort_key)),
        stop=tuple(sorted(stopped, key=Instance.sort_key)),
        start=start,
        spare=tuple(sorted(spare, key=Instance.sort_key)),
    )
