"""The reads that span records: what a converge or a sweep needs, in one round trip.

Each record has its own module; a converge needs three of them at once (pause flag,
backoff, known instances) and the fast path needs two only while nobody holds the lock.
``Snapshots`` reads them pipelined (or in one Lua script), so each costs one round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis

from workerguard.store import keys
from workerguard.store.backoff import Backoff, decode
from workerguard.store.pause import PauseInfo, info

# Read pause flag and known instances only if nobody holds the profile's lock: atomic, so
# it is the same as taking the lock, reading and releasing it, in one round trip.
READ_IF_UNLOCKED = """
if redis.call('exists', KEYS[1]) == 1 then
    return {1, false, false}
end
return {0, redis.call('get', KEYS[2]), redis.call('get', KEYS[3])}
"""


@dataclass(frozen=True)
class Snapshot:
    """What a converge reads from Redis, in one round trip."""

    paused: PauseInfo | None
    backoff: Backoff
    known: bytes | None


@dataclass(frozen=True)
class Unlocked:
    """Pause info and raw known instances, read while nobody held the profile's lock."""

    paused: PauseInfo | None
    known: bytes | None


class Snapshots:
    """The cross-record reads of one host's profiles."""

    def __init__(self, client: redis.Redis, host: str) -> None:
        self.client = client
        self.host = host
        self._read_if_unlocked = client.register_script(READ_IF_UNLOCKED)

    def read(self, profile: str) -> Snapshot:
        """Pause flag, backoff and known instances of one profile, pipelined."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(keys.paused(self.host, profile))
        pipe.hgetall(keys.backoff(self.host, profile))
        pipe.get(keys.known(self.host, profile))
        paused, raw_backoff, known = pipe.execute()
        return Snapshot(info(paused), decode(raw_backoff), known)

    def read_if_unlocked(self, profile: str) -> Unlocked | None:
        """Pause info and raw known instances read atomically while nobody holds the
        profile's lock, or None if somebody does. One round trip."""
        busy, paused, known = self._read_if_unlocked(
            keys=[keys.lock(self.host, profile), keys.paused(self.host, profile),
                  keys.known(self.host, profile)])
        return None if busy else Unlocked(info(paused), known)

    def paused_and_known(self, profiles: Sequence[str],
                         ) -> tuple[dict[str, PauseInfo | None], dict[str, bytes | None]]:
        """Pause info and raw known instances per profile, in one round trip."""
        if not profiles:
            return {}, {}
        pipe = self.client.pipeline(transaction=False)
        pipe.mget([keys.paused(self.host, p) for p in profiles])
        pipe.mget([keys.known(self.host, p) for p in profiles])
        paused, known = pipe.execute()
        return ({p: info(v) for p, v in zip(profiles, paused, strict=True)},
                dict(zip(profiles, known, strict=True)))
