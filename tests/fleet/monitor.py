"""The bed's monitor: every host's instance groups, read every 20 ms from the root namespace
(../shared/FLEET.md §5.5).

An instance is *running* while its group is populated (``cgroup.events``: any process of
it alive, the leash included) and not frozen. Per group it records when it was first and
last seen running, when it was first seen empty (or gone), the exact start of its first
process (``/proc/<pid>/stat`` starttime: ``CLOCK_BOOTTIME`` ticks, the clock of the leash
and of the lease files) and the fencing token and slot in its environment. Per host it keeps the
latest hard deadline its lease file held. Every time is ``CLOCK_BOOTTIME`` seconds (real: a
host on a clock of its own, check F7, has its deadlines turned back by ``Host.real``).

The check "at most N" is ``most``: the largest number of running instances in any one
sample, across all hosts; ``overlaps`` lists the samples above N.

A thawed host (``thawing``) is the one exception, bounded: its instances from before the
freeze run again for the moment their leash needs to see its deadline passed and kill
them (every task of the host resumes at once; the leash cannot be first). For
``THAW_ALLOWANCE`` after the thaw they are counted apart (``thaw_overlaps``: the samples
they alone took above N); still running after it, they count as any other. The fenced
store is what makes that moment harmless: their writes carry the old token.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from tests.fleet.bed import PROFILE, Fleet, Host, boottime
from tests.support import in_background, poll_for

INTERVAL = 0.02
THAW_ALLOWANCE = 1.0
"""Seconds a thawed instance may run on before the monitor counts it (FLEET §6 F5 asks
for 100 ms; the checks report the real figure, this is their margin on a loaded machine)."""
TICKS = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


@dataclass
class Group:
    host: str
    path: Path
    first_seen: float
    last_seen: float
    start: float
    """When the instance's first process started (its spawn), exact to a clock tick."""
    token: int | None = None
    slot: int | None = None
    """``WORKERGUARD_SLOT`` of its grant (read with the token)."""
    gone: float | None = None
    """First sample that found the group empty or removed."""


def _start_time(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19]) / TICKS


def _grant(pid: int) -> tuple[int, int | None] | None:
    """The fencing token and slot in the process's environment; None without a token."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    found = dict(item.split(b"=", 1) for item in environ.split(b"\0") if b"=" in item)
    token, slot = found.get(b"WORKERGUARD_FENCING_TOKEN"), found.get(b"WORKERGUARD_SLOT")
    if token is None:
        return None
    return int(token), None if slot is None else int(slot)


def _events(path: Path) -> tuple[bool, bool] | None:
    """(populated, frozen), None if the group is gone."""
    try:
        text = (path / "cgroup.events").read_text()
    except OSError:
        return None
    return "populated 1" in text, "frozen 1" in text


def _procs(path: Path) -> list[int]:
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


@dataclass
class Monitor:
    fleet: Fleet
    limit: int = 1
    groups: dict[Path, Group] = field(default_factory=dict)
    samples: int = 0
    most: int = 0
    overlaps: list[tuple[float, list[str]]] = field(default_factory=list)
    thaws: dict[str, float] = field(default_factory=dict)
    """Per host: when it was last thawed."""
    thaw_overlaps: list[tuple[float, list[str]]] = field(default_factory=list)
    deadlines: dict[str, float] = field(default_factory=dict)
    """Per host: the latest non-zero hard deadline its lease file held."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        now = boottime()
        running: list[Group] = []
        with self._lock:
            for host in self.fleet.hosts:
                running += self._sample_host(host, now)
                self._read_deadline(host)
            self.samples += 1
            counted = [g for g in running if not self._thawing(g, now)]
            self.most = max(self.most, len(counted))
            names = [f"{g.host}:{g.path.name}" for g in running]
            if len(counted) > self.limit:
                self.overlaps.append((now, names))
            elif len(running) > self.limit:
                self.thaw_overlaps.append((now, names))

    def _thawing(self, group: Group, now: float) -> bool:
        thawed = self.thaws.get(group.host)
        return thawed is not None and group.first_seen < thawed <= now <= thawed + THAW_ALLOWANCE

    def thawing(self, host: Host) -> float:
        """Mark ``host`` as thawed now (call it just before the thaw); returns the time."""
        with self._lock:
            self.thaws[host.host_id] = at = boottime()
        return at

    def _sample_host(self, host: Host, now: float) -> list[Group]:
        base = host.workers / host.host_id / PROFILE
        try:
            paths = [Path(e.path) for e in os.scandir(base) if e.is_dir()]
        except OSError:
            paths = []
        running = []
        for path in paths:
            state = _events(path)
            group = self.groups.get(path)
            if state is None or not state[0]:
                if group is not None and group.gone is None:
                    group.gone = now
                continue
            if group is None or group.gone is not None:
                pids = _procs(path)
                starts = [s for s in map(_start_time, pids) if s is not None]
                group = Group(host.host_id, path, now, now, min(starts, default=now))
                self.groups[path] = group
            if group.token is None:
                grant = next((g for g in map(_grant, _procs(path)) if g is not None), None)
                if grant is not None:
                    group.token, group.slot = grant
            group.last_seen = now
            if not state[1]:
                running.append(group)
        for path, group in self.groups.items():
            if group.host == host.host_id and group.gone is None and path not in paths:
                group.gone = now
        return running

    def _read_deadline(self, host: Host) -> None:
        with contextlib.suppress(OSError, ValueError):
            deadline = float(host.lease_file.read_text().strip())
            if deadline > 0:  # written on the host's clock
                self.deadlines[host.host_id] = host.real(deadline)

    # queries ---------------------------------------------------------------------------
    def running(self) -> list[Group]:
        with self._lock:
            return [g for g in self.groups.values() if g.gone is None]

    def group(self, path: Path) -> Group:
        with self._lock:
            return self.groups[path]

    def wait(self, predicate: Callable[[], T | None], timeout: float, message: str) -> T:
        found = poll_for(predicate, timeout, interval=INTERVAL, message=message)
        assert found is not None
        return found

    # thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(INTERVAL)

    @contextlib.contextmanager
    def watching(self) -> Iterator[Monitor]:
        with in_background(self._run, self._stop, "fleet-monitor"):
            yield self
