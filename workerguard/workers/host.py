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
import threading
import time
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil

from workerguard.config.schema import Identity, Profile
from workerguard.errors import HostError
from workerguard.timing import MARK_POLL, SPAWN_RECORD_WAIT
from workerguard.workers import cgroup_layout, cgroups, garbage, spawn
from workerguard.workers.cgroups import CgroupTree
from workerguard.workers.discover import (
    Discovery,
    Scan,
    fingerprint,
    identify,
    read_mark,
    scan_processes,
    verify_known,
)
from workerguard.workers.identity import Stat, age_seconds, stat
from workerguard.workers.leashed import LeaseTerms
from workerguard.workers.logs import (
    DEFAULT_BACKUPS,
    DEFAULT_MAX_BYTES,
    SPAWN_ROTATION_WAIT,
    log_path,
    rotate_all,
)
from workerguard.workers.model import Instance, Leftover
from workerguard.workers.registry import Record, Registry
from workerguard.workers.spawn import Launched
from workerguard.workers.stop import KILL, StopOutcome, descendants, gone, signal_all, stop_instances
from workerguard.workers.watch import ExitWatcher, shared_watcher

log = logging.getLogger("workerguard.workers")


def _stat(pid: int) -> Stat | None:
    """``identity.stat``, where a process that cannot be read is none of ours."""
    try:
        return stat(pid)
    except OSError:
        return None


def free_slots(taken: Collection[int], count: int) -> list[int]:
    """The ``count`` lowest slot numbers not in ``taken``."""
    used = set(taken)
    return list(itertools.islice((i for i in itertools.count() if i not in used), count))


@dataclass
class SpawnOutcome:
    started: list[Instance] = field(default_factory=list)
    failures: list[spawn.SpawnFailure] = field(default_factory=list)
    log_starts: dict[str, int] = field(default_factory=dict)
    """Instance id -> the offset of its slot's log at its start (``spawn.tail``'s ``since``)."""


_said: set[str] = set()
_said_lock = threading.Lock()


def _say_once(note: str | None, level: int = logging.WARNING) -> None:
    """Log a layout note once per process (every Guard of a process builds a table): a
    warning when it means registry mode, else (a dedicated subtree under systemd) info."""
    with _said_lock:
        if note is None or note in _said:
            return
        _said.add(note)
    log.log(level, "%s", note)


class HostProcesses:
    """Find, start and stop the instances of one host (``host_id``)."""

    def __init__(self, host_id: str, *, registry_dir: Path, log_dir: Path,
                 fence_dir: Path | None = None,
                 identity: Identity = "auto", cgroup_root: Path | None = None,
                 watcher: ExitWatcher | None = None, log_max_bytes: int = DEFAULT_MAX_BYTES,
                 log_backups: int = DEFAULT_BACKUPS) -> None:
        self.host = host_id
        self.registry = Registry(registry_dir, fence_dir)
        self.log_dir = log_dir
        self.log_limits = (log_max_bytes, log_backups)
        self.watcher = watcher or shared_watcher()
        self.layout = (cgroup_layout.decide(cgroup_root) if identity != "registry"
                       else cgroup_layout.Layout("none", None))
        self.cgroups = self._choose_cgroups(identity, self.layout)
        if self.cgroups is None and identity != "registry" and self.layout.note is None:
            self.layout = replace(self.layout, note=f"{self.layout.root} is not a writable cgroup "
                                  "v2 directory: registry mode")
        _say_once(self.layout.note, logging.WARNING if self.cgroups is None else logging.INFO)
        self.places = garbage.Places(self.cgroups, registry_dir)
        self._placed = False
        self._placing = threading.Lock()

    @staticmethod
    def _choose_cgroups(identity: Identity, layout: cgroup_layout.Layout) -> CgroupTree | None:
        if identity == "registry":
            return None
        tree = CgroupTree(layout.root, layout.legacy) if layout.root is not None else None
        if tree is not None and tree.usable():
            return tree
        if identity == "cgroup":
            from workerguard.errors import ConfigError

            why = layout.note or f"{layout.root} is not a writable cgroup v2 directory"
            raise ConfigError(f"identity = 'cgroup' but {why} (run as root, or delegate a "
                              "subtree: systemd Delegate=yes)")
        return None

    def _place_guard(self) -> None:
        """Before this process starts its first instance in a delegated subtree: move it
        (and the rest of the delegated group) into the guard's leaf (``cgroup_layout``)."""
        with self._placing:
            if self._placed or self.cgroups is None:
                return
            self._placed = True
            cgroup_layout.settle(self.layout)

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
        garbage.mark_served(self.places, self.host)  # for ``prune`` (see garbage)
        narrow = None if full or scan is not None else self._wanted_groups(wanted)
        if narrow is not None:
            groups, records, members = narrow
            scan = self.scan(members)
        else:
            groups = ({(p, i): path for p, i, path in self.cgroups.instances(self.host)}
                      if self.cgroups is not None else {})
            records = list(self.registry.records(self.host))
            if scan is None:
                scan = self.scan(None if full else self._group_members(wanted, groups, records))
        found = identify(scan, self.host, wanted, configured=prints, records=records,
                         groups=groups, tree=self.cgroups)
        for record in found.updates:  # under each profile's fence, or not now (see registry)
            self._write(record)
        for profile, instance_id, group in found.gone:
            self._forget(profile, instance_id, group)
        return found

    def _wanted_groups(self, wanted: Sequence[Profile],
                       ) -> tuple[dict[tuple[str, str], Path], list[Record], list[int]] | None:
        """The groups and records of ``wanted`` alone, and the pids in those groups; None
        when a converge cannot be served from them (registry mode, a ``match``, a record
        without its group): then it reads what the host has, as before.

        A converge touches one profile: reading every profile's groups and records (and
        every group's members) made a cold start of N profiles cost N x N reads
        (``python benchmarks/run.py --only coldstart``). The processes of other profiles
        live in other groups, so none of them can be one of ``wanted``'s."""
        if self.cgroups is None or any(p.match for p in wanted):
            return None
        names = {p.name for p in wanted}
        groups = {(p, i): path for p, i, path in self.cgroups.instances(self.host, names)}
        records = list(self.registry.records(self.host, names))
        members = self._group_members(wanted, groups, records)
        return None if members is None else (groups, records, members)

    def _group_members(self, wanted: Sequence[Profile], groups: dict[tuple[str, str], Path],
                       records: Sequence[Record]) -> list[int] | None:
        """Every pid in the host's instance groups, or None when only a full scan will do."""
        if (self.cgroups is None or any(p.match for p in wanted)
                or any((r.profile, r.instance_id) not in groups for r in records)):
            return None
        return [pid for group in groups.values() for pid in cgroups.members(group)]

    def collect_garbage(self, unserved_for: float | None = None,
                        dry_run: bool = False) -> garbage.Collected:
        """Remove this host's garbage (and, with ``unserved_for``, that of host ids not
        served for so many seconds); see ``garbage``."""
        return garbage.collect(self.places, self.host, unserved_for=unserved_for,
                               dry_run=dry_run)

    def verify(self, known: Iterable[Instance]) -> list[Instance] | None:
        return verify_known(known)

    # spawning ------------------------------------------------------------------------
    def spawn(self, profile: Profile, count: int, taken: Collection[int] = (),
              leases: Sequence[LeaseTerms] = ()) -> SpawnOutcome:
        """Start ``count`` instances in the lowest slots not ``taken`` by running ones, then
        wait ``start_seconds`` once for all of them. A cluster profile's instances start in
        the slots of their ``leases`` instead, each behind its leash (``count`` is ignored)."""
        outcome = SpawnOutcome()
        terms = {t.slot: t for t in leases}
        if leases:
            count = len(terms)
        self._place_guard()
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # whatever the errno: the host's problem, not the worker's
            failure = replace(spawn.start_failure(profile, exc), host_error=True)
            outcome.failures = [failure] * count
            return outcome
        slots = sorted(terms) if leases else free_slots(taken, count)
        rotate_all([log_path(self.log_dir, profile.name, index) for index in slots],
                   *self.log_limits, wait=SPAWN_ROTATION_WAIT)
        launched: list[Launched] = []
        records: dict[str, Record] = {}
        started_as = fingerprint(profile)
        for index in slots:
            log_file = log_path(self.log_dir, profile.name, index)
            group = None
            try:
                if self.cgroups is not None:
                    group = self.cgroups.create(self.host, profile.name, uuid.uuid4().hex)
                item = spawn.launch(profile, self.host, log_file, group, index, terms.get(index))
            except (OSError, subprocess.SubprocessError) as exc:
                if group is not None:
                    cgroups.remove(group)
                outcome.failures.append(spawn.start_failure(profile, exc))
                continue
            # From here on the worker runs: nothing may raise before its record is written
            # (``_write`` logs a failure; ``watcher.child`` polls when it has no pidfd).
            record = Record(self.host, profile.name, item.instance_id, item.popen.pid,
                            item.start, item.started_at, started_as,
                            ((item.popen.pid, item.start),), index=item.index,
                            token=terms[index].token if index in terms else 0)
            records[item.instance_id] = record
            outcome.log_starts[item.instance_id] = item.log_start
            self._write(record, time.monotonic() + SPAWN_RECORD_WAIT)
            launched.append(item)
            self.watcher.child(item.popen)

        def any_member_left(item: Launched) -> bool:  # and records the members it sees
            live = self._members(item, records[item.instance_id])
            records[item.instance_id] = records[item.instance_id].with_members(live)
            return bool(live)

        spawn.wait_window(launched, profile.start_seconds, any_member_left)
        for item in launched:
            self._started_or_failed(profile, item, records[item.instance_id], outcome)
        return outcome

    def _members(self, item: Launched, record: Record) -> list[tuple[int, int]]:
        """The live processes of a starting instance, as (pid, start): its group's, or
        (without one) its recorded members and the launcher's descendants, each read with
        its parent so a pid reused meanwhile by a stranger is not taken for a child."""
        if item.group is not None:
            found = [_stat(pid) for pid in cgroups.members(item.group)]
            return [(s.pid, s.start) for s in found if s is not None and not s.zombie]
        out = [proc for proc in record.members if not gone(proc)]
        if item.popen.poll() is None:  # a wrong None only adds an exited pid's (no) descendants
            out += descendants((item.popen.pid, item.start))
        return list(dict(out).items())

    def _started_or_failed(self, profile: Profile, item: Launched, record: Record,
                           outcome: SpawnOutcome) -> None:
        """After the window: started (the launcher runs, or it exited 0 and processes of
        the instance live on: a daemon), or failed (what is left is stopped)."""
        code = spawn.exit_code(item.popen)
        live = self._members(item, record)
        if code is None and not any(pid == item.popen.pid for pid, _ in live):
            live.append((item.popen.pid, item.start))
        if code == 0 and not live and item.group is None:  # a daemon that escaped the tree
            window_left = profile.start_seconds - age_seconds(item.start)
            live = self._find_escaped_daemon(item.instance_id, min(window_left, profile.start_seconds))
        if code is None or (code == 0 and live):
            main_pid, main_start = ((item.popen.pid, item.start) if code is None
                                    else min(live, key=lambda m: (m[1], m[0])))
            confirmed = replace(record.with_members(live), pid=main_pid, start=main_start,
                                confirmed=True)
            self._write(confirmed, time.monotonic() + SPAWN_RECORD_WAIT)
            cmdline: tuple[str, ...] = ()
            with contextlib.suppress(psutil.Error):
                cmdline = tuple(psutil.Process(main_pid).cmdline())
            outcome.started.append(Instance(
                profile=profile.name, pid=main_pid, start=main_start, cmdline=cmdline,
                instance_id=item.instance_id, members=tuple(live),
                cgroup=str(item.group) if item.group else None, index=item.index,
                token=record.token or None))
            return
        if live:  # the launcher failed but left processes behind: none may linger
            self.clean([Leftover(profile.name, item.instance_id, tuple(live),
                                 str(item.group) if item.group else None)])
        else:
            self._forget(profile.name, item.instance_id, item.group)
        outcome.failures.append(spawn.SpawnFailure(
            item.popen.pid, code,
            spawn.tail(log_path(self.log_dir, profile.name, item.index), since=item.log_start),
            f"pid {item.popen.pid} exited with code {code} within {profile.start_seconds:g} s"))

    def _find_escaped_daemon(self, instance_id: str, seconds: float) -> list[tuple[int, int]]:
        """The processes of a daemon that escaped the launcher's tree, found by its mark
        (``_processes_marked_with``), looked for up to ``seconds`` (what is left of the start
        window, on the boot clock: a step of the wall clock cannot stretch it): the launcher of
        a daemon can exit (ending the wait early) while its child still forks the daemon."""
        deadline = time.monotonic() + max(0.0, seconds)
        while True:
            found = self._processes_marked_with(instance_id)
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(MARK_POLL)

    def _processes_marked_with(self, instance_id: str) -> list[tuple[int, int]]:
        """Processes that carry ``instance_id`` in their environment (the last resort)."""
        scan = self.scan()
        out = []
        for info in scan.processes.values():
            mark = read_mark(info)
            if (mark is not None and not mark.helper and mark.host == self.host
                    and mark.instance == instance_id):
                out.append((info.pid, info.start))
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
            else:  # each only while it is still that very process (a pid may be reused)
                killed += signal_all(left.members, KILL)
            self._forget(left.profile, left.instance_id,
                         Path(left.cgroup) if left.cgroup else None)
        return killed

    # bookkeeping ---------------------------------------------------------------------
    def _write(self, record: Record, deadline: float | None = None) -> None:
        """Write a record under its profile's fence (``registry``): a converge holds it;
        a discovery (``deadline`` None) writes nothing while another holds it."""
        try:
            written = self.registry.write(record, deadline)
        except (OSError, ValueError, HostError) as exc:  # HostError: a directory not ours
            log.warning("could not write the record of %s/%s: %s", record.profile,
                        record.instance_id, exc)
            return
        if not written and deadline is not None:
            log.warning("could not write the record of %s/%s: its host fence stayed held; "
                        "the instance is found through its cgroup or its mark",
                        record.profile, record.instance_id)

    def _forget(self, profile: str, instance_id: str, group: Path | None) -> None:
        """Remove an ended instance's record and group, under its profile's fence (taken at
        once: if another holds it, its converge decides, and nothing is removed now)."""
        try:
            if not self.registry.delete(self.host, profile, instance_id):
                return
        except (OSError, ValueError, HostError):
            pass
        if group is not None:
            cgroups.remove(group)

