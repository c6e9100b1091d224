"""The known instances of a profile: what the last full scan under the lock found.

Stored as JSON under ``keys.known(host, profile)`` with a fingerprint of
the profile's ``command`` and ``match``, so a record made for another definition is
never trusted, and the boot id: each instance is ``[pid, start, id, slot]`` with its start
in clock ticks since boot (``identity``), verified exactly. An entry of another boot, or
of the format before start ticks (an epoch ``create_time``, no boot), is not trusted:
the caller scans, as it does when nothing is known. The Lua scripts make every write
of the record atomic with respect to the profile's lock (see the fast path in
``guard``); ``KnownInstances`` runs them. The fast path's read, which spans the lock and
the pause flag too, is ``snapshot``'s.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import redis

from workerguard.config.schema import Profile
from workerguard.store import keys
from workerguard.workers.discover import fingerprint
from workerguard.workers.identity import boot_id
from workerguard.workers.model import Instance

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


def encode_known(profile: Profile, instances: Sequence[Instance]) -> str:
    return json.dumps({"fp": fingerprint(profile, with_match=True), "boot": boot_id(),
                       "instances": [[i.pid, i.start, i.instance_id, i.index]
                                     for i in instances]},
                      separators=(",", ":"))


def decode_known(profile: Profile, raw: bytes | str | None) -> list[Instance] | None:
    """The remembered instances (not yet verified), or None if absent or for another command."""
    if not raw:
        return None
    try:
        data = json.loads(raw)
        if data["fp"] != fingerprint(profile, with_match=True) or data.get("boot") != boot_id():
            return None  # another definition, another boot, or the older format
        known = [Instance(profile=profile.name, pid=int(pid), start=start,
                          instance_id=instance_id, members=((int(pid), start),),
                          origin="spawned" if instance_id else "adopted",
                          index=int(rest[0]) if rest else 0)
                 for pid, start, instance_id, *rest in data["instances"]]
        if not all(type(i.start) is int for i in known):
            return None  # a start is stored as an integer, never a float
        return known
    except (ValueError, KeyError, TypeError):
        return None


class KnownInstances:
    """The writes of the known instances of one host's profiles.

    Holds the scripts registered on its client and, per profile, what the last
    ``refresh`` found unchanged, so an unchanged profile costs no encoding.
    """

    def __init__(self, client: redis.Redis, host: str, ttl: float) -> None:
        self.client = client
        self.host = host
        self.ttl_ms = max(1, int(ttl * 1000))
        self._set_if_owner = client.register_script(SET_IF_OWNER)
        self._set_if_unchanged = client.register_script(SET_IF_UNCHANGED)
        self._seen: dict[str, tuple[bytes | None, tuple[tuple[int, int], ...]]] = {}

    def remember(self, profile: Profile, instances: Sequence[Instance], lock_key: str,
                 lock_id: str) -> bool:
        """Store what a full scan under the lock found, if we still own the lock."""
        return bool(self._set_if_owner(
            keys=[keys.known(self.host, profile.name), lock_key],
            args=[lock_id, encode_known(profile, instances), self.ttl_ms]))

    def refresh(self, updates: Sequence[tuple[Profile, bytes | None, Sequence[Instance]]]) -> int:
        """After a lock-free scan: store each profile's instances where they differ from
        what we read before the scan (``previous``), unless a converge wrote its own since
        (compare-and-set), in one round trip. Returns how many differed."""
        changed = []
        for profile, previous, instances in updates:
            seen = (previous, tuple((i.pid, i.start) for i in instances))
            if previous is not None and self._seen.get(profile.name) == seen:
                continue  # the same record and the same scan result as last time
            encoded = encode_known(profile, instances)
            if previous is None or previous.decode() != encoded:
                changed.append((keys.known(self.host, profile.name), previous or b"", encoded))
            else:
                self._seen[profile.name] = seen
        if changed:
            pipe = self.client.pipeline(transaction=False)
            for key, previous, encoded in changed:
                self._set_if_unchanged(keys=[key], args=[previous, encoded, self.ttl_ms],
                                       client=pipe)
            pipe.execute()
        return len(changed)
