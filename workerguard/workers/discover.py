"""Find the instances of every profile with one scan of the process table.

What decides (and in which order) is written once, in ``identity``'s docstring; this
module carries it out. Every process is ``(pid, start)`` (start: clock ticks since boot,
``identity.stat``), compared exactly. Identity comes first from construction, then from
looking, in this order:

1. the instance's cgroup (``cgroup.procs``), where the guard runs in cgroup mode;
2. the instance's record (``registry``): its main process and the members seen in
   it, by (pid, start) of this boot, plus their current descendants;
3. last resort, the ``WORKERGUARD_*`` mark in a process's environment (records lost):
   it re-creates the record. A mark never places an instance whose ``(profile, id)``
   steps 1 or 2 already placed (one id, one instance): without a cgroup, such a process
   is a member that escaped the recorded tree and joins that instance (and its record);
   in a cgroup, a process outside the group is not the instance's and is left alone;
4. ``match``: a process started by hand whose command line matches, that carries no
   workerguard mark and lives in no workerguard cgroup, is *adopted*, if it runs as a
   user the profile allows (``Profile.match_uids``: the guard's own uid unless
   ``match_users`` names others; ``identity.owned_by``); so are its descendants of such
   a user, and only those: a stop never reaches another user's process.

A process the guard runs that is not an instance (a command probe, any helper:
``MARK_HELPER`` in its environment, see ``childenv.helper_environment``) is never
counted, recovered or adopted, whatever its command line.

An instance whose main process ended after its start window, while other processes of
it live on, is a ``Leftover``: the converge kills what is left and starts a new one.
Instances of profiles that are no longer configured are ``orphans``.

``environ`` is read only for candidates (a command line that resembles a profile's
command or hits a ``match``): asking psutil for ``environ`` in ``process_iter``
silently drops every process whose environment cannot be read, and reading it for all
makes every scan markedly dearer (``python benchmarks/run.py --only sweep``). Which
profiles a command line may belong to is computed once per
distinct command line and remembered in a cache bounded by bytes (``_Classifier``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Generic, NamedTuple, TypeVar

import psutil

from workerguard.config.schema import Profile
from workerguard.workers import cgroups
from workerguard.workers.cgroups import CgroupTree
from workerguard.workers.identity import alive, boot_id, owned_by, start_of, started_epoch, stat
from workerguard.workers.model import MARK_HELPER, MARK_HOST, MARK_INSTANCE, MARK_PROFILE, Instance, Leftover
from workerguard.workers.registry import Record

K = TypeVar("K")
V = TypeVar("V")

_SCAN_ATTRS = ["cmdline"]
"""What psutil reads; parent, state and start come from one ``identity.stat`` read."""


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    ppid: int
    start: int
    cmdline: tuple[str, ...]
    process: psutil.Process = field(compare=False, repr=False)

    @property
    def joined(self) -> str:
        return " ".join(self.cmdline)


@dataclass(frozen=True)
class Scan:
    """One snapshot of the process table (zombies and exited processes excluded)."""

    processes: Mapping[int, ProcessInfo]
    taken_at: float
    """When, on ``time.monotonic()`` (never the wall clock: see ``_EmptySince``)."""

    def children_map(self) -> dict[int, list[int]]:
        children: dict[int, list[int]] = {}
        for info in self.processes.values():
            children.setdefault(info.ppid, []).append(info.pid)
        return children

    def ancestors(self, pid: int) -> list[int]:
        chain: list[int] = []
        seen = {pid}
        info = self.processes.get(pid)
        while info is not None and info.ppid not in seen and info.ppid > 0:
            chain.append(info.ppid)
            seen.add(info.ppid)
            info = self.processes.get(info.ppid)
        return chain


def scan_processes(only: Iterable[int] | None = None) -> Scan:
    """Every process of the host, or the processes ``only`` names (those still alive)."""
    processes: dict[int, ProcessInfo] = {}
    for proc in psutil.process_iter(_SCAN_ATTRS) if only is None else _processes(only):
        cmdline = proc.info.get("cmdline")
        if not cmdline:
            continue
        try:
            found = stat(proc.pid)
        except OSError:  # not ours to read: not ours
            continue
        if found is None or found.zombie:
            continue
        processes[proc.pid] = ProcessInfo(pid=proc.pid, ppid=found.ppid, start=found.start,
                                          cmdline=tuple(cmdline), process=proc)
    return Scan(processes=processes, taken_at=time.monotonic())


def _processes(pids: Iterable[int]) -> Iterator[psutil.Process]:
    """``psutil.Process`` objects of ``pids`` with ``info`` filled like ``process_iter``'s."""
    for pid in dict.fromkeys(pids):
        try:
            proc = psutil.Process(pid)
            proc.info = proc.as_dict(_SCAN_ATTRS)
        except psutil.NoSuchProcess:
            continue
        yield proc


def _looks_like(command: tuple[str, ...], joined: str) -> bool:
    """Cheap pre-filter: every argument of the profile's command appears in the command line."""
    return all(os.path.basename(arg) in joined for arg in command)


class Mark(NamedTuple):
    """What a process's environment says it is: an instance (profile, host, instance id)
    or, with ``helper`` set, a process the guard runs that is not one."""

    profile: str
    host: str
    instance: str
    helper: str = ""


class BoundedCache(Generic[K, V]):
    """An LRU cache bounded by entries and by the bytes of its keys (``size(key)``)."""

    def __init__(self, max_entries: int, max_bytes: int,
                 size: Callable[[K], int] = lambda _key: 64) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._size = size
        self._data: OrderedDict[K, V] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> tuple[bool, V | None]:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return True, self._data[key]
            return False, None

    def put(self, key: K, value: V) -> None:
        with self._lock:
            if key in self._data:
                return
            self._data[key] = value
            self._bytes += self._size(key)
            while self._data and (len(self._data) > self.max_entries or self._bytes > self.max_bytes):
                old, _ = self._data.popitem(last=False)
                self._bytes -= self._size(old)

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._data)


_marks: BoundedCache[tuple[int, int], Mark | None] = BoundedCache(20_000, 2_000_000)


def read_mark(info: ProcessInfo) -> Mark | None:
    """The process's WORKERGUARD_* mark (None: it has none), remembered per (pid, start).

    Remembered from the first read: a process that later wipes its environment
    (``setproctitle``, an ``env -i`` re-exec) keeps the mark it was started with.
    """
    key = (info.pid, info.start)
    hit, mark = _marks.get(key)
    if hit:
        return mark
    try:
        environ = info.process.environ()
    except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
        # ZombieProcess is a NoSuchProcess; a process we may not read is not ours.
        return None  # not remembered: asked again next scan
    if start_of(info.pid) != info.start:
        return None  # the pid names another process now: that environment is not this one's
    profile, helper = environ.get(MARK_PROFILE), environ.get(MARK_HELPER)
    mark = (Mark("", "", "", helper) if helper  # a helper, whatever else it carries
            else None if profile is None
            else Mark(profile, environ.get(MARK_HOST, ""), environ.get(MARK_INSTANCE, "")))
    _marks.put(key, mark)
    return mark


class _Classifier:
    """Command line -> (profiles whose command it resembles, profiles whose ``match`` it hits).

    Pure functions of the command line and the profiles, so they are cached; the cache
    is per set of profiles and bounded by bytes (command lines can be 100 kB each).
    """

    MAX_ENTRIES = 50_000
    MAX_BYTES = 8_000_000

    def __init__(self, profiles: Sequence[Profile]) -> None:
        self.profiles = [(p.name, p.command, p.match_regex) for p in profiles]
        self.cache: BoundedCache[str, tuple[tuple[str, ...], tuple[str, ...]]] = BoundedCache(
            self.MAX_ENTRIES, self.MAX_BYTES, size=lambda key: len(key) + 64)

    def __call__(self, joined: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        hit, value = self.cache.get(joined)
        if hit and value is not None:
            return value
        looks = tuple(name for name, command, _ in self.profiles if _looks_like(command, joined))
        matches = tuple(name for name, _, regex in self.profiles
                        if regex is not None and regex.search(joined))
        self.cache.put(joined, (looks, matches))
        return looks, matches


_classifiers: dict[tuple[tuple[str, tuple[str, ...], str | None], ...], _Classifier] = {}
_classifiers_lock = threading.Lock()


def _classifier(profiles: Sequence[Profile]) -> _Classifier:
    key = tuple((p.name, tuple(p.command), p.match) for p in profiles)
    with _classifiers_lock:
        found = _classifiers.get(key)
        if found is None:
            if len(_classifiers) >= 16:
                _classifiers.clear()
            found = _classifiers[key] = _Classifier(profiles)
        return found


@dataclass
class Discovery:
    """What one scan found on this host."""

    instances: dict[str, list[Instance]]
    """Per wanted profile, oldest first."""
    orphans: list[Instance] = field(default_factory=list)
    """Instances workerguard started for profiles that are no longer configured."""
    leftovers: list[Leftover] = field(default_factory=list)
    updates: list[Record] = field(default_factory=list)
    """Records to write: new members seen, or re-created from a mark."""
    gone: list[tuple[str, str, Path | None]] = field(default_factory=list)
    """(profile, instance id, cgroup) of recorded instances with no process left."""


def _with_starts(scan: Scan, pids: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """``(pid, start)`` of each of ``pids``, as ``scan`` read them."""
    return tuple((pid, scan.processes[pid].start) for pid in pids)


def _descendants(roots: Iterable[int], children: Mapping[int, list[int]]) -> list[int]:
    out: list[int] = []
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def identify(scan: Scan, host_id: str, wanted: Sequence[Profile], *,
             configured: Mapping[str, str], records: Iterable[Record],
             groups: Mapping[tuple[str, str], Path], tree: CgroupTree | None) -> Discovery:
    """Sort the processes of ``scan`` into instances (see the module docstring).

    ``configured`` maps every configured profile name to its command fingerprint;
    ``wanted`` are the profiles whose instances the caller asks for.
    """
    found = Discovery(instances={p.name: [] for p in wanted})
    children = scan.children_map()
    claimed: set[int] = set()
    placed: dict[tuple[str, str], Record | None] = {}
    """(profile, instance id) of the instances and leftovers steps 1 and 2 found, with the
    record that identifies it (None: its cgroup does)."""
    known: dict[tuple[str, str], tuple[Record | None, Path | None]] = {}
    for found_record in records:
        known[(found_record.profile, found_record.instance_id)] = (found_record, None)
    for key, found_group in groups.items():
        known[key] = (known.get(key, (None, None))[0], found_group)

    def add_orphan_or_wanted(instance: Instance) -> None:
        """An orphan (its profile is gone), one of ``wanted``, or neither (left out)."""
        if instance.profile not in configured:
            found.orphans.append(instance)
        elif instance.profile in found.instances:
            found.instances[instance.profile].append(instance)

    this_boot = boot_id()
    for (profile, instance_id), (record, group) in known.items():
        if group is not None:
            live = [pid for pid in cgroups.members(group) if pid in scan.processes]
        else:
            members = record.members if record is not None and record.boot == this_boot else ()
            roots = [pid for pid, start in members
                     if pid in scan.processes and scan.processes[pid].start == start]
            live = _descendants(roots, children)
        if not live:
            if group is None or not _just_made(group, scan.taken_at):
                found.gone.append((profile, instance_id, group))
                if group is not None:
                    _empty_since.forget(group)
            continue
        if group is not None:
            _empty_since.forget(group)
        claimed.update(live)
        placed[(profile, instance_id)] = record if group is None else None
        main = _main_process(scan, record, live)
        if main is None:  # the main process ended after its start: what is left goes
            found.leftovers.append(Leftover(profile, instance_id, _with_starts(scan, live),
                                            str(group) if group else None))
            continue
        info = scan.processes[main]
        add_orphan_or_wanted(Instance(
            profile=profile, pid=main, start=info.start, cmdline=info.cmdline,
            instance_id=instance_id, members=_with_starts(scan, live),
            outdated=(record is not None and profile in configured
                      and record.fingerprint != configured[profile]),
            cgroup=str(group) if group else None, index=record.index if record else 0,
            token=record.token or None if record else None))
        seen = [(pid, scan.processes[pid].start) for pid in live]
        if record is None:
            found.updates.append(Record(host_id, profile, instance_id, main, info.start,
                                        started_epoch(info.start), configured.get(profile, ""),
                                        tuple(seen), confirmed=True))
        elif group is None and not set(live) <= {pid for pid, _ in record.members}:
            found.updates.append(record.with_members(seen))

    _recover_marked_and_adopt_matching(scan, host_id, wanted, configured, claimed, placed, children,
                                       tree, found, add_orphan_or_wanted)
    for instances in found.instances.values():
        instances.sort(key=Instance.sort_key)
    return found


SPAWN_GRACE = 30.0
"""An empty group younger than this may be a start in progress (created, its first
process not in it yet): another profile's converge or a sweep must not remove it."""


class _EmptySince:
    """When this process first saw each empty instance group, on the monotonic clock.

    A group's age is never read from its ``ctime``: that is a wall-clock time, and a
    step of the clock (NTP, ``date -s``, VM resume) by more than ``SPAWN_GRACE`` made
    every empty group "old", the group of a start in progress included. An empty group
    counts as just made until this process has seen it empty for ``SPAWN_GRACE``
    seconds of ``time.monotonic()``; a start fills its group long before. A group first
    seen empty by a short-lived process (a ``--local`` call) is left to the guard worker's
    sweeps; leaving one a while costs nothing (its instance is not counted either way).
    """

    LIMIT = 10_000

    def __init__(self) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def young(self, group: Path, now: float) -> bool:
        with self._lock:
            first = self._seen.setdefault(str(group), now)
            while len(self._seen) > self.LIMIT:  # the oldest sighting goes: seen again, young
                self._seen.popitem(last=False)
        return now - first < SPAWN_GRACE

    def forget(self, group: Path) -> None:
        """The group has processes again, or is removed."""
        with self._lock:
            self._seen.pop(str(group), None)


_empty_since = _EmptySince()


def _just_made(group: Path, now: float) -> bool:
    """``now``: ``time.monotonic()`` (``Scan.taken_at``)."""
    return _empty_since.young(group, now)


def _main_process(scan: Scan, record: Record | None, live: list[int]) -> int | None:
    """The recorded main process if it lives; None if it ended after its start window;
    else (no record, or still starting) the oldest process of the instance."""
    if record is not None:
        info = scan.processes.get(record.pid)
        if info is not None and info.start == record.start and record.pid in live:
            return record.pid
        if record.confirmed:
            return None
    return min(live, key=lambda pid: (scan.processes[pid].start, pid))


def _recover_marked_and_adopt_matching(
        scan: Scan, host_id: str, wanted: Sequence[Profile], configured: Mapping[str, str],
        claimed: set[int], placed: Mapping[tuple[str, str], Record | None],
        children: Mapping[int, list[int]], tree: CgroupTree | None, found: Discovery,
        add: Callable[[Instance], None]) -> None:
    """Steps 3 and 4: marks of lost records, then adoption through ``match``. A helper is
    skipped; a mark of an id already ``placed`` is not a lost record: the process joins
    that instance (``_join_placed``), never a second instance of the same id."""
    classify = _classifier(wanted)
    protected = {os.getpid(), *scan.ancestors(os.getpid())}
    recovered: dict[tuple[str, str], list[int]] = {}
    strays: dict[tuple[str, str], list[int]] = {}
    adopted: dict[str, list[int]] = {p.name: [] for p in wanted}
    owners = {p.name: p.match_uids for p in wanted if p.match is not None}
    for info in scan.processes.values():
        if info.pid in claimed or info.pid in protected:
            continue
        looks, matches = classify(info.joined)
        if not (looks or matches):
            continue
        mark = read_mark(info)
        if mark is not None:
            if not mark.helper and mark.host == host_id and mark.instance and mark.profile in configured:
                key = (mark.profile, mark.instance)
                (strays if key in placed else recovered).setdefault(key, []).append(info.pid)
            continue  # marked processes (helpers included) are never adopted through ``match``
        if matches and tree is not None and tree.in_any_group(info.pid):
            continue  # another guard's instance (another host's, maybe): never ours
        for name in matches:
            if owned_by(info.pid, info.start, owners[name]):  # never another user's process
                adopted[name].append(info.pid)

    _join_placed(scan, strays, placed, claimed, children, found)
    for (profile, instance_id), pids in recovered.items():
        members = [pid for pid in _descendants(pids, children) if pid not in claimed]
        claimed.update(members)
        main = min(pids, key=lambda pid: (scan.processes[pid].start, pid))
        info = scan.processes[main]
        add(Instance(profile=profile, pid=main, start=info.start,
                     cmdline=info.cmdline, instance_id=instance_id,
                     members=_with_starts(scan, members)))
        found.updates.append(Record(
            host_id, profile, instance_id, main, info.start, started_epoch(info.start),
            configured.get(profile, ""),
            tuple((pid, scan.processes[pid].start) for pid in members), confirmed=True))

    for profile, pids in adopted.items():
        chosen = set(pids) - claimed
        for pid in sorted(chosen):
            if any(ancestor in chosen for ancestor in scan.ancestors(pid)):
                continue  # a child of an adopted process belongs to it
            info = scan.processes[pid]
            members = [m for m in _descendants([pid], children) if m not in claimed
                       and owned_by(m, scan.processes[m].start, owners[profile])]
            add(Instance(profile=profile, pid=pid, start=info.start,
                         cmdline=info.cmdline, members=_with_starts(scan, members), origin="adopted"))


def _join_placed(scan: Scan, strays: Mapping[tuple[str, str], list[int]],
                 placed: Mapping[tuple[str, str], Record | None], claimed: set[int],
                 children: Mapping[int, list[int]], found: Discovery) -> None:
    """Marked processes of instances found by their record, outside the recorded tree
    (a helper orphaned before a scan saw it), join that instance and its record. Those of
    an instance found by its cgroup stay out: nothing leaves a group by itself."""
    joining: dict[tuple[str, str], tuple[tuple[int, int], ...]] = {}
    for key, pids in strays.items():
        record = placed[key]
        if record is None:
            continue
        members = [pid for pid in _descendants(pids, children) if pid not in claimed]
        claimed.update(members)
        joining[key] = _with_starts(scan, members)
        latest = next((u for u in reversed(found.updates) if (u.profile, u.instance_id) == key),
                      record)  # step 2 may have added members already
        found.updates.append(latest.with_members(list(joining[key])))
    if not joining:
        return

    def joined(profile: str, instance_id: str | None,
               members: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
        return members + joining.get((profile, instance_id or ""), ())

    for instances in [*found.instances.values(), found.orphans]:
        instances[:] = [replace(i, members=joined(i.profile, i.instance_id, i.members))
                        for i in instances]
    found.leftovers[:] = [replace(left, members=joined(left.profile, left.instance_id, left.members))
                          for left in found.leftovers]


def fingerprint(profile: Profile, *, with_match: bool = False) -> str:
    """A profile's definition in 16 hex digits (SHA-1 of its JSON), stored with what it
    decides, so both encodings must never change.

    Without ``match`` (``registry`` records): what makes a running instance ``outdated``,
    its argv; a new ``match`` changes which processes are adopted, not what runs. With it
    (the known instances in Redis, ``store.known_instances``): what decides which
    processes discovery finds, so instances remembered for another definition are never
    trusted; ``match_users``, when set, as the uids it names (the default, the guard's own
    uid, keeps the encoding).
    """
    users = tuple(sorted(profile.match_uids or ())) if with_match and profile.match_users else ()
    return _fingerprint(tuple(profile.command), profile.match if with_match else None, with_match,
                        users)


@functools.lru_cache(maxsize=1024)
def _fingerprint(command: tuple[str, ...], match: str | None, with_match: bool,
                 users: tuple[int, ...] = ()) -> str:
    described: object = ([list(command), match, *([list(users)] if users else [])] if with_match
                         else list(command))
    return hashlib.sha1(json.dumps(described).encode(), usedforsecurity=False).hexdigest()[:16]


def verify_known(instances: Iterable[Instance]) -> list[Instance] | None:
    """The instances, if every one is still the very process it was; else None.

    A process that exited, became a zombie, or whose PID now names another process
    (another start) makes the whole set untrustworthy: the caller must
    scan. Costs one ``/proc/<pid>/stat`` read per instance instead of a full scan.
    """
    verified = list(instances)
    try:
        if all(alive(inst.pid, inst.start) for inst in verified):
            return verified
    except OSError:  # one cannot be read: scan
        pass
    return None
