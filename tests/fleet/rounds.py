"""One fault round on the bed, measured (../shared/FLEET.md §6).

A round waits for the one instance of the singleton and for its lease to have been
renewed, faults its holder, waits for the new instance on another host, then restores the
holder and waits until its guard publishes again. It measures, on ``CLOCK_BOOTTIME``:

* ``new_after_fault``: the new instance's first process start minus the fault;
* ``gone_after_deadline``: the old instance's group first seen empty minus the hard
  deadline of its last acknowledged renewal (the leash's marker, else the lease file);
* ``margin``: the new instance's start minus the old group first seen empty, a lower
  bound of the real gap with no instance (the old one emptied at or before that sample).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

from tests.fleet.bed import Fleet, Host, L, P, boottime
from tests.fleet.monitor import Group, Monitor
from tests.support import poll_for

ROUNDS_VARIABLE = "WORKERGUARD_FLEET_ROUNDS"


def rounds(default: int) -> int:
    """Rounds per check: ``default``, or ``WORKERGUARD_FLEET_ROUNDS`` for a longer soak."""
    return int(os.environ.get(ROUNDS_VARIABLE, default))


@dataclass
class Measured:
    fault: str
    holder: str
    successor: str
    old_token: int | None
    new_token: int | None
    new_after_fault: float
    old_gone_after_fault: float
    gone_after_deadline: float | None
    margin: float
    at: float
    """When the fault began."""

    def line(self) -> str:
        late = ("" if self.gone_after_deadline is None
                else f" ({self.gone_after_deadline:+.3f} s from its deadline)")
        return (f"{self.fault}: new {self.new_after_fault:.3f} s after the fault, old gone "
                f"{self.old_gone_after_fault:.3f} s after it{late}, "
                f"gap >= {self.margin:.3f} s, token {self.old_token} -> {self.new_token}")


def steady(fleet: Fleet, monitor: Monitor, timeout: float = 90) -> tuple[Host, Group]:
    """The holder and its instance, once exactly one runs and has been renewed since it
    started (its lease file holds a deadline later than its start + D)."""
    def one() -> tuple[Host, Group] | None:
        running = monitor.running()
        if len(running) != 1:
            return None
        [group] = running
        host = next(h for h in fleet.hosts if h.host_id == group.host)
        deadline = monitor.deadlines.get(host.host_id, 0.0)
        if boottime() - group.first_seen < 2 * P or deadline < group.start + P:
            return None
        return host, group
    return monitor.wait(one, timeout, "one instance running with a renewed lease")


def fence_marker(host: Host, since: float) -> dict[str, float] | None:
    """The leash's marker of slot 0 (``at``: when it fenced, ``deadline``: the deadline it
    fenced at), if it fenced after ``since``."""
    try:
        marker = json.loads(host.lease_file.with_name(host.lease_file.name + ".fenced").read_text())
    except (OSError, ValueError):
        return None
    marker = {**marker, "at": host.real(float(marker["at"])),  # written on the host's clock
              "deadline": host.real(float(marker["deadline"]))}
    return marker if marker["at"] >= since else None


def fenced_deadline(host: Host, since: float) -> float | None:
    """The deadline the leash fenced at, from its marker, if it fenced after ``since``."""
    marker = fence_marker(host, since)
    return None if marker is None else float(marker["deadline"])


def successor(monitor: Monitor, holder: Host, since: float, timeout: float, why: str) -> Group:
    """The first instance seen running on a host other than ``holder`` after ``since``,
    once its token is read (a sample can catch its first process between fork and exec,
    still with the guard's environment: more often when the exec loads libfaketime)."""
    return monitor.wait(lambda: next((g for g in monitor.running() if g.host != holder.host_id
                                      and g.first_seen > since and g.token is not None), None),
                        timeout, f"a new instance on another host {why}")


def gone_at(monitor: Monitor, holder: Host, old: Group, timeout: float) -> float:
    """When ``old`` (``holder``'s instance) was first seen gone."""
    return monitor.wait(lambda: monitor.group(old.path).gone, timeout,
                        f"the old instance on {holder.host_id} to be gone")


def failover(fleet: Fleet, monitor: Monitor, fault: str, inflict: Callable[[Host], None],
             restore: Callable[[Host], None], timeout: float = 60,
             release: Callable[[Host], None] | None = None) -> Measured:
    """One round. ``release``, if given, runs once the new instance runs and before the
    old one is awaited gone (a frozen holder's instance goes only once thawed)."""
    holder, old = steady(fleet, monitor)
    deadline_before = monitor.deadlines[holder.host_id]
    at = boottime()
    inflict(holder)
    new = successor(monitor, holder, at, timeout, f"after {fault} of {holder.host_id}")
    if release is not None:
        release(holder)
    gone = gone_at(monitor, holder, old, timeout)
    deadline = fenced_deadline(holder, at)
    if deadline is None and fault != "crash":
        deadline = max(deadline_before, monitor.deadlines.get(holder.host_id, 0.0))
    measured = Measured(
        fault, holder.host_id, new.host, old.token, new.token, new.start - at, gone - at,
        None if deadline is None else gone - deadline, new.start - gone, at)
    restore(holder)
    return measured


def stale_starts(monitor: Monitor, measured: list[Measured]) -> list[str]:
    """Instances a faulted holder started between its fault and the next round's fault
    (or the end): none may exist, the slot was another host's by then."""
    found = []
    ends = [m.at for m in measured[1:]] + [float("inf")]
    for m, end in zip(measured, ends, strict=True):
        found += [f"{g.host}:{g.path.name} at +{g.first_seen - m.at:.3f} s"
                  for g in list(monitor.groups.values())
                  if g.host == m.holder and m.at < g.first_seen < end]
    return found


class GuardPause:
    """The fault "guard SIGSTOP 2L": ``stop`` freezes a host's guard worker (every process
    of it); ``restore`` continues it once 2 L have passed and waits until it is live again
    and has logged its lost lease (the slot went elsewhere meanwhile)."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._stopped: dict[str, tuple[list[int], float, int]] = {}

    def stop(self, host: Host) -> None:
        size = host.log.stat().st_size
        self._stopped[host.host_id] = (self.fleet.guard_signal(host, signal.SIGSTOP),
                                       boottime(), size)

    def restore(self, host: Host) -> None:
        pids, at, size = self._stopped.pop(host.host_id)
        poll_for(lambda: boottime() >= at + 2 * L, 4 * L, message="the stop to last 2 L")
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        self.fleet.wait_live(host)
        poll_for(lambda: "lease lost" in host.log.read_text(errors="replace")[size:], 30,
                 message=f"{host.host_id}'s guard to log its lost lease\n{host.log_tail()}")
