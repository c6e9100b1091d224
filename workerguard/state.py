"""What workerguard remembers in Redis: pause flags, crash-loop backoff, the known
instances of each profile, the action log.

Every key lives under ``workerguard:``. The action log is one capped stream
(``XADD MAXLEN ~``) shared by all hosts; each entry names its host.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from . import keys
from .config import Profile
from .known import READ_IF_UNLOCKED, SET_IF_OWNER, SET_IF_UNCHANGED, encode_known
from .workers.model import Instance


@dataclass(frozen=True)
class Snapshot:
    """What a converge reads from Redis, in one round trip."""

    paused: dict[str, Any] | None
    backoff: Backoff
    known: bytes | None


@dataclass(frozen=True)
class Backoff:
    failures: int = 0
    next_attempt: float = 0.0
    delay: float = 0.0
    """The delay that set ``next_attempt``: a clock set back never makes the wait longer."""

    def remaining(self, now: float, cap: float | None = None) -> float:
        """Seconds until the next start may be tried, never more than ``delay`` or ``cap``
        whatever the wall clock did since (``next_attempt`` is a wall-clock time)."""
        left = self.next_attempt - now
        bound = self.delay if self.delay > 0 else left
        if cap is not None:
            bound = min(bound, cap)
        return max(0.0, min(left, bound))

    def active(self, now: float, cap: float | None = None) -> bool:
        return self.remaining(now, cap) > 0


@dataclass(frozen=True)
class Unlocked:
    """Pause info and raw known instances, read while nobody held the profile's lock."""

    paused: dict[str, Any] | None
    known: bytes | None


class State:
    def __init__(self, client: redis.Redis, host: str, events_maxlen: int = 10_000,
                 known_ttl: float = 60.0) -> None:
        self.client = client
        self.host = host
        self.events_maxlen = events_maxlen
        self.known_ttl_ms = max(1, int(known_ttl * 1000))
        self._read_if_unlocked = client.register_script(READ_IF_UNLOCKED)
        self._set_if_owner = client.register_script(SET_IF_OWNER)
        self._set_if_unchanged = client.register_script(SET_IF_UNCHANGED)
        self._seen: dict[str, tuple[bytes | None, tuple[tuple[int, float], ...]]] = {}
        """Per profile: the record read and the instances scanned by the last refresh
        that found them equal, so an unchanged profile costs no encoding."""

    # one round trip for a converge ---------------------------------------------------
    def snapshot(self, profile: str) -> Snapshot:
        """Pause flag, backoff and known instances of one profile, pipelined."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(keys.paused(self.host, profile))
        pipe.hgetall(keys.backoff(self.host, profile))
        pipe.get(keys.known(self.host, profile))
        paused, backoff, known = pipe.execute()
        return Snapshot(_pause_info(paused), _backoff(backoff), known)

    def snapshot_if_unlocked(self, profile: str) -> Unlocked | None:
        """Pause info and raw known instances read atomically while nobody holds the
        profile's lock, or None if somebody does. One round trip."""
        busy, paused, known = self._read_if_unlocked(
            keys=[keys.lock(self.host, profile), keys.paused(self.host, profile),
                  keys.known(self.host, profile)])
        if busy:
            return None
        return Unlocked(_pause_info(paused), known)

    # known instances -----------------------------------------------------------------
    def remember(self, profile: Profile, instances: Sequence[Instance], lock_key: str,
                 lock_id: str) -> bool:
        """Store what a full scan under the lock found, if we still own the lock."""
        return bool(self._set_if_owner(
            keys=[keys.known(self.host, profile.name), lock_key],
            args=[lock_id, encode_known(profile, instances), self.known_ttl_ms]))

    def paused_and_known(self, profiles: Sequence[str],
                         ) -> tuple[dict[str, dict[str, Any] | None], dict[str, bytes | None]]:
        """Pause info and raw known instances per profile, in one round trip."""
        if not profiles:
            return {}, {}
        pipe = self.client.pipeline(transaction=False)
        pipe.mget([keys.paused(self.host, p) for p in profiles])
        pipe.mget([keys.known(self.host, p) for p in profiles])
        paused, known = pipe.execute()
        return ({p: _pause_info(v) for p, v in zip(profiles, paused, strict=True)},
                dict(zip(profiles, known, strict=True)))

    def refresh_known(self, updates: Sequence[tuple[Profile, bytes | None, Sequence[Instance]]],
                      ) -> int:
        """After a lock-free scan: store each profile's instances where they differ from
        what we read before the scan (``previous``), unless a converge wrote its own since
        (compare-and-set), in one round trip. Returns how many differed."""
        changed = []
        for profile, previous, instances in updates:
            seen = (previous, tuple((i.pid, i.create_time) for i in instances))
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
                self._set_if_unchanged(keys=[key], args=[previous, encoded, self.known_ttl_ms],
                                       client=pipe)
            pipe.execute()
        return len(changed)

    # pause ---------------------------------------------------------------------------
    def pause(self, profile: str, requested_by: str) -> None:
        value = json.dumps({"since": time.time(), "by": requested_by})
        self.client.set(keys.paused(self.host, profile), value)

    def unpause(self, profile: str) -> bool:
        return bool(self.client.delete(keys.paused(self.host, profile)))

    def paused(self, profiles: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        """Pause info per profile, in one round trip."""
        if not profiles:
            return {}
        values = self.client.mget([keys.paused(self.host, p) for p in profiles])
        return {p: _pause_info(v) for p, v in zip(profiles, values, strict=True)}

    # backoff -------------------------------------------------------------------------
    def backoffs(self, profiles: Sequence[str]) -> dict[str, Backoff]:
        if not profiles:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for p in profiles:
            pipe.hgetall(keys.backoff(self.host, p))
        return {p: _backoff(raw) for p, raw in zip(profiles, pipe.execute(), strict=True)}

    def record_failure(self, profile: str, start_retries: int, backoff_max: float,
                       now: float) -> Backoff:
        """Count a failed start; after ``start_retries`` in a row, delay 1, 2, 4 ... s."""
        key = keys.backoff(self.host, profile)
        failures = int(self.client.hincrby(key, "failures", 1))
        delay = 0.0
        if failures >= start_retries:
            delay = min(float(2 ** min(failures - start_retries, 30)), backoff_max)
        backoff = Backoff(failures, now + delay if delay else 0.0, delay)
        self.client.hset(key, mapping={"next_attempt": backoff.next_attempt, "delay": delay})
        return backoff

    def reset_backoff(self, profile: str) -> None:
        self.client.delete(keys.backoff(self.host, profile))

    # sweeps --------------------------------------------------------------------------
    def claim_sweep(self, interval: float) -> bool:
        """True for the first sweep of this host in the current half-interval.

        Two beats running by mistake send each sweep twice, milliseconds apart; the
        second finds the key and is skipped.
        """
        key = keys.sweep(self.host)
        return bool(self.client.set(key, "1", nx=True, px=max(1, int(interval * 500))))

    # exits ---------------------------------------------------------------------------
    def claim_exit(self, key: str, ttl: int = 3600) -> bool:
        """True for the first claim of an instance's exit on this host: a guard that stops
        an instance claims it first, so no exit watcher reports that exit as a crash."""
        return bool(self.client.set(keys.exit_claim(self.host, key), "1", nx=True, ex=ttl))

    # action log ----------------------------------------------------------------------
    def record(self, profile: str, action: str, pids: Iterable[int], requested_by: str,
               detail: str = "") -> None:
        self.client.xadd(
            keys.EVENTS,
            {
                "time": f"{time.time():.3f}",
                "host": self.host,
                "profile": profile,
                "action": action,
                "pids": ",".join(str(p) for p in pids),
                "requested_by": requested_by,
                "detail": detail[:500],
            },
            maxlen=self.events_maxlen,
            approximate=True,
        )


def _pause_info(raw: bytes | str | None) -> dict[str, Any] | None:
    return json.loads(raw) if raw else None


def _backoff(raw: dict[bytes, bytes]) -> Backoff:
    return Backoff(int(raw.get(b"failures", 0)), float(raw.get(b"next_attempt", 0)),
                   float(raw.get(b"delay", 0)))
