"""What this host's guards spawned: one small JSON record per instance, on local disk.

The record is the instance's identity where cgroups are not available, and its
bookkeeping everywhere: main pid and start (clock ticks since boot, and the boot's id:
see ``identity``), the processes seen in it (so a
helper that was seen once stays known after it is orphaned), when it started and the
fingerprint of the command it was started with (a changed ``command`` shows as
"outdated", not as a stranger).

Records live under the host-wide runtime directory, so every guard and every
``--local`` call of the host reads the same ones whatever its ``TMPDIR``; they do not
live in Redis, so identity survives Redis going away.

**Written under the profile's fence.** ``write`` and ``delete`` hold the profile's host
fence (``fence.fenced``): a converge already holds it and goes on; any other writer (a
``status`` or a sweep updating the members it saw) takes it at once or, if a converge
holds it, writes nothing (the converge writes what it sees). So a stale discovery never
overwrites a record the converge just wrote, nor brings back one it just removed.

**A record cannot tear.** Two discoveries (a ``status`` and a sweep) may write the same
record at once: each writes a temp file of its own (``mkstemp`` in the record's
directory, ``.<instance>.<random>.tmp``), fsyncs it and renames it over the record
(``os.replace``, atomic), so a reader sees the old record or the new one, never a part.
A record that cannot be read as one anyway (a disk error, a hand edit) is renamed aside
(``<instance>.json.corrupt-<time>``) and logged once; its instance is still found
through its cgroup or, last resort, its mark (``discover``), which writes it anew.

Every file read is checked like a lock file (``rundir.owned_file_problem``): opened
without following a symlink, a regular file of this user, writable by nobody else, with
no second hard link; the directories on the way are ``rundir.private_dir``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from workerguard.workers.fence import fenced, profile_fence
from workerguard.workers.identity import boot_id
from workerguard.workers.rundir import (
    checked_runtime_dir,
    describe,
    directory_problem,
    owned_file_problem,
    private_dir,
)

log = logging.getLogger("workerguard.registry")

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


@dataclass(frozen=True)
class Record:
    host: str
    profile: str
    instance_id: str
    pid: int
    start: int
    """The main process's start, in clock ticks since boot (``identity``)."""
    started_at: float
    """When the instance started, in epoch seconds: for reports only."""
    fingerprint: str
    members: tuple[tuple[int, int], ...] = field(default=())
    """(pid, start) of every process seen in the instance, the main one included."""
    index: int = 0
    """The instance's slot within its profile (``WORKERGUARD_INDEX``)."""
    confirmed: bool = False
    """True once the instance survived its start window (until then its exit is the
    start's failure, not a crash)."""
    boot: str = field(default_factory=boot_id)
    """The boot its processes belong to: starts of another boot name no process."""
    token: int = 0
    """A cluster instance's fencing token (the grant it runs under); 0 for a host profile."""

    def with_members(self, seen: list[tuple[int, int]]) -> Record:
        merged = dict(self.members)
        merged.update(seen)
        return replace(self, members=tuple(sorted(merged.items())))


class Registry:
    def __init__(self, directory: Path, fences: Path | None = None) -> None:
        """``fences``: the runtime dir's fence directory (default: ``fences`` beside
        ``directory``, as ``Settings`` places them)."""
        self.directory = directory
        self.fences = fences if fences is not None else directory.parent / "fences"

    def _path(self, host: str, profile: str, instance_id: str) -> Path:
        for part in (host, profile, instance_id):
            if not part or not set(part) <= _SAFE or part.startswith("."):
                raise ValueError(f"unsafe registry name {part!r}")
        return self.directory / host / profile / f"{instance_id}.json"

    def write(self, record: Record, deadline: float | None = None) -> bool:
        """Write ``record`` atomically under its profile's fence (see the module docstring),
        waiting for the fence until ``deadline`` (``time.monotonic()``; None: not at all).
        False if another holds it: nothing written. Raises ``OSError``, ``ValueError`` (an
        unsafe name) or ``HostError`` (a directory that is not ours)."""
        path = self._path(record.host, record.profile, record.instance_id)
        with fenced(self.fences, profile_fence(record.host, record.profile), deadline) as held:
            if held:
                self._write(path, record)
            return held

    def _write(self, path: Path, record: Record) -> None:
        data = json.dumps(asdict(record), separators=(",", ":")).encode()
        for attempt in range(3):  # a ``delete`` of the profile's last record may remove its
            self._private_dirs(record.host, record.profile)  # directory in between: again
            try:
                fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{record.instance_id}.",
                                            suffix=TEMP_SUFFIX)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        _sync_directory(path.parent)

    def _private_dirs(self, host: str, profile: str) -> None:
        """The runtime, registry, host and profile directories: made 0700, or refused if
        not ours."""
        checked_runtime_dir(self.directory.parent)
        for directory in (self.directory, self.directory / host, self.directory / host / profile):
            private_dir(directory)

    def delete(self, host: str, profile: str, instance_id: str) -> bool:
        """Remove a record under its profile's fence, taken at once; False if another holds
        it (nothing removed: the holder's converge decides)."""
        path = self._path(host, profile, instance_id)
        with fenced(self.fences, profile_fence(host, profile)) as held:
            if held:
                path.unlink(missing_ok=True)
                for parent in (path.parent, path.parent.parent):
                    with contextlib.suppress(OSError):
                        parent.rmdir()
            return held

    def records(self, host: str, profiles: Collection[str] | None = None) -> Iterator[Record]:
        """Every record of ``host`` (``profiles``: only of these). A corrupt record is moved
        aside; a file that is not ours, or that cannot be read, is skipped; each is logged
        once."""
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            if not (_listed(self.directory.parent) and _listed(self.directory)):
                return  # refused (logged), or no host has records
            for profile_dir in _listed(self.directory / host):
                if profiles is not None and profile_dir.name not in profiles:
                    continue
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    for path in _listed(profile_dir, RECORD_SUFFIX):
                        record = load(path)
                        if record is not None and record.host == host:
                            yield record


RECORD_SUFFIX = ".json"
TEMP_SUFFIX = ".tmp"
"""A record's temp file (``.<instance>.<random>.tmp``): never read as a record; one left
by a writer that died is removed by the sweeps' garbage collection."""
CORRUPT_MARK = ".corrupt-"

_told: set[tuple[str, str]] = set()
_told_lock = threading.Lock()


def _say_once(path: Path, problem: str) -> None:
    """Log a problem of a record file once per (file, problem), not at every scan."""
    with _told_lock:
        if (str(path), problem) in _told:
            return
        if len(_told) > 10_000:
            _told.clear()
        _told.add((str(path), problem))
    log.warning("instance registry: %s: %s", path, problem)


def _listed(directory: Path, suffix: str | None = None) -> list[Path]:
    """The entries of a registry directory (``suffix``: only files named so, dot-files
    excluded); a directory that is not ours or cannot be read is logged and yields nothing.
    Raises ``FileNotFoundError`` if it is gone."""
    try:
        info = os.lstat(directory)
        problem = directory_problem(info)
        if problem:
            _say_once(directory, f"refused: {problem}")
            return []
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        raise
    except OSError as exc:
        _say_once(directory, f"cannot be read: {describe(exc)}")
        return []
    return [directory / name for name in sorted(names)
            if suffix is None or (name.endswith(suffix) and not name.startswith("."))]


_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
               | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOINHERIT", 0))
"""``O_NONBLOCK``: a FIFO put in the record's place cannot hang the open (fstat refuses it)."""
MAX_RECORD_BYTES = 1 << 20
"""A record is a few hundred bytes (plus ~40 per member seen); a larger file is not one."""


def load(path: Path) -> Record | None:
    """The record in ``path``; None if it is gone, not ours (logged once) or corrupt
    (moved aside and logged)."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        reason = "it is a symlink" if exc.errno == errno.ELOOP else describe(exc)
        _say_once(path, f"skipped: {reason}")
        return None
    with os.fdopen(fd, "rb") as opened:
        info = os.fstat(fd)
        problem = owned_file_problem(info, replaced_ok=True)
        if problem:
            _say_once(path, f"skipped: {problem}")
            return None
        try:
            raw = opened.read(MAX_RECORD_BYTES + 1)
        except OSError as exc:
            _say_once(path, f"cannot be read: {describe(exc)}")
            return None
    try:
        if len(raw) > MAX_RECORD_BYTES:
            raise ValueError(f"larger than {MAX_RECORD_BYTES} bytes")
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        return record_from(data)
    except OlderRecord:
        _forget_older(path, info)
        return None
    except (ValueError, KeyError, TypeError) as exc:
        _move_aside(path, info, exc)
        return None


class OlderRecord(ValueError):
    """A record of a workerguard before identity by start ticks (an epoch ``create_time``)."""


def record_from(data: dict[str, Any]) -> Record:
    """A ``Record`` from its JSON form; raises ``ValueError``, ``KeyError``, ``TypeError``
    (``OlderRecord`` for the format before start ticks)."""
    if "start" not in data and "create_time" in data:
        raise OlderRecord("an epoch create_time, not start ticks")
    return Record(
        host=str(data["host"]), profile=str(data["profile"]),
        instance_id=str(data["instance_id"]), pid=int(data["pid"]),
        start=_ticks(data["start"]), started_at=float(data["started_at"]),
        fingerprint=str(data["fingerprint"]),
        members=tuple((int(p), _ticks(c)) for p, c in data.get("members", [])),
        index=int(data.get("index", 0)),
        confirmed=bool(data.get("confirmed", False)),
        boot=str(data["boot"]),
        token=int(data.get("token", 0)),
    )


def _ticks(value: object) -> int:
    """A start as stored: an integer, never a float rounded into one."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"a start must be an integer, got {value!r}")
    return value


def _forget_older(path: Path, read: os.stat_result) -> None:
    """A record written before identity used start ticks is treated as lost, on purpose:
    its epoch ``create_time`` cannot be compared exactly, and guessing (within 10 ms of
    a clock that may have stepped since) is what this format was dropped for. Its instance
    is found again through its cgroup or, last resort, its mark, which writes a record in
    today's format; a removed file is never read twice."""
    gone = path.with_name(f".{path.name}.older-{time.time_ns()}{TEMP_SUFFIX}")
    with contextlib.suppress(OSError):
        if _rename_if_read(path, read, gone):
            os.unlink(gone)
    _say_once(path, "written by an older workerguard (epoch create_time): removed; its "
                    "instance is found through its cgroup or its mark")


def _move_aside(path: Path, read: os.stat_result, exc: BaseException) -> None:
    """Rename the corrupt record ``path`` to ``<name>.corrupt-<time>``, unless a writer
    replaced it since it was read (then the new record stays: it is whole)."""
    aside = path.with_name(f"{path.name}{CORRUPT_MARK}{time.strftime('%Y%m%dT%H%M%S')}"
                           f"-{time.time_ns() % 1_000_000_000:09d}")
    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    try:
        if not _rename_if_read(path, read, aside):
            return
    except OSError as err:
        _say_once(path, f"corrupt ({reason}) and cannot be moved aside: {describe(err)}")
        return
    log.warning("instance record %s is corrupt (%s): moved aside to %s; its instance is found "
                "through its cgroup or its mark", path, reason, aside.name)


def _rename_if_read(path: Path, read: os.stat_result, target: Path) -> bool:
    """Rename ``path`` (as it was ``read``) to ``target``. False if it is gone, or if a
    writer replaced it between our read and the rename: then the whole record is put back
    (unless a newer one is there already; link never overwrites). Raises ``OSError`` if it
    cannot be renamed."""
    try:
        os.rename(path, target)
        moved = os.lstat(target)
    except FileNotFoundError:
        return False  # another reader moved it, or its instance was forgotten meanwhile
    if (moved.st_dev, moved.st_ino) != (read.st_dev, read.st_ino):
        with contextlib.suppress(OSError):
            os.link(target, path)
        with contextlib.suppress(OSError):
            os.unlink(target)
        return False
    return True


def _sync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: not every platform can)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
