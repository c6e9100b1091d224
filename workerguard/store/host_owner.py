"""Who runs a host's instances: the uid and runtime dir of the guard that spawns them.

A guard finds its instances through its runtime dir (records, fences) and, for marks
and adoption, through what its uid may read. A ``--local`` call run as another uid, or
with another runtime dir, would find none of them and start duplicates. So every guard
that spawns, and the guard worker at its first sweep, writes here from where it looks
(``Viewpoint``); a ``--local`` call reads it first and refuses when it does not look
from there (``blind_spot``, ``errors.BlindLocal``).

No expiry: it says where the host's instances are found, which stays true while they
run; a guard that spawns from another viewpoint (the guard worker moved to another
user, say) replaces it. JSON under ``keys.host_owner(host)``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import redis

from workerguard.store import keys
from workerguard.workers.identity import this_uid


@dataclass(frozen=True)
class Viewpoint:
    """From where a guard sees a host's instances: its uid (None: no uids on this
    platform) and its runtime dir (resolved)."""

    uid: int | None
    runtime_dir: str

    @classmethod
    def here(cls, runtime_dir: Path) -> Viewpoint:
        return cls(this_uid(), os.path.realpath(runtime_dir))

    def describe(self) -> str:
        user = "" if self.uid is None else f"uid {self.uid}{_name(self.uid)} with "
        return f"{user}runtime dir {self.runtime_dir}"


def _name(uid: int) -> str:
    """`` (root)``: the user name of ``uid`` for a message; ``""`` if it has none."""
    if sys.platform == "win32":
        return ""
    import pwd

    try:
        return f" ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return ""


def blind_spot(owner: Viewpoint | None, here: Viewpoint, host: str) -> str | None:
    """Why a ``--local`` call from ``here`` cannot see the instances of host ``host``
    that ``owner`` runs (one line with the fix); None if it can."""
    if owner is None or owner == here:
        return None
    fix = []
    if owner.uid is not None and owner.uid != here.uid:
        fix.append(f"run it as uid {owner.uid}{_name(owner.uid)}")
    if owner.runtime_dir != here.runtime_dir:
        fix.append(f"set WORKERGUARD_RUNTIME_DIR={owner.runtime_dir} (or runtime_dir in the "
                   "config file)")
    return (f"--local runs as {here.describe()}, but host {host}'s instances are run by a guard "
            f"of {owner.describe()}: this call would see none of them and start duplicates; "
            f"{' and '.join(fix)}, or leave out --local to ask the guard worker")


class HostOwner:
    """The viewpoint record of one host."""

    def __init__(self, client: redis.Redis, host: str) -> None:
        self.client = client
        self.host = host

    def claim(self, view: Viewpoint) -> None:
        self.client.set(keys.host_owner(self.host),
                        json.dumps({"uid": view.uid, "runtime_dir": view.runtime_dir,
                                    "pid": os.getpid()}))

    def read(self) -> Viewpoint | None:
        """The viewpoint of the guard that last spawned here; None if none (or unreadable)."""
        raw = self.client.get(keys.host_owner(self.host))
        if not raw:
            return None
        try:
            data = json.loads(raw)
            uid, runtime_dir = data["uid"], data["runtime_dir"]
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(runtime_dir, str) or not (uid is None or type(uid) is int):
            return None
        return Viewpoint(uid, runtime_dir)
