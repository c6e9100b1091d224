"""What this host's guards spawned: one small JSON record per instance, on local disk.

The record is the instance's identity where cgroups are not available, and its
bookkeeping everywhere: main pid and create_time, the processes seen in it (so a
helper that was seen once stays known after it is orphaned), when it started and the
fingerprint of the command it was started with (a changed ``command`` shows as
"outdated", not as a stranger).

Records live under the host-wide runtime directory, so every guard and every
``--local`` call of the host reads the same ones whatever its ``TMPDIR``; they do not
live in Redis, so identity survives Redis going away. One file per instance, written
by rename, so two writers never interleave.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from workerguard.workers.rundir import private_dir

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


@dataclass(frozen=True)
class Record:
    host: str
    profile: str
    instance_id: str
    pid: int
    create_time: float
    started_at: float
    fingerprint: str
    members: tuple[tuple[int, float], ...] = field(default=())
    """(pid, create_time) of every process seen in the instance, the main one included."""
    index: int = 0
    """The instance's slot within its profile (``WORKERGUARD_INDEX``)."""
    confirmed: bool = False
    """True once the instance survived its start window (until then its exit is the
    start's failure, not a crash)."""

    def with_members(self, seen: list[tuple[int, float]]) -> Record:
        merged = dict(self.members)
        merged.update(seen)
        return replace(self, members=tuple(sorted(merged.items())))


class Registry:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, host: str, profile: str, instance_id: str) -> Path:
        for part in (host, profile, instance_id):
            if not part or not set(part) <= _SAFE or part.startswith("."):
                raise ValueError(f"unsafe registry name {part!r}")
        return self.directory / host / profile / f"{instance_id}.json"

    def write(self, record: Record) -> None:
        path = self._path(record.host, record.profile, record.instance_id)
        private_dir(self.directory)  # host-wide and private, like the fences (see rundir.py)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temp = path.with_suffix(f".{os.getpid()}.tmp")
        data = asdict(record)
        temp.write_text(json.dumps(data, separators=(",", ":")))
        os.replace(temp, path)

    def delete(self, host: str, profile: str, instance_id: str) -> None:
        path = self._path(host, profile, instance_id)
        path.unlink(missing_ok=True)
        for parent in (path.parent, path.parent.parent):
            with contextlib.suppress(OSError):
                parent.rmdir()

    def records(self, host: str) -> Iterator[Record]:
        """Every record of ``host``; unreadable or foreign files are skipped."""
        base = self.directory / host
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for profile_dir in base.iterdir():
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    for path in profile_dir.glob("*.json"):
                        record = _load(path)
                        if record is not None and record.host == host:
                            yield record


def _load(path: Path) -> Record | None:
    try:
        data = json.loads(path.read_text())
        return Record(
            host=str(data["host"]), profile=str(data["profile"]),
            instance_id=str(data["instance_id"]), pid=int(data["pid"]),
            create_time=float(data["create_time"]), started_at=float(data["started_at"]),
            fingerprint=str(data["fingerprint"]),
            members=tuple((int(p), float(c)) for p, c in data.get("members", [])),
            index=int(data.get("index", 0)),
            confirmed=bool(data.get("confirmed", False)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
