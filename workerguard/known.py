"""The known instances of a profile: what the last full scan under the lock found.

Stored as JSON under ``keys.known(host, profile)`` with a fingerprint of
the profile's ``command`` and ``match``, so a record made for another definition is
never trusted. The Lua scripts make every read and write of the record atomic with
respect to the profile's lock (see the fast path in ``guard``).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence

from .config import Profile
from .workers.model import Instance

# Read pause flag and known instances only if nobody holds the profile's lock: atomic, so
# it is the same as taking the lock, reading and releasing it, in one round trip.
READ_IF_UNLOCKED = """
if redis.call('exists', KEYS[1]) == 1 then
    return {1, false, false}
end
return {0, redis.call('get', KEYS[2]), redis.call('get', KEYS[3])}
"""
# Write the known instances only while we still own the profile's lock.
SET_IF_OWNER = """
if redis.call('get', KEYS[2]) == ARGV[1] then
    redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3])
    return 1
end
return 0
"""
# Write the known instances only if nobody changed them since we read them ('' = absent).
SET_IF_UNCHANGED = """
local current = redis.call('get', KEYS[1])
if (current or '') == ARGV[1] then
    redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3])
    return 1
end
return 0
"""


def fingerprint(profile: Profile) -> str:
    """What decides which processes discovery finds: known instances of another
    command or ``match`` are never trusted."""
    return _fingerprint(tuple(profile.command), profile.match)


@functools.lru_cache(maxsize=1024)
def _fingerprint(command: tuple[str, ...], match: str | None) -> str:
    raw = json.dumps([list(command), match])
    return hashlib.sha1(raw.encode(), usedforsecurity=False).hexdigest()[:16]


def encode_known(profile: Profile, instances: Sequence[Instance]) -> str:
    return json.dumps({"fp": fingerprint(profile),
                       "instances": [[i.pid, i.create_time, i.instance_id] for i in instances]},
                      separators=(",", ":"))


def decode_known(profile: Profile, raw: bytes | str | None) -> list[Instance] | None:
    """The remembered instances (not yet verified), or None if absent or for another command."""
    if not raw:
        return None
    try:
        data = json.loads(raw)
        if data["fp"] != fingerprint(profile):
            return None
        return [Instance(profile=profile.name, pid=int(pid), create_time=float(created),
                         instance_id=instance_id, tree=(int(pid),),
                         origin="spawned" if instance_id else "adopted")
                for pid, created, instance_id in data["instances"]]
    except (ValueError, KeyError, TypeError):
        return None
