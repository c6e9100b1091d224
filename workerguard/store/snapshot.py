"""The reads that span records: what a converge or a sweep needs, in one round trip.

Each record has its own module; a converge needs three of them at once (pause flag,
backoff, known instances) and the fast path needs two only while nobody holds the lock.
``Snapshots`` reads them pipelined (or in one ``MGET``), so each costs one round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import redis

from workerguard.store import keys
from workerguard.store.backoff import Backoff, decode
from workerguard.store.pause import PauseInfo, info


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
        profile's lock, or None if somebody does: the same as taking the lock, reading and
        releasing it, in one round trip.

        One ``MGET`` of the lock, pause and known-instances keys: a single command is
        atomic, and it costs Redis and the client less than the Lua script it replaces
        (the fast path of every request; ``python benchmarks/run.py --only breakdown``)."""
        lock, paused, known = cast(list[bytes | None], self.client.mget(
            [keys.lock(self.host, profile), keys.paused(self.host, profile),
             keys.known(self.host, profile)]))
        return None if lock is not None else Unlocked(info(paused), known)

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
