"""The host's process table as the guard sees it: find, start and stop instances.

``HostProcesses`` is what ``Guard`` is given (as dramatiq is given its broker): one
object that knows how this host identifies instances — a cgroup per instance, or the
registry of what was spawned — and carries that into discovery, spawning and stopping.
Tests hand the guard a subclass to count or fail calls; nothing patches module globals.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import subprocess
import time
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil

from workerguard.config.schema import Identity, Profile
from workerguard.timing import MARK_POLL
from workerguard.workers import cgroups, spawn
from workerguard.workers.cgroups import CgroupTree
from workerguard.workers.discover import (
    Discovery,
    Scan,
    alive,
    fingerprint,
    identify,
    read_mark,
    scan_processes,
    verify_known,
)
from workerguard.workers.logs import DEFAULT_BACKUPS, DEFAULT_MAX_BYTES, rotate_all
from workerguard.workers.model import Instance, Leftover
from workerguard.workers.registry import Record, Registry
from workerguard.workers.spawn import Launched
from workerguard.workers.stop import StopOutcome, stop_instances
from workerguard.workers.watch import ExitWatcher, shared_watcher

log = logging.getLogger("workerguard.workers")


def free_slots(taken: Collection[int], count: int) -> list[int]:
    """The ``count`` lowest slot numbers not in ``taken``."""
    used = set(taken)
    return list(itertools.islice((i for i in itertools.count() if i not in used), count))


@dataclass
class SpawnOutcome:
    started: list[Instance] = field(default_factory=list)
    failures: list[spawn.SpawnFailure] = field(default_factory=list)


class HostProcesses:
    """Find, start and stop the instances of one host (``host_id``)."""

    def __init__(self, host_id: str, *, registry_dir: Path, log_dir: Path,
                 identity: Identity = "auto", cgroup_root: Path | None = None,
                 watcher: ExitWatcher | None = None, log_max_bytes: int = DEFAULT_MAX_BYTES,
                 log_backups: int = DEFAULT_BACKUPS) -> None:
        self.host = host_id
        self.registry = Registry(registry_dir)
        self.log_dir = log_dir
        self.log_limits = (log_max_bytes, log_backups)
        self.watcher = watcher or shared_watcher()
        self.cgroups = self._choose_cgroups(identity, cgroup_root)

    @staticmethod
    def _choose_cgroups(identity: Identity, root: Path | None) -> CgroupTree | None:
        if identity == "registry":
            return None
        root = root or cgroups.default_root()
        tree = CgroupTree(root) if root is not None else None
        if tree is not None and tree.usable():
            return tree
        if identity == "cgroup":
            from workerguard.errors import ConfigError

            raise ConfigError(f"identity = 'cgroup' but {root or 'no cgroup v2 hierarchy'} is not a "
                              "writable cgroup v2 directory (run as root, or delegate a subtree: "
                              "systemd Delegate=yes)")
        return None

    @property
    def mode(self) -> str:
        return "cgroup" if self.cgroups is not None else "registry"

    def __repr__(self) -> str:
        return f"HostProcesses(host={self.host!r}, mode={self.mode!r})"

    # discovery -----------------------------------------------------------------------
    def scan(self, only: Collection[int] | None = None) -> Scan:
        """The host's processes (``only``: just these pids)."""
        return scan_processes(only)

    def discover(self, wanted: Iterable[Profile], configured: Iterable[Profile],
                 scan: Scan | None = None, full: bool = True) -> Discovery:
        """The instances of ``wanted`` (and the host's orphans and leftovers), one scan.

        ``full=False`` (a converge) lets cgroup mode read only the processes in the host's
        instance groups instead of every process, when that cannot miss anything: no
        wanted profile adopts through ``match`` and every record has its group. Sweeps
        and status stay full: they are the safety net for everything else.
        """
        wanted = list(wanted)
        prints = {p.name: fingerprint(p) for p in configured}
        groups = ({(p, i): path for p, i, path in self.cgroups.instances(self.host)}
                  if self.cgroups is not None else {})
        records = list(self.registry.records(self.host))
        if scan is None:
            scan = self.scan(None if full else self._group_members(wanted, groups, records))
        found = identify(scan, self.host, wanted, configured=prints, records=records,
                         groups=groups, tree=self.cgroups)
        for record in found.updates:
            self._write(record)
        for profile, instance_id, group in found.gone:
            with contextlib.suppress(OSError, ValueError):
                self.registry.delete(self.host, profile, instance_id)
            if group is not None:
                cgroups.remove(group)
        return found

    def _group_members(self, wanted: Sequence[Profile], groups: dict[tuple[str, str], Path],
                       records: Sequence[Record]) -> list[int] | None:
        """Every pid in the host's instance groups, or None when only a full scan will do."""
        if (self.cgroups is None or any(p.match for p in wanted)
                or any((r.profile, r.instance_id) not in groups for r in records)):
            return None
        return [pid for group in groups.values() for pid in cgroups.members(group)]

    def verify(self, known: Iterable[Instance]) -> list[Instance] | None:
        return verify_known(known)

    # spawning ------------------------------------------------------------------------
    def spawn(self, profile: Profile, count: int, taken: Collection[int] = ()) -> SpawnOutcome:
        """Start ``count`` instances in the lowest slots not ``taken`` by running ones, then
        wait ``start_seconds`` once for all of them."""
        outcome = SpawnOutcome()
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # whatever the errno: the host's problem, not the worker's
            failure = replace(spawn.start_failure(profile, exc, self.log_dir), host_error=True)
            outcome.failures = [failure] * count
            return outcome
        log_file = spawn.log_path(self.log_dir, profile.name)
        rotate_all([log_file], *self.log_limits)
        launched: list[Launched] = []
        records: dict[str, Record] = {}
        started_as = fingerprint(profile)
        for index in free_slots(taken, count):
            group = None
            try:
                if self.cgroups is not None:
                    group = self.cgroups.create(self.host, profile.name, uuid.uuid4().hex)
                item = spawn.launch(profile, self.host, log_file, group, index)
            except (OSError, subprocess.SubprocessError) as exc:
                if group is not None:
                    cgroups.remove(group)
                outcome.failures.append(spawn.start_failure(profile, exc, log_file))
                continue
            self.watcher.child(item.popen)
            record = Record(self.host, profile.name, item.instance_id, item.popen.pid,
                            item.create_time, item.started_at, started_as,
                            ((item.popen.pid, item.create_time),), index=item.index)
            records[item.instance_id] = record
            self._write(record)
            launched.append(item)

        def any_member_left(item: Launched) -> bool:  # and records the members it sees
            live = self._members(item, records[item.instance_id])
            records[item.instance_id] = records[item.instance_id].with_members(live)
            return bool(live)

        spawn.wait_window(launched, profile.start_seconds, any_member_left)
        for item in launched:
            self._started_or_failed(profile, item, records[item.instance_id], log_file, outcome)
        return outcome

    def _members(self, item: Launched, record: Record) -> list[tuple[int, float]]:
        """The live processes of a starting instance, as (pid, create_time)."""
        if item.group is not None:
            pids = cgroups.members(item.group)
        else:
            pids = [pid for pid, created in record.members if alive(pid, created)]
            with contextlib.suppress(psutil.NoSuchProcess):
                if item.popen.poll() is None:
                    pids += [c.pid for c in psutil.Process(item.popen.pid).children(recursive=True)]
        out = []
        for pid in dict.fromkeys(pids):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE:
                    out.append((pid, proc.create_time()))
        return out

    def _started_or_failed(self, profile: Profile, item: Launched, record: Record, log_file: Path,
                           outcome: SpawnOutcome) -> None:
        """After the window: started (the launcher runs, or it exited 0 and processes of
        the instance live on: a daemon), or failed (what is left is stopped)."""
        code = item.popen.poll()
        live = self._members(item, record)
        if code is None and not any(pid == item.popen.pid for pid, _ in live):
            live.append((item.popen.pid, item.create_time))
        if code == 0 and not live and item.group is None:  # a daemon that escaped the tree
            window_left = item.started_at + profile.start_seconds - time.time()
            live = self._find_escaped_daemon(item.instance_id, min(window_left, profile.start_seconds))
        if code is None or (code == 0 and live):
            main_pid, main_created = ((item.popen.pid, item.create_time) if code is None
                                      else min(live, key=lambda m: (m[1], m[0])))
            confirmed = replace(record.with_members(live), pid=main_pid, create_time=main_created,
                                confirmed=True)
            self._write(confirmed)
            cmdline: tuple[str, ...] = ()
            with contextlib.suppress(psutil.Error):
                cmdline = tuple(psutil.Process(main_pid).cmdline())
            outcome.started.append(Instance(
                profile=profile.name, pid=main_pid, create_time=main_created, cmdline=cmdline,
                instance_id=item.instance_id, tree=tuple(pid for pid, _ in live),
                cgroup=str(item.group) if item.group else None, index=item.index))
            return
        if live:  # the launcher failed but left processes behind: none may linger
            self.clean([Leftover(profile.name, item.instance_id, tuple(p for p, _ in live),
                                 str(item.group) if item.group else None)])
        else:
            self._forget(profile.name, item.instance_id, item.group)
        outcome.failures.append(spawn.SpawnFailure(
            item.popen.pid, code, spawn.tail(log_file),
            f"pid {item.popen.pid} exited with code {code} within {profile.start_seconds:g} s"))

    def _find_escaped_daemon(self, instance_id: str, seconds: float) -> list[tuple[int, float]]:
        """The processes of a daemon that escaped the launcher's tree, found by its mark
        (``_processes_marked_with``), looked for up to ``seconds`` (what is left of the start
        window, on the monotonic clock: a clock set back cannot stretch it): the launcher of
        a daemon can exit (ending the wait early) while its child still forks the daemon."""
        deadline = time.monotonic() + max(0.0, seconds)
        while True:
            found = self._processes_marked_with(instance_id)
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(MARK_POLL)

    def _processes_marked_with(self, instance_id: str) -> list[tuple[int, float]]:
        """Processes that carry ``instance_id`` in their environment (the last resort)."""
        scan = self.scan()
        out = []
        for info in scan.processes.values():
            mark = read_mark(info)
            if mark is not None and mark[1] == self.host and mark[2] == instance_id:
                out.append((info.pid, info.create_time))
        return out

    # stopping ------------------------------------------------------------------------
    def stop(self, instances: Sequence[Instance], stop_signal: str, stop_timeout: float,
             ) -> StopOutcome:
        for instance in instances:
            if instance.instance_id:
                self.watcher.unwatch(instance.instance_id)
        outcome = stop_instances(instances, stop_signal, stop_timeout)
        for instance in instances:
            if instance.instance_id and instance.pid in outcome.stopped:
                self._forget(instance.profile, instance.instance_id,
                             Path(instance.cgroup) if instance.cgroup else None)
        return outcome

    def clean(self, leftovers: Sequence[Leftover]) -> list[int]:
        """Kill what is left of ended instances (no grace: their main process is gone)."""
        killed: list[int] = []
        for left in leftovers:
            if left.cgroup is not None:
                killed += cgroups.members(Path(left.cgroup))
                cgroups.kill(Path(left.cgroup))
            else:
                for pid in left.pids:
                    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                        psutil.Process(pid).kill()
                        killed.append(pid)
            self._forget(left.profile, left.instance_id,
                         Path(left.cgroup) if left.cgroup else None)
        return killed

    # bookkeeping ---------------------------------------------------------------------
    def _write(self, record: Record) -> None:
        try:
            self.registry.write(record)
        except (OSError, ValueError) as exc:
            log.warning("could not write the record of %s/%s: %s", record.profile,
                        record.instance_id, exc)

    def _forget(self, profile: str, instance_id: str, group: Path | None) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.registry.delete(self.host, profile, instance_id)
        if group is not None:
            cgroups.remove(group)

