"""The slots this guard holds, their deadlines and the lease files their leashes read.

``LeaseStore`` (store.lease) is the Redis side of one profile's leases: the scripts.
``Leases`` is the holder's side for every cluster profile of this guard: what it holds,
until when, and the file each leash reads. It is the only writer of those files.

Every deadline is ``send time + D`` on this host's ``CLOCK_BOOTTIME``, taken *before* the
request went out: a slow or lost reply only costs renewals, never safety (inequality I
counts from the send time). A renewal counts only when the owner-checked script extended
the key *and* ``WAIT`` reached ``replicas``; a grant likewise, else it is released at once
and nothing starts. The client is meant to be ``ops.connect.lease_client``: no hidden
retries, a socket timeout of at most P.

Lease files hold one number (the leash's format, workers/leash.py): the hard deadline in
``CLOCK_BOOTTIME`` seconds; 0 when the lease is lost, so the leash is the single actuator of
a fence. They are written whole (temporary file, then ``os.replace``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, cast

import redis

from workerguard.ops.primary_watch import boottime
from workerguard.store.lease import Grant, LeaseStore, lease_value, renew_keys
from workerguard.workers.leashed import lease_file, read_deadline, released_token, write_deadline

Outcome = Literal["ok", "lost", "released", "not_replicated", "error"]
"""A renewal's outcome per slot. ``released``: the key was gone because a converge on this
host gave the slot back (it wrote the lease file's 0 first), not lost behind its back."""


@dataclass(frozen=True)
class Held:
    """One slot this host holds."""

    profile: str
    slot: int
    token: int
    instance_id: str
    deadline: float
    """``CLOCK_BOOTTIME`` seconds after which the instance must be gone (send time + D)."""


@dataclass(frozen=True)
class ProfileTiming:
    """What ``Leases`` needs of a cluster profile: its slot count and its L and D."""

    slots: int
    lease_seconds: float
    renew_deadline: float
    fenced_at_deadline: bool = True
    """``guarantee = "at_most"``: past its deadline a slot is no longer held here (its
    leash killed the instance). ``at_least``: it stays held, and renewals go on trying,
    until Redis says it is lost."""


@dataclass
class Round:
    """What one renewal round found."""

    sent: float
    """``CLOCK_BOOTTIME`` when the pipeline was sent (every new deadline counts from it)."""
    took: float = 0.0
    outcomes: dict[tuple[str, int], Outcome] = field(default_factory=dict)
    replicated: int | None = None
    """``WAIT``'s answer; None when no replica is asked for (``replicas = 0``)."""
    redis_time: float | None = None
    """``TIME`` in seconds, None when the round failed."""
    run_id: str | None = None
    replid: str | None = None
    role: str | None = None
    error: str | None = None
    expired: list[Held] = field(default_factory=list)
    """Held slots whose deadline passed without a renewal: their leash has fenced them."""

    def count(self, outcome: Outcome) -> int:
        return sum(1 for o in self.outcomes.values() if o == outcome)


class Leases:
    """Thread-safe view of the cluster slots this guard holds."""

    def __init__(self, client: redis.Redis, host: str, lease_dir: Path, *, replicas: int = 0,
                 wait_timeout: float = 0.5, clock: Callable[[], float] = boottime) -> None:
        self.client = client
        self.host = host
        self.lease_dir = lease_dir
        self.replicas = replicas
        self.wait_ms = max(1, round(wait_timeout * 1000))
        self.clock = clock
        self._profiles: dict[str, ProfileTiming] = {}
        self._stores: dict[str, LeaseStore] = {}
        self._held: dict[tuple[str, int], Held] = {}
        self._lock = threading.Lock()

    # profiles --------------------------------------------------------------------------
    def register(self, profile: str, timing: ProfileTiming) -> None:
        with self._lock:
            if self._profiles.get(profile) != timing:
                self._profiles[profile] = timing
                self._stores[profile] = LeaseStore(self.client, profile, timing.slots)

    def store(self, profile: str) -> LeaseStore:
        return self._stores[profile]

    # what is held ----------------------------------------------------------------------
    def held(self, profile: str) -> dict[int, Held]:
        with self._lock:
            return {slot: h for (p, slot), h in self._held.items() if p == profile}

    def all_held(self) -> list[Held]:
        with self._lock:
            return sorted(self._held.values(), key=lambda h: (h.profile, h.slot))

    def value(self, held: Held) -> str:
        """The lease key's value while this guard holds it."""
        return lease_value(self.host, held.token, held.instance_id)

    def lease_file(self, profile: str, slot: int) -> Path:
        return lease_file(self.lease_dir, profile, slot)

    def remaining(self, profile: str, slot: int) -> float:
        """Seconds until the slot's hard deadline (negative: passed; -inf: not held)."""
        with self._lock:
            held = self._held.get((profile, slot))
        return float("-inf") if held is None else held.deadline - self.clock()

    # claim -----------------------------------------------------------------------------
    def claim(self, profile: str, fingerprint: str, instance_id: str, *, max_per_host: int,
              holdoff_ms: int, identity: str, window_ms: tuple[int, int] | None = None,
              slot: int | None = None, spec: str = "") -> Grant:
        """Claim a slot; a win counts only once ``WAIT`` reached ``replicas`` (else the slot
        is released at once: ``not_replicated``). Redis errors propagate: nothing is held."""
        timing = self._profiles[profile]
        sent = self.clock()
        grant = self._stores[profile].claim(
            self.host, fingerprint, instance_id, max_per_host=max_per_host,
            lease_ms=round(timing.lease_seconds * 1000), holdoff_ms=holdoff_ms,
            identity=identity, window_ms=window_ms, slot=slot, spec=spec)
        if grant.result != "won":
            return grant
        held = Held(profile, grant.slot, grant.token, instance_id, sent + timing.renew_deadline)
        if self.replicas and self._replicated() < self.replicas:
            with contextlib.suppress(redis.exceptions.RedisError):
                self._stores[profile].release(grant.slot, self.value(held))
            return Grant("refused", reason="not_replicated")
        with self._lock:
            self._held[(profile, grant.slot)] = held
        self._write(held)
        return grant

    def _replicated(self) -> int:
        try:
            return int(self.client.wait(self.replicas, self.wait_ms))
        except redis.exceptions.RedisError:
            return 0

    # renew -----------------------------------------------------------------------------
    def renew(self) -> Round:
        """One pipeline for every held slot: the owner-checked extends, ``WAIT``, ``TIME`` and
        ``INFO replication``. Moves the deadline of each slot renewed and replicated; fences
        each slot found lost (lease file 0, dropped). Never raises for Redis."""
        held = self.all_held()
        pipe = self.client.pipeline(transaction=False)
        by_profile: dict[str, list[Held]] = {}
        for h in held:
            by_profile.setdefault(h.profile, []).append(h)
        for profile, group in by_profile.items():
            lease_ms = round(self._profiles[profile].lease_seconds * 1000)
            self._stores[profile].renew_script(
                keys=renew_keys(profile, [h.slot for h in group]),
                args=[lease_ms, *(self.value(h) for h in group)], client=pipe)
        waited = bool(self.replicas and held)
        if waited:
            pipe.wait(self.replicas, self.wait_ms)
        pipe.time()
        pipe.info("server")
        pipe.info("replication")
        result = Round(sent=self.clock())
        try:
            replies = pipe.execute(raise_on_error=False)
        except redis.exceptions.RedisError as exc:
            result.error = f"{type(exc).__name__}: {exc}"
            for h in held:
                result.outcomes[(h.profile, h.slot)] = "error"
            result.took = self.clock() - result.sent
            result.expired = self._drop_expired()
            return result
        result.took = self.clock() - result.sent
        self._read_tail(result, replies[len(by_profile):], waited)
        for (profile, group), reply in zip(by_profile.items(), replies, strict=False):
            self._settle(result, profile, group, reply)
        result.expired = self._drop_expired()
        return result

    def _read_tail(self, result: Round, tail: list[object], waited: bool) -> None:
        if waited:
            wait, tail = tail[0], tail[1:]
            result.replicated = None if isinstance(wait, Exception) else int(cast(int, wait))
        server_time, server, replication = tail
        if isinstance(server_time, Exception):
            result.error = f"{type(server_time).__name__}: {server_time}"
        else:
            seconds, micros = cast(tuple[int, int], server_time)
            result.redis_time = seconds + micros / 1e6
        if isinstance(server, dict):
            result.run_id = server.get("run_id")
        if isinstance(replication, dict):
            result.replid, result.role = replication.get("master_replid"), replication.get("role")

    def _settle(self, result: Round, profile: str, group: list[Held], reply: object) -> None:
        renew_deadline = self._profiles[profile].renew_deadline
        replicated = not self.replicas or (result.replicated or 0) >= self.replicas
        for index, h in enumerate(group):
            where = (profile, h.slot)
            if isinstance(reply, Exception):
                outcome: Outcome = "error"
                if result.error is None:
                    result.error = f"{type(reply).__name__}: {reply}"
            elif not cast(list[int], reply)[index]:
                outcome = "released" if self._released_here(h) else "lost"
            elif not replicated:
                outcome = "not_replicated"
            else:
                outcome = "ok"
            result.outcomes[where] = outcome
            if outcome == "ok":
                self._move(h, result.sent + renew_deadline)
            elif outcome == "lost":
                self.lose(profile, h.slot)
            elif outcome == "released":
                self._forget(h)

    def _move(self, held: Held, deadline: float) -> None:
        with self._lock:
            current = self._held.get((held.profile, held.slot))
            if current is None or current.token != held.token:
                return  # lost or re-granted meanwhile
            moved = replace(current, deadline=max(current.deadline, deadline))
            self._held[(held.profile, held.slot)] = moved
        self._write(moved)

    def _drop_expired(self) -> list[Held]:
        now = self.clock()
        with self._lock:
            gone = [h for h in self._held.values() if h.deadline <= now
                    and self._profiles[h.profile].fenced_at_deadline]
            for h in gone:
                del self._held[(h.profile, h.slot)]
        return gone

    def _released_here(self, held: Held) -> bool:
        """Whether a converge on this host gave this grant back (``policy.cluster_side``,
        perhaps in a pool process: it marks the token before it deletes the key)."""
        return released_token(self.lease_file(held.profile, held.slot)) == held.token

    def _forget(self, held: Held) -> None:
        """Drop a grant given back: nothing runs for it; its lease file says so (0)."""
        with self._lock:
            current = self._held.get((held.profile, held.slot))
            if current is None or current.token != held.token:
                return
            del self._held[(held.profile, held.slot)]
        self._write_deadline(held.profile, held.slot, 0.0)

    # lose, release, adopt --------------------------------------------------------------
    def lose(self, profile: str, slot: int) -> Held | None:
        """Fence the slot's instance now: lease file 0 (the leash kills at once), forgotten."""
        with self._lock:
            held = self._held.pop((profile, slot), None)
        self._write_deadline(profile, slot, 0.0)
        return held

    def release(self, profile: str, slot: int) -> bool:
        """Give the slot back (after its instance is gone): the key is deleted if still ours."""
        with self._lock:
            held = self._held.pop((profile, slot), None)
        self._write_deadline(profile, slot, 0.0)
        if held is None:
            return False
        return self._stores[profile].release(slot, self.value(held))

    def adopt(self, profiles: Iterable[str]) -> list[Held]:
        """After a restart: take back the slots Redis says this host holds, with the deadline
        the lease file still has (0 if none: the leash has killed or will kill at once; the
        next renewal gives a new one to what the slot plan starts)."""
        found = []
        for profile in profiles:
            for slot, (host, token, instance_id, _pttl) in self._stores[profile].holders().items():
                if host != self.host:
                    continue
                held = Held(profile, slot, token, instance_id, self._read_deadline(profile, slot))
                with self._lock:
                    self._held.setdefault((profile, slot), held)
                found.append(held)
        return found

    # lease files -----------------------------------------------------------------------
    def _write(self, held: Held) -> None:
        self._write_deadline(held.profile, held.slot, held.deadline)

    def _write_deadline(self, profile: str, slot: int, deadline: float) -> None:
        write_deadline(self.lease_file(profile, slot), deadline)

    def _read_deadline(self, profile: str, slot: int) -> float:
        return read_deadline(self.lease_file(profile, slot))
