"""What ``workerguard status --cluster`` and ``workerguard hosts`` show, read from Redis only.

Any machine with the config file can run them, with no guard worker on it: every fact is
in Redis (the slots' leases, the pause, the fleet's epoch, the host records and drain
marks). The reads take a few round trips and no lock; they change nothing.

A slot's state:

- ``running``: a lease names its holder, whose guard renews it, and the holder's converge
  said which instance runs for it: the slot's info key (``keys.cluster_info``), written
  once the instance runs and living as long as the lease, gives its pid and uptime (an
  info of another host or token is not shown);
- ``starting``: held, and no instance said yet (the holder won the slot and its converge
  has not started the instance, or is starting it);
- either with ``(draining)`` / ``(stopping)`` while a drain or a pause hands it back, or
  ``(holder gone)`` when the holder's record expired (its leash fences the instance by
  the renew deadline, and the lease runs out after at most L);
- ``paused``: the profile is stopped fleet-wide (``stop``), until the next ``ensure``;
- ``held off N s``: vacant, and no claim is allowed for N s more after a new Redis
  primary or a jump of its clock (FLEET design, 2.7);
- ``vacant: <why>``: no eligible live host (none runs the profile, every one is
  draining, at ``max_per_host`` or outside ``hosts``), hosts that disagree about the
  profile (``spec mismatch``), or a claim on its way.

Each live host whose definition of the profile differs from the fleet's spec is named
(``spec_mismatch``): it claims nothing and keeps what it holds until every live host runs
one definition (``policy.spec_agreement``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from workerguard.config.load import Config
from workerguard.config.schema import Profile
from workerguard.policy.placement import preference
from workerguard.policy.spec_agreement import mismatched_hosts
from workerguard.store import keys
from workerguard.store.cluster_spec import Spec, read_spec
from workerguard.store.host_records import HostRecord, HostRecords
from workerguard.store.lease import LeaseStore
from workerguard.timing import HOLDOFF_EXTRA

CLOCK_OFFSET_FLAG = 1.0
"""Seconds between a host's wall clock and Redis ``TIME`` beyond which ``hosts`` flags the
host (the ``WorkerguardRedisClockOffset`` alert's threshold). Leases do not depend on wall
clocks, but logs, events and ``--since`` do."""


@dataclass(frozen=True)
class SlotView:
    slot: int
    host: str | None
    token: int | None
    lease_left: float | None
    """Seconds until the lease runs out unless renewed (Redis ``PTTL``)."""
    state: str
    pid: int | None = None
    """The holder's instance, as its guard's last converge wrote it (None: not yet said)."""
    uptime: float | None = None
    """Seconds since that instance started (Redis clock)."""


@dataclass(frozen=True)
class ProfileView:
    profile: str
    max_workers: int
    guarantee: str
    lease_seconds: float
    paused: bool
    slots: tuple[SlotView, ...]
    spec: Spec | None = None
    """The fleet's spec record (None: no claim yet)."""
    spec_mismatch: tuple[str, ...] = ()
    """Live hosts whose definition differs from ``spec``: they claim nothing."""

    @property
    def held(self) -> int:
        return sum(1 for s in self.slots if s.host is not None)

    def as_dict(self) -> dict[str, Any]:
        return {"scope": "cluster", "max_workers": self.max_workers, "guarantee": self.guarantee,
                "lease_seconds": self.lease_seconds, "paused": self.paused,
                "running_total": self.held,
                "slots": [s.__dict__ for s in self.slots],
                "spec": self.spec.__dict__ if self.spec is not None else None,
                "spec_mismatch": list(self.spec_mismatch)}


@dataclass(frozen=True)
class HostView:
    host: str
    live: bool
    seen_ago: float
    """Seconds since the host last wrote its record (Redis clock)."""
    draining: bool
    record: HostRecord | None
    flags: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        r = self.record
        seen = round(self.seen_ago, 3) if self.seen_ago != float("inf") else None
        return {"host": self.host, "live": self.live, "seen_ago": seen,
                "draining": self.draining, "version": r.version if r else None,
                "slots": r.slots if r else {}, "held": r.held if r else 0,
                "machine": r.machine if r else None, "boot": r.boot if r else None,
                "primary": r.primary if r else None,
                "clock_offset": round(r.clock_offset, 3) if r else None,
                "flags": list(self.flags)}


def redis_now_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def holdoff_left(client: redis.Redis, lease_seconds: float, now_ms: int) -> float:
    """Seconds of claim hold-off left for the fleet (0: claims are allowed)."""
    raw = cast(bytes | None, client.get(keys.EPOCH))
    if raw is None:
        return 0.0
    since, _, _identity = raw.decode().partition("|")
    try:
        left = (lease_seconds + HOLDOFF_EXTRA) * 1000 - (now_ms - int(since))
    except ValueError:
        return 0.0
    return max(0.0, left / 1000)


def _eligible(profile: Profile, live: Mapping[str, HostRecord], draining: set[str]) -> list[str]:
    """Live hosts that run the profile and could claim a slot of it."""
    return [h for h, r in live.items()
            if profile.name in r.fingerprints and h not in draining
            and (not profile.hosts or preference(profile.hosts, h) is not None)
            and len(r.slots.get(profile.name, [])) < profile.max_per_host]


def _vacancy(profile: Profile, live: Mapping[str, HostRecord], draining: set[str],
             spec: Spec | None) -> str:
    running = {h: r for h, r in live.items() if profile.name in r.fingerprints}
    if not running:
        return "vacant: no live guard runs this profile"
    if spec is not None and all(r.fingerprints[profile.name] != spec.fp for r in running.values()):
        return "vacant: spec mismatch (no live host runs the fleet's definition)"
    if not _eligible(profile, live, draining):
        return "vacant: no eligible host (draining, at max_per_host or outside hosts)"
    return "vacant: claim pending"


def profile_view(client: redis.Redis, config: Config, profile: Profile, now_ms: int,
                 live: Mapping[str, HostRecord], draining: set[str]) -> ProfileView:
    lease = profile.lease_seconds or config.cluster.lease_seconds
    store = LeaseStore(client, profile.name, profile.max_workers)
    holders, infos = store.holders(), store.infos()
    paused = bool(client.exists(keys.cluster_paused(profile.name)))
    spec, _raw = read_spec(client, profile.name)
    holdoff = holdoff_left(client, config.cluster.lease_seconds, now_ms)  # fleet-wide, as the loop's
    slots = []
    for slot in range(profile.max_workers):
        if slot in holders:
            host, token, _iid, pttl = holders[slot]
            info = infos.get(slot)
            if info is not None and (info.host, info.token) != (host, token):
                info = None  # a stale one: another holder's, or an older grant's
            state = "starting" if info is None else "running"
            if host not in live:
                state += " (holder gone)"
            elif paused:
                state += " (stopping)"
            elif host in draining:
                state += " (draining)"
            if info is not None:
                slots.append(SlotView(slot, host, token, pttl / 1000, state, info.pid,
                                      max(0.0, (now_ms - info.started_ms) / 1000)))
            else:
                slots.append(SlotView(slot, host, token, pttl / 1000, state))
            continue
        if paused:
            state = "paused"
        elif holdoff > 0:
            state = f"held off {holdoff:.1f} s (Redis primary changed or its clock jumped)"
        else:
            state = _vacancy(profile, live, draining, spec)
        slots.append(SlotView(slot, None, None, None, state))
    return ProfileView(profile.name, profile.max_workers, profile.guarantee, lease, paused,
                       tuple(slots), spec, mismatched_hosts(spec, profile.name, live))


def cluster_views(client: redis.Redis, config: Config,
                  profiles: list[Profile]) -> list[ProfileView]:
    """Every given cluster profile's slots, as Redis has them now."""
    records = HostRecords(client)
    now_ms = redis_now_ms(client)
    live, draining = records.live(), records.draining()
    return [profile_view(client, config, p, now_ms, live, draining) for p in profiles]


def host_views(client: redis.Redis) -> list[HostView]:
    """Every host ever seen (live first, then the departed, each newest first); a live host
    that sees another Redis primary than the others is flagged."""
    records = HostRecords(client)
    now_ms = redis_now_ms(client)
    known, live, draining = records.known(), records.live(), records.draining()
    primaries: dict[str, int] = {}
    for record in live.values():
        if record.primary:
            primaries[record.primary] = primaries.get(record.primary, 0) + 1
    common = max(primaries, key=lambda p: primaries[p]) if primaries else ""
    outdated = _spec_mismatches(client, live)
    views: list[HostView] = []
    for host in [*(h for h in known if h in live), *(h for h in known if h not in live),
                 *sorted(draining - set(known))]:
        found = live.get(host)
        flags = []
        if found is not None and len(primaries) > 1 and found.primary != common:
            flags.append("sees another Redis primary")
        if found is not None and abs(found.clock_offset) > CLOCK_OFFSET_FLAG:
            flags.append(f"clock off by {found.clock_offset:+.1f} s")
        if host in outdated:
            flags.append(f"runs another definition of {', '.join(outdated[host])} than the "
                         f"fleet's spec (claims nothing for it)")
        if found is None and host in known:
            flags.append("departed")
        views.append(HostView(host, found is not None,
                              (now_ms - known[host]) / 1000 if host in known else float("inf"),
                              host in draining, found, tuple(flags)))
    return views


def _spec_mismatches(client: redis.Redis, live: Mapping[str, HostRecord]) -> dict[str, list[str]]:
    """Per live host, the cluster profiles it runs with another definition than the fleet's
    spec record (what ``status --cluster`` calls ``spec_mismatch``), from the fingerprints
    each host publishes: no config needed, so ``hosts`` shows it on any machine."""
    profiles = sorted({p for record in live.values() for p in record.fingerprints})
    found: dict[str, list[str]] = {}
    for profile in profiles:
        spec, _raw = read_spec(client, profile)
        for host in mismatched_hosts(spec, profile, live):
            found.setdefault(host, []).append(profile)
    return found
