"""``State``: what one guard reads and writes in Redis, behind one object.

A thin facade over the modules that each own one kind of record — ``pause`` (the pause
flag), ``backoff`` (crash-loop delays), ``known`` (the known instances of the fast
path), ``sweep_slot`` (one sweep per host and half-interval) and ``events`` (the action
log) — bound to one client and host. ``snapshot`` is the one read that spans them: what
a converge needs, in one round trip.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis

from workerguard.config.schema import Profile
from workerguard.store import backoff, events, keys, pause, sweep_claim
from workerguard.store.backoff import Backoff
from workerguard.store.known_instances import KnownStore
from workerguard.store.pause import PauseInfo
from workerguard.workers.model import Instance

__all__ = ["Backoff", "Snapshot", "State", "Unlocked"]


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


class State:
    def __init__(self, client: redis.Redis, host: str, events_maxlen: int = 10_000,
                 known_ttl: float = 60.0) -> None:
        self.client = client
        self.host = host
        self.events_maxlen = events_maxlen
        self.known = KnownStore(client, host, known_ttl)

    # one round trip for a converge ---------------------------------------------------
    def snapshot(self, profile: str) -> Snapshot:
        """Pause flag, backoff and known instances of one profile, pipelined."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(keys.paused(self.host, profile))
        pipe.hgetall(keys.backoff(self.host, profile))
        pipe.get(keys.known(self.host, profile))
        paused, raw_backoff, known = pipe.execute()
        return Snapshot(pause.info(paused), backoff.decode(raw_backoff), known)

    def snapshot_if_unlocked(self, profile: str) -> Unlocked | None:
        """Pause info and raw known instances read atomically while nobody holds the
        profile's lock, or None if somebody does. One round trip."""
        read = self.known.read_if_unlocked(profile, keys.lock(self.host, profile))
        return None if read is None else Unlocked(pause.info(read[0]), read[1])

    # known instances -----------------------------------------------------------------
    def remember(self, profile: Profile, instances: Sequence[Instance], lock_key: str,
                 lock_id: str) -> bool:
        """Store what a full scan under the lock found, if we still own the lock."""
        return self.known.remember(profile, instances, lock_key, lock_id)

    def paused_and_known(self, profiles: Sequence[str],
                         ) -> tuple[dict[str, PauseInfo | None], dict[str, bytes | None]]:
        """Pause info and raw known instances per profile, in one round trip."""
        if not profiles:
            return {}, {}
        pipe = self.client.pipeline(transaction=False)
        pipe.mget([keys.paused(self.host, p) for p in profiles])
        pipe.mget([keys.known(self.host, p) for p in profiles])
        paused, known = pipe.execute()
        return ({p: pause.info(v) for p, v in zip(profiles, paused, strict=True)},
                dict(zip(profiles, known, strict=True)))

    def refresh_known(self, updates: Sequence[tuple[Profile, bytes | None, Sequence[Instance]]],
                      ) -> int:
        """See ``KnownStore.refresh``."""
        return self.known.refresh(updates)

    # pause ---------------------------------------------------------------------------
    def pause(self, profile: str, requested_by: str) -> None:
        pause.pause(self.client, self.host, profile, requested_by)

    def unpause(self, profile: str) -> bool:
        return pause.unpause(self.client, self.host, profile)

    def paused(self, profiles: Sequence[str]) -> dict[str, PauseInfo | None]:
        """Pause info per profile, in one round trip."""
        return pause.paused(self.client, self.host, profiles)

    # backoff -------------------------------------------------------------------------
    def backoffs(self, profiles: Sequence[str]) -> dict[str, Backoff]:
        return backoff.read(self.client, self.host, profiles)

    def record_failure(self, profile: str, start_retries: int, backoff_max: float,
                       now: float) -> Backoff:
        """Count a failed start; after ``start_retries`` in a row, delay 1, 2, 4 ... s."""
        return backoff.record_failure(self.client, self.host, profile, start_retries,
                                      backoff_max, now)

    def reanchor_backoff(self, profile: str, current: Backoff, now: float, cap: float) -> Backoff:
        return backoff.reanchor(self.client, self.host, profile, current, now, cap)

    def reset_backoff(self, profile: str) -> None:
        backoff.reset(self.client, self.host, profile)

    # sweeps --------------------------------------------------------------------------
    def claim_sweep(self, interval: float) -> bool:
        """True for the first sweep of this host in the current half-interval."""
        return sweep_claim.claim(self.client, self.host, interval)

    # exits ---------------------------------------------------------------------------
    def claim_exit(self, key: str, ttl: int = 3600) -> bool:
        """True for the first claim of an instance's exit on this host: a guard that stops
        an instance claims it first, so no exit watcher reports that exit as a crash."""
        return bool(self.client.set(keys.exit_claim(self.host, key), "1", nx=True, ex=ttl))

    # action log ----------------------------------------------------------------------
    def record(self, profile: str, action: str, pids: Iterable[int], requested_by: str,
               detail: str = "") -> None:
        events.record(self.client, self.host, profile, action, pids, requested_by, detail,
                      maxlen=self.events_maxlen)
