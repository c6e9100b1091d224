"""Garbage of the host: empty cgroups, forgotten probe directories, temp records.

What is left behind when a process dies at the wrong moment, or when a host id stops
being served (a guard renamed, a test run killed): empty instance groups and the
profile and host directories above them (``<cgroup_root>/<host>/<profile>/<id>``), the
``.probe-<pid>`` directories of ``CgroupTree.usable`` and the temp files of record
writes (``registry``) whose writer died between create and rename. None holds anything,
but they pile up (~380 empty groups were counted on one machine).

**Who removes what.** Every sweep collects the garbage of its own host id, and the
probe directories of the cgroup root (``collect``), in the cgroup root and in the roots
of an earlier layout (``CgroupTree.legacy``: see ``cgroup_layout``). ``workerguard prune`` also collects
the garbage of every *other* host id that no guard has served for ``older_than``
seconds. "Served" is known from a stamp: each discovery of a host touches its host
directories (``mark_served``: the mtime of ``<cgroup_root>/<host>`` and
``<runtime_dir>/registry/<host>``), and creating or removing a profile there touches it
too; a host id whose stamps are all older than ``older_than`` is not served.

**What is never removed**: a group with a process in it or a group below it (the kernel
refuses such an ``rmdir`` as well), a record, anything younger than
``discover.SPAWN_GRACE`` (a start in progress creates its group before its first process
joins it), and a temp record or probe directory younger than ``timing.LEFTOVER_AGE``.
Ages are mtimes (wall clock): a clock stepped forward can make a young empty group look
old, and its start then fails with a host error and is retried; nothing running is ever
touched.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from workerguard.timing import LEFTOVER_AGE
from workerguard.workers import cgroups
from workerguard.workers.cgroups import PROBE_PREFIX, CgroupTree
from workerguard.workers.discover import SPAWN_GRACE
from workerguard.workers.registry import TEMP_SUFFIX


@dataclass
class Collected:
    """What a collection removed (or, in a dry run, would remove), and what it left."""

    removed: list[Path] = field(default_factory=list)
    stale_groups: int = 0
    """Empty instance groups left: of host ids served recently (``prune`` removes them once
    they are not), or younger than ``SPAWN_GRACE``."""


@dataclass(frozen=True)
class Places:
    """Where a host's garbage lives: its cgroup tree (None in registry mode) and registry."""

    tree: CgroupTree | None
    registry_dir: Path


def mark_served(places: Places, host: str) -> None:
    """Stamp ``host`` as served now (the mtime of its host directories; best effort)."""
    for directory in _host_dirs(places, host):
        with contextlib.suppress(OSError):
            os.utime(directory)


def last_served(places: Places, host: str) -> float | None:
    """When ``host`` was last served (its newest stamp), None if it has no directory."""
    stamps = []
    for directory in _host_dirs(places, host):
        with contextlib.suppress(OSError):
            stamps.append(os.stat(directory).st_mtime)
    return max(stamps) if stamps else None


def collect(places: Places, host: str, *, unserved_for: float | None = None,
            dry_run: bool = False, now: float | None = None) -> Collected:
    """Remove the garbage of ``host`` and the cgroup root's probe dirs; with
    ``unserved_for`` (seconds), also that of every host id not served for that long."""
    now = time.time() if now is None else now
    collected = Collected()
    hosts = [host]
    if unserved_for is not None:
        for other in sorted(_hosts(places) - {host}):
            served = last_served(places, other)
            if served is not None and now - served >= unserved_for:
                hosts.append(other)
    roots = places.tree.roots if places.tree is not None else ()
    for name in hosts:
        for root in roots:
            _empty_groups(root / name, now, dry_run, collected)
        _temp_records(places.registry_dir / name, now, dry_run, collected)
    for root in roots:
        _probe_dirs(root, now, dry_run, collected)
    collected.stale_groups = sum(1 for root in roots for group in _instance_groups(root)
                                 if group not in collected.removed and _empty(group))
    return collected


def _host_dirs(places: Places, host: str) -> list[Path]:
    roots = places.tree.roots if places.tree is not None else ()
    return [places.registry_dir / host, *(root / host for root in roots)]


def _subdirs(directory: Path) -> list[Path]:
    """The directories in ``directory`` (not symlinks), sorted. ``scandir`` tells an
    entry's type from the listing itself: a cgroup holds ~40 control files, and a
    ``stat`` of each cost an idle guard ~70 ms of CPU a sweep (docs/benchmarks.md)."""
    try:
        with os.scandir(directory) as entries:
            return sorted(directory / entry.name for entry in entries
                          if entry.is_dir(follow_symlinks=False))
    except OSError:
        return []


def _hosts(places: Places) -> set[str]:
    roots = [places.registry_dir, *(places.tree.roots if places.tree is not None else ())]
    return {d.name for root in roots for d in _subdirs(root) if not d.name.startswith(".")}


def _instance_groups(root: Path) -> list[Path]:
    return [group for host in _subdirs(root) if not host.name.startswith(".")
            for profile in _subdirs(host) for group in _subdirs(profile)]


def _age(path: Path, now: float) -> float:
    """Seconds since ``path`` was made or its entries last changed (its mtime: a group's
    is its creation, as joining it writes a file inside, not the directory); 0 if it
    cannot be told."""
    try:
        return now - os.lstat(path).st_mtime
    except OSError:
        return 0.0


def _empty(group: Path) -> bool:
    """No process in the group and no group below it."""
    return not cgroups.populated(group) and not _subdirs(group)


def _remove_dir(path: Path, dry_run: bool, collected: Collected) -> bool:
    """``rmdir`` (the kernel refuses a populated cgroup or one with children); True if
    it is gone (or, in a dry run, would be)."""
    if not dry_run:
        try:
            path.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False
    collected.removed.append(path)
    return True


def _empty_groups(host_dir: Path, now: float, dry_run: bool, collected: Collected) -> None:
    """Empty instance groups of one host older than the spawn grace, then the profile and
    host directories they leave empty (each as old, before its groups went)."""
    host_age = _age(host_dir, now)
    for profile_dir in _subdirs(host_dir):
        profile_age = _age(profile_dir, now)
        for group in _subdirs(profile_dir):
            if _empty(group) and _age(group, now) >= SPAWN_GRACE:
                _remove_dir(group, dry_run, collected)
        _remove_if_emptied(profile_dir, profile_age, dry_run, collected)
    _remove_if_emptied(host_dir, host_age, dry_run, collected)


def _remove_if_emptied(directory: Path, age: float, dry_run: bool, collected: Collected) -> None:
    """Remove ``directory`` if nothing is left in it and it was ``age`` seconds old (its
    age before its entries were removed: that made it look new)."""
    left = [d for d in _subdirs(directory) if d not in collected.removed]
    if (directory.is_dir() and not left and age >= SPAWN_GRACE and not cgroups.populated(directory)
            and _no_files(directory, collected.removed)):
        _remove_dir(directory, dry_run, collected)


def _no_files(directory: Path, removed: list[Path]) -> bool:
    """True for a cgroup directory (its files are the kernel's: ``rmdir`` takes them) and
    for a plain one that is empty (but for what is ``removed``); False when a plain
    directory holds a file (a record, a corrupt record kept for a look)."""
    if (directory / "cgroup.procs").exists():
        return True
    try:
        return all(entry in removed for entry in directory.iterdir())
    except OSError:
        return False


def _temp_records(host_dir: Path, now: float, dry_run: bool, collected: Collected) -> None:
    """Temp files of record writes that died older than ``LEFTOVER_AGE``, then the profile
    and host directories of the registry that are left empty."""
    host_age = _age(host_dir, now)
    for profile_dir in _subdirs(host_dir):
        profile_age = _age(profile_dir, now)
        try:
            names = os.listdir(profile_dir)
        except OSError:
            continue
        for name in names:
            temp = profile_dir / name
            if name.endswith(TEMP_SUFFIX) and _age(temp, now) >= LEFTOVER_AGE:
                if not dry_run:
                    try:
                        temp.unlink()
                    except OSError:
                        continue
                collected.removed.append(temp)
        _remove_if_emptied(profile_dir, profile_age, dry_run, collected)
    _remove_if_emptied(host_dir, host_age, dry_run, collected)


def _probe_dirs(root: Path, now: float, dry_run: bool, collected: Collected) -> None:
    for probe in _subdirs(root):
        if probe.name.startswith(PROBE_PREFIX) and _age(probe, now) >= LEFTOVER_AGE and _empty(probe):
            _remove_dir(probe, dry_run, collected)
