"""The converge's side of a cluster profile: which slots this host holds, and the plan.

A cluster profile's converge runs under the same lock and fence as any other (one per
host and profile), but what it may run is decided by leases, not by ``min_workers``:
an instance runs only for a slot this host holds, under that grant's token
(``policy.slot_plan``). The converge never claims or renews: the cluster loop does
(``ops.cluster_loop``), in the guard worker's main process, and writes the lease files.
The converge reads the holders from Redis and each slot's deadline from its lease file,
so it works the same in any pool process. Once the fleet's spec is this host's
definition, an instance started with an older command is replaced in its slot, one at a
time (``policy.slot_plan``).

``stop`` of a cluster profile pauses it fleet-wide (a Redis key every holder's loop
reads); ``ensure`` clears the pause. Slots are given back only once their instance is
gone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from workerguard.config.schema import ClusterSettings, Profile
from workerguard.ops.primary_watch import boottime
from workerguard.policy.plan import Plan
from workerguard.policy.slot_plan import SlotInstance, SlotPlan, make_slot_plan
from workerguard.store import keys
from workerguard.store.cluster_spec import profile_spec, read_spec
from workerguard.store.host_records import HostRecords
from workerguard.store.lease import LeaseStore, lease_value
from workerguard.workers.identity import age_seconds
from workerguard.workers.leashed import LeaseTerms, lease_file, mark_released, read_deadline
from workerguard.workers.model import Instance

VACANCY_POLL = 0.05
"""Seconds between two looks at the holders while a stop waits for its slots to empty."""


@dataclass(frozen=True)
class FileLease:
    """A slot this host holds, as its lease file says (``HeldLease``)."""

    token: int
    deadline: float


@dataclass(frozen=True)
class ClusterPlan:
    plan: Plan
    slots: SlotPlan
    holders: dict[int, tuple[str, int, str, int]]


class ClusterSide:
    def __init__(self, client: redis.Redis, host: str, lease_dir: Path,
                 cluster: ClusterSettings) -> None:
        self.client = client
        self.host = host
        self.lease_dir = lease_dir
        self.cluster = cluster

    def plan(self, profile: Profile, instances: Sequence[Instance], *,
             stopping: bool = False) -> ClusterPlan:
        """This host's part of ``profile``: keep, stop, and start (with the grants)."""
        holders = LeaseStore(self.client, profile.name, profile.max_workers).holders()
        leashed = profile.guarantee == "at_most"
        held = {slot: FileLease(token, self._deadline(profile.name, slot) if leashed else math.inf)
                for slot, (holder, token, _iid, _pttl) in holders.items() if holder == self.host}
        paused = stopping or bool(self.client.exists(keys.cluster_paused(profile.name)))
        draining = self.host in HostRecords(self.client).draining()
        spec, _raw = read_spec(self.client, profile.name)
        own = profile_spec(profile, profile.lease_seconds or self.cluster.lease_seconds)
        slots = make_slot_plan(
            profile.name, self.host, slots=profile.max_workers, holders=holders, held=held,
            instances=[SlotInstance(i, i.index if i.token else None, i.token) for i in instances],
            hosts=[], now=boottime(), renew_period=self.cluster.renew_period,
            claim_stagger=self.cluster.claim_stagger, max_per_host=profile.max_per_host,
            start_margin=profile.start_seconds, keep=profile.keep, draining=draining,
            paused=paused, may_claim=False,
            replace_outdated=spec is not None and spec.fp == own.fp)
        terms = tuple(LeaseTerms(slot, holders[slot][1], lease_file(self.lease_dir, profile.name, slot),
                                 grace=min(profile.stop_timeout, self.cluster.fence_grace),
                                 stop_signal=profile.stop_signal, leashed=leashed)
                      for slot in slots.start)
        plan = Plan(keep=tuple(k.instance for k in slots.keep),
                    stop=tuple(s.instance for s in slots.stop), start=len(terms), leases=terms)
        return ClusterPlan(plan, slots, holders)

    def still_leased(self, profile: Profile, terms: Sequence[LeaseTerms]) -> tuple[LeaseTerms, ...]:
        """The grants whose deadline is more than the start window away, read again right
        before the start: never start on a lease that lapses within the start window."""
        now = boottime()
        return tuple(t for t in terms if not t.leashed
                     or self._deadline(profile.name, t.slot) - now > profile.start_seconds)

    def release_vacated(self, profile: Profile, instances: Sequence[Instance],
                        stopping: bool = False) -> list[int]:
        """Give back the slots the plan hands back (pause, drain) once no instance of
        them is left; returns the slots released."""
        planned = self.plan(profile, instances, stopping=stopping)
        store = LeaseStore(self.client, profile.name, profile.max_workers)
        released = []
        for slot in planned.slots.release:
            _holder, token, instance_id, _pttl = planned.holders[slot]
            mark_released(lease_file(self.lease_dir, profile.name, slot), token)
            if store.release(slot, lease_value(self.host, token, instance_id)):
                released.append(slot)
        return released

    def publish_info(self, profile: Profile, instances: Sequence[Instance]) -> int:
        """Say, for each slot this host holds, which instance runs for it (pid, start, and
        its age as a start time on the Redis clock), with the lease's TTL; the renewals
        extend it with the lease. Returns how many were written."""
        store = LeaseStore(self.client, profile.name, profile.max_workers)
        return sum(store.publish_info(i.index, self.host, i.token, i.pid, i.start,
                                      age_seconds(i.start))
                   for i in instances if i.token is not None and i.index < profile.max_workers)

    def wait_vacant(self, profile: Profile, timeout: float) -> bool:
        """After a ``stop``: wait until every holder stopped its instance and gave its slot
        back (each holder's loop sees the pause within one renew period), or ``timeout``."""
        store = LeaseStore(self.client, profile.name, profile.max_workers)
        deadline = time.monotonic() + timeout
        while store.holders():
            if time.monotonic() >= deadline:
                return False
            time.sleep(VACANCY_POLL)
        return True

    def pause(self, profile: Profile, paused: bool) -> None:
        """``stop`` pauses the profile on every host; ``ensure`` resumes it."""
        if paused:
            self.client.set(keys.cluster_paused(profile.name), "1")
        else:
            self.client.delete(keys.cluster_paused(profile.name))

    def _deadline(self, profile: str, slot: int) -> float:
        return read_deadline(lease_file(self.lease_dir, profile, slot))
