"""A cgroup v2 group per instance: membership that a process cannot leave.

systemd's answer to "which processes belong to this service": whatever a member
execs, renames, double-forks or orphans stays in the group, ``cgroup.procs`` lists
them all, and writing ``1`` to ``cgroup.kill`` SIGKILLs every one of them at once.

Layout under the guard's cgroup root (``Settings.cgroup_root``; where that root is, by
systemd's delegation rules, is decided in ``cgroup_layout``)::

    <root>/<host_id>/<profile>/<instance_id>/

Processes live only in the instance groups (the leaves): no cgroup here with children
holds a process, and no controller is enabled below the root. An instance is in its group
before its first instruction (the guard moves the waiting trampoline with ``join``, or the
child joins between fork and exec with ``join_fd``: see spawn), so not even a fast fork
can escape.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import threading
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from workerguard.timing import CGROUP_KILL_POLL, CGROUP_PRIME_STEP, KILL_WAIT

_MOUNTS = Path("/proc/self/mounts")
PROBE_PREFIX = ".probe-"
"""``usable`` makes and removes ``<root>/.probe-<pid>``; one left by a process that died in
between is removed by the sweeps (``garbage``)."""


def cgroup2_mount() -> Path | None:
    """Where cgroup v2 is mounted (``/sys/fs/cgroup`` or, hybrid, ``.../unified``)."""
    if sys.platform != "linux":
        return None
    try:
        for line in _MOUNTS.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[2] == "cgroup2":
                return Path(fields[1])
    except OSError:
        return None
    return None


def own_cgroup(pid: int | str = "self") -> str | None:
    """The cgroup v2 path of a process (``/`` for the root), from ``/proc/PID/cgroup``."""
    try:
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:]
    except OSError:
        return None
    return None


@dataclass(frozen=True)
class CgroupTree:
    """The instance groups of one cgroup root (and of older roots, read but never written)."""

    root: Path
    legacy: tuple[Path, ...] = ()
    """Roots of an earlier layout (``cgroup_layout.Layout.legacy``): their groups are found,
    stopped and collected, no group is made there."""

    @property
    def roots(self) -> tuple[Path, ...]:
        return (self.root, *self.legacy)

    def usable(self) -> bool:
        """True if groups can be made here (cgroup v2, writable, ``cgroup.kill`` works)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f"{PROBE_PREFIX}{os.getpid()}"
            probe.mkdir(exist_ok=True)
            try:
                return (probe / "cgroup.kill").exists() and os.access(probe / "cgroup.procs", os.W_OK)
            finally:
                probe.rmdir()
        except OSError:
            return False

    def group(self, host: str, profile: str, instance_id: str) -> Path:
        return self.root / host / profile / instance_id

    def create(self, host: str, profile: str, instance_id: str) -> Path:
        path = self.group(host, profile, instance_id)
        path.mkdir(parents=True, exist_ok=False)
        return path

    def instances(self, host: str, profiles: Collection[str] | None = None,
                  ) -> Iterator[tuple[str, str, Path]]:
        """(profile, instance id, path) of every group of ``host`` (``profiles``: only of
        these), populated or not."""
        for root in self.roots:
            with contextlib.suppress(FileNotFoundError):
                for profile_dir in (root / host).iterdir():
                    if profiles is not None and profile_dir.name not in profiles:
                        continue
                    if not profile_dir.is_dir():
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        for group in profile_dir.iterdir():
                            if group.is_dir():
                                yield profile_dir.name, group.name, group

    def owner(self, pid: int) -> tuple[str, str, str] | None:
        """(host, profile, instance id) if ``pid`` lives in one of this root's groups."""
        path = own_cgroup(pid)
        mount = cgroup2_mount()
        if path is None or mount is None:
            return None
        for root in self.roots:
            with contextlib.suppress(ValueError):
                parts = (mount / path.lstrip("/")).relative_to(root).parts
                return (parts[0], parts[1], parts[2]) if len(parts) >= 3 else None
        return None

    def in_any_group(self, pid: int) -> bool:
        """True if ``pid`` lives below this root (any host, any profile)."""
        path = own_cgroup(pid)
        mount = cgroup2_mount()
        if path is None or mount is None:
            return False
        return any((mount / path.lstrip("/")).is_relative_to(root) for root in self.roots)


def join_fd(group: Path) -> int:
    """An fd on ``group/cgroup.procs``; a child writes ``0`` to it to join (see spawn)."""
    return os.open(group / "cgroup.procs", os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))


def join(group: Path, pid: int) -> None:
    """Move process ``pid`` (all its threads) into ``group``; raises OSError.

    The kernel makes a move wait for an RCU grace period (it takes a global lock for
    writers, ``cgroup_threadgroup_rwsem``) unless another move happened within the last
    few ms: after a quiet second a move is an order of magnitude slower than back to
    back. ``prime`` pays it ahead of a likely spawn. The kernel documents the cgroup2
    mount option ``favordynmods`` as removing it (forks and exits pay a little instead)."""
    fd = join_fd(group)
    try:
        os.write(fd, str(pid).encode())
    finally:
        os.close(fd)


_PRIME_SECONDS = 0.5
"""A prime keeps moves cheap for this long (an exit to its restart takes tens of ms, longer
under load: the restart row of docs/benchmarks.md), with one move every
``timing.CGROUP_PRIME_STEP``."""


class _Primer:
    """One thread per process that keeps cgroup moves cheap until a deadline (``prime``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._until = 0.0
        self._running = False

    def prime(self, seconds: float) -> None:
        with self._lock:
            self._until = max(self._until, time.monotonic() + seconds)
            if self._running:
                return
            self._running = True
        threading.Thread(target=self._run, name="workerguard-cgroup-prime", daemon=True).start()

    def _run(self) -> None:
        warm = True
        while True:
            with self._lock:
                if not warm or time.monotonic() >= self._until:
                    self._running = False
                    return
            warm = move_self()
            time.sleep(CGROUP_PRIME_STEP)


_primer = _Primer()


def prime(seconds: float = _PRIME_SECONDS) -> None:
    """Pay, now and in the background, the grace period the next ``join`` would wait for.

    A move into a cgroup waits for an RCU grace period unless another move happened in the
    last few ms (see ``join``). Called when a spawn is likely to follow (an instance just
    exited): ``move_self`` every few ms for ``seconds``, in one thread, makes the kernel pay
    it once, while the guard takes its lock and plans. Never blocks; a prime while one runs
    extends it.
    """
    _primer.prime(seconds)


def move_self() -> bool:
    """Move this process into the cgroup it is in (a move that changes nothing, but takes
    the kernel's lock for moves); False where that is not permitted (a delegated subtree
    that does not include our own group: the next ``join`` then pays the wait itself)."""
    mount, mine = cgroup2_mount(), own_cgroup()
    if mount is None or mine is None:
        return False
    try:
        (mount / mine.lstrip("/") / "cgroup.procs").write_text(str(os.getpid()))
    except OSError:
        return False
    return True


def members(group: Path) -> list[int]:
    """Pids in the group (exited processes are gone from the list at once)."""
    text = _read_control(group / "cgroup.procs")
    return [int(line) for line in text.split()] if text is not None else []


def populated(group: Path) -> bool:
    text = _read_control(group / "cgroup.events")
    return text is not None and "populated 1" in text


def _gone(exc: OSError) -> bool:
    """A group removed under us: ENOENT before the open, ENODEV from a file opened just
    before the directory went away (a concurrent ``remove``)."""
    return exc.errno in (errno.ENOENT, errno.ENODEV)


def _read_control(path: Path) -> str | None:
    """A control file's text, or None if its group is gone."""
    try:
        return path.read_text()
    except OSError as exc:
        if _gone(exc):
            return None
        raise


def kill(group: Path, timeout: float = KILL_WAIT) -> bool:
    """SIGKILL every member at once and wait until the group is empty; True if it is."""
    try:
        (group / "cgroup.kill").write_text("1")
    except OSError as exc:
        if _gone(exc):
            return True
        raise
    deadline = time.monotonic() + timeout
    while populated(group):
        if time.monotonic() > deadline:
            return False
        time.sleep(CGROUP_KILL_POLL)
    return True


def remove(group: Path) -> None:
    """Remove an empty group and the profile/host directories it leaves empty."""
    for path in (group, group.parent, group.parent.parent):
        try:
            path.rmdir()
        except OSError as exc:
            if _gone(exc):
                continue
            return  # busy (populated or not empty): leave it
