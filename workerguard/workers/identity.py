"""Is this process that instance? The one place that decides, read top to bottom.

**A process** is ``(pid, start, boot)``: its pid, its start time in clock ticks since
boot (``/proc/<pid>/stat`` field 22, ``starttime``) and the boot it belongs to
(``/proc/sys/kernel/random/boot_id``). The start is an integer the kernel fixed when the
process was created; it never moves, whatever the wall clock does, so two reads of one
process compare *equal*, and a reused pid (a later process) has a later start. No epoch
float is ever compared: psutil 7 derives ``create_time()`` from ``btime``, which moves
when the clock is stepped (NTP/chrony step, ``date -s``, VM resume), so a step of more
than a tick would make every instance "another process". Where there is no ``/proc``
(macOS, Windows) the start is psutil's ``create_time()`` in hundredths of a second,
rounded to an integer (those platforms fix it at creation, not from a boot time that
moves), and the boot id is unknown (``""``).

**An instance** is decided by ``discover.identify`` in this order, first hit wins:

1. its cgroup (cgroup mode): every process in the instance's group is the instance's;
   nothing leaves a group by itself;
2. its record (``registry``): the main process and every member seen, each by
   ``(pid, start)`` compared exactly (and the record's boot), plus their descendants;
3. last resort, its ``WORKERGUARD_*`` mark: only for an id that steps 1 and 2 did not
   place (a lost record), which it writes anew; a mark never places an id twice;
4. ``match``: a process of no mark and no workerguard group whose command line matches
   is *adopted*, only if it is a process of a user the profile allows (``owned_by``:
   its real and effective uid are the guard's own, or among ``match_users``); a root
   guard never adopts, and so never stops, another user's process by default.

Never an instance: a process the guard runs itself (a command probe, any helper): it
carries ``MARK_HELPER`` and none of an instance's marks (``childenv.helper_environment``).

**Signals** go to ``(pid, start)``, never to a bare pid: ``signals.send_signal`` opens a
pidfd, verifies the process with ``alive`` while the pidfd holds it, and signals through
it; a pid reused by a bystander is never signalled.

**Ages** (start windows, readiness and liveness deadlines, uptimes) come from
``age_seconds(start)`` on ``CLOCK_BOOTTIME``, the clock the kernel counts ``starttime``
on: a step of the wall clock changes no age.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from dataclasses import dataclass

import psutil

PSUTIL_TICKS = 100
"""Where there is no /proc: the start is psutil's ``create_time()`` in these units."""


@functools.cache
def ticks_per_second() -> int:
    """Clock ticks per second of ``starttime`` (``SC_CLK_TCK``, 100 on Linux)."""
    if sys.platform == "linux":
        return int(os.sysconf("SC_CLK_TCK"))
    return PSUTIL_TICKS


@functools.cache
def boot_id() -> str:
    """This boot's id (a fork keeps it: one boot); ``""`` where the system has none."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class Stat:
    """What one read of a process says: its parent, its state and its start."""

    pid: int
    ppid: int
    zombie: bool
    start: int


def stat(pid: int) -> Stat | None:
    """One read of ``pid``; None if there is no such process. Raises ``OSError`` if it
    exists but cannot be read (never taken for gone: a watcher would report an exit)."""
    if sys.platform == "linux":
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                data = fh.read()
        except (FileNotFoundError, ProcessLookupError):
            return None
        # The name (field 2) is in parentheses and may hold anything, ")" included.
        fields = data[data.rfind(b")") + 2:].split()
        try:
            return Stat(pid, int(fields[1]), fields[0] in (b"Z", b"X"), int(fields[19]))
        except (IndexError, ValueError):
            return None
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            return Stat(pid, proc.ppid(), proc.status() == psutil.STATUS_ZOMBIE,
                        start_from_create_time(proc.create_time()))
    except psutil.NoSuchProcess:  # a zombie's is a ZombieProcess: gone too
        return None
    except psutil.Error as exc:
        raise PermissionError(f"pid {pid}: {exc}") from exc


def start_from_create_time(create_time: float) -> int:
    """psutil's ``create_time()`` as a start (only where there is no /proc)."""
    return round(create_time * PSUTIL_TICKS)


def start_of(pid: int) -> int | None:
    """The start of the process ``pid`` names now; None if none or unreadable (a zombie
    has one)."""
    try:
        found = stat(pid)
    except OSError:
        return None
    return None if found is None else found.start


def alive(pid: int, start: int) -> bool:
    """True if ``pid`` still names the process that started at ``start`` and it is not a
    zombie: the one test of "is this very process still running" (a reused pid fails it).
    The exit watcher, stop, the start window and readiness all ask it. Raises ``OSError``
    if the process cannot be read (``stat``)."""
    found = stat(pid)
    return found is not None and found.start == start and not found.zombie


def this_uid() -> int | None:
    """The uid the guard acts as; None where processes have no uid (Windows)."""
    if sys.platform == "win32":
        return None
    return os.geteuid()


def process_uids(pid: int) -> tuple[int, int] | None:
    """The real and effective uid of ``pid``; None if it is gone or cannot be read."""
    if sys.platform == "win32":
        return None
    if sys.platform == "linux":
        try:
            with open(f"/proc/{pid}/status", "rb") as fh:
                for line in fh:
                    if line.startswith(b"Uid:"):
                        real, effective = line.split()[1:3]
                        return int(real), int(effective)
        except (OSError, ValueError):
            return None
        return None
    try:
        uids = psutil.Process(pid).uids()
    except psutil.Error:
        return None
    return uids.real, uids.effective


def owned_by(pid: int, start: int, uids: frozenset[int] | None) -> bool:
    """True if the process ``(pid, start)`` runs as one of ``uids`` (its real and its
    effective uid both); ``uids`` None: any (no uids on this platform). A process that is
    gone, unreadable, or whose pid names another process now is owned by no one."""
    if uids is None:
        return True
    found = process_uids(pid)
    return (found is not None and found[0] in uids and found[1] in uids
            and start_of(pid) == start)


def ticks_now() -> int:
    """Now, as a start (for a process whose own start could not be read)."""
    if sys.platform == "linux":
        return int(time.clock_gettime(time.CLOCK_BOOTTIME) * ticks_per_second())
    return start_from_create_time(time.time())


def age_seconds(start: int) -> float:
    """Seconds since the process of ``start`` started, on ``CLOCK_BOOTTIME`` (the clock of
    ``starttime``; it counts suspend and never steps). Where there is no /proc: on the
    wall clock, like the start itself."""
    if sys.platform == "linux":
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - start / ticks_per_second())
    return max(0.0, time.time() - start / PSUTIL_TICKS)


def started_epoch(start: int) -> float:
    """When the process of ``start`` started, as epoch seconds: for display and reports
    only (it follows the wall clock now); identity never compares it."""
    return time.time() - age_seconds(start)
