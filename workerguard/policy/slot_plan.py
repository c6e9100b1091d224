"""The pure slot plan of a cluster profile on one host: which slots to claim, renew or give
back, which instances run, start or stop.

A cluster profile's instances are not counted per host (``plan.make_plan``) but tied to
slots: an instance may run only for a slot this host holds, under the token of the grant
that holder got (``store.lease``). So the plan compares three views, read one after the
other by the cluster loop:

- ``holders``: the slots' leases in Redis (``LeaseStore.holders``): host, token, instance
  id and the milliseconds left. Redis is the judge of who holds what.
- ``held``: what this guard knows of the slots it holds (``store.leases.Leases.held``):
  the token and the hard deadline on this host's clock, after which the leash kills.
- ``instances``: this host's instances of the profile with the slot and token they were
  started under.

A slot is **held** by this host when Redis names this host with the token this guard knows
and the deadline has not passed (or this guard does not know the slot yet: after a restart
it takes the slot back, ``adopt``, and starts nothing until a renewal gives a deadline).
Every instance is kept or stopped: kept only for a held slot with that slot's token, one per
slot; stopped when the lease is lost or another host's, when the deadline passed, when its
token is an older grant's, when it carries no slot, or when a drain or a pause hands the
slot back. A held slot without an instance is started only while its deadline is more than
``start_margin`` away ("never start on a lease that lapses within the start window"), and
only once no instance of the slot is left: an older grant's instance is stopped first, and
its replacement starts in the next round, never beside it.

After the fleet's spec moved to this host's definition (``replace_outdated``), an
instance started with an older ``command`` is replaced under the same grant, one slot at
a time per host: only when every held slot has its instance and nothing else stops, the
lowest such slot's instance stops (``outdated``) and the same plan starts the slot again,
after the stop (the converge stops first and starts only once the stopped processes are
gone). The token stays: it names the grant, not the process.

Claims follow ``policy.placement``: a vacant slot at position ``r`` is claimed after
``r * claim_stagger``; a slot held elsewhere whose lease runs out within ``renew_period`` is
claimed right after its expiry (PTTL + 5 ms) plus the same stagger, so a crashed holder's
slot moves within milliseconds of its expiry, not a renewal period later. A held slot is
never moved (no failback), and this host never claims beyond ``max_per_host``.

Pure, like ``plan.py``: tested with generated inputs (tests/test_slot_plan.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from workerguard.config.schema import Keep
from workerguard.policy.placement import HostState, claim_delay, place, position
from workerguard.workers.model import Instance

AFTER_EXPIRY = 0.005
"""A claim on a slot held elsewhere goes out this long after its lease's PTTL has run out."""

StopReason = Literal["lost", "deadline", "stale", "duplicate", "unslotted", "drain", "paused",
                     "outdated"]
"""Why an instance stops: ``lost`` (Redis names another holder or none), ``deadline`` (the
hard deadline passed: the leash has fenced it or is about to), ``stale`` (the token of an
older grant), ``duplicate`` (a second instance for one slot), ``unslotted`` (no slot or
token, or a slot beyond ``max_workers``), ``drain`` and ``paused`` (the slot is handed back),
``outdated`` (started with an older command; replaced in the same slot, same token)."""


class HeldLease(Protocol):
    """What the plan reads of a slot this guard holds (``store.leases.Held`` is one)."""

    @property
    def token(self) -> int: ...

    @property
    def deadline(self) -> float: ...


@dataclass(frozen=True)
class SlotInstance:
    """A local instance of the cluster profile, with the grant it was started under."""

    instance: Instance
    slot: int | None
    token: int | None


@dataclass(frozen=True)
class Claim:
    slot: int
    delay: float
    """Seconds from now before the claim is sent."""


@dataclass(frozen=True)
class Stop:
    instance: Instance
    reason: StopReason


@dataclass(frozen=True)
class SlotPlan:
    keep: tuple[SlotInstance, ...] = ()
    stop: tuple[Stop, ...] = ()
    start: tuple[int, ...] = ()
    """Held slots without an instance: start one each, with the slot's token."""
    claim: tuple[Claim, ...] = ()
    renew: tuple[int, ...] = ()
    """Slots whose lease Redis says this guard holds: renew them (the next round)."""
    release: tuple[int, ...] = ()
    """Held slots handed back (drain, pause, beyond ``max_workers``): their instance is gone."""
    lose: tuple[int, ...] = ()
    """Slots this guard thought it held that Redis gives another holder or none: fence now."""
    adopt: tuple[int, ...] = ()
    """Slots Redis says this host holds that this guard does not know (after a restart)."""

    @property
    def is_noop(self) -> bool:
        return not (self.stop or self.start or self.claim or self.release or self.lose
                    or self.adopt)


def _held_tokens(host: str, slots: int, holders: Mapping[int, tuple[str, int, str, int]],
                 held: Mapping[int, HeldLease], now: float) -> tuple[dict[int, int], set[int]]:
    """The token of each slot this host holds, and the slots it held until a deadline passed."""
    tokens: dict[int, int] = {}
    expired = set()
    for slot, (holder, token, _iid, _pttl) in holders.items():
        if holder != host or not 0 <= slot < slots:
            continue
        own = held.get(slot)
        if own is None or (own.token == token and own.deadline > now):
            tokens[slot] = token
        elif own.token == token:
            expired.add(slot)
    return tokens, expired


def _pick(candidates: list[SlotInstance], keep: Keep) -> tuple[SlotInstance, list[SlotInstance]]:
    """One survivor per slot (newest or oldest, pid breaking ties) and the duplicates."""
    ordered = sorted(candidates, key=lambda c: c.instance.sort_key(), reverse=(keep == "newest"))
    return ordered[0], ordered[1:]


def make_slot_plan(profile: str, host: str, *, slots: int,
                   holders: Mapping[int, tuple[str, int, str, int]],
                   held: Mapping[int, HeldLease], instances: Sequence[SlotInstance],
                   hosts: Sequence[HostState], now: float, renew_period: float,
                   claim_stagger: float, patterns: Sequence[str] = (), max_per_host: int = 1,
                   start_margin: float = 0.0, keep: Keep = "newest", draining: bool = False,
                   paused: bool = False, may_claim: bool = True,
                   replace_outdated: bool = False) -> SlotPlan:
    """Decide this host's part of a cluster profile (see the module docstring).

    ``slots`` is ``max_workers``: no slot at or beyond it is kept, started or claimed.
    ``holders`` is ``LeaseStore.holders()``; ``held`` this guard's own view; ``now`` is the
    clock of the deadlines in ``held``. ``hosts`` are the live hosts whose config has the
    profile (placement's input). ``may_claim`` is false during a hold-off or while this
    host's definition differs from the fleet's spec; ``replace_outdated`` is true once the
    spec is this host's definition.
    """
    if slots < 0 or max_per_host < 1:
        raise ValueError("slots must be >= 0 and max_per_host >= 1")
    draining = draining or any(h.host == host and h.draining for h in hosts)
    tokens, expired = _held_tokens(host, slots, holders, held, now)
    lose = sorted(s for s, own in held.items()
                  if not (s in holders and holders[s][0] == host and holders[s][1] == own.token))
    adopt = sorted(s for s in tokens if s not in held)

    by_slot: dict[int, list[SlotInstance]] = {}
    stop: list[Stop] = []
    for tagged in sorted({t.instance.pid: t for t in instances}.values(),
                         key=lambda t: t.instance.sort_key()):
        slot, token = tagged.slot, tagged.token
        if slot is None or token is None or not 0 <= slot < slots:
            stop.append(Stop(tagged.instance, "unslotted"))
        elif tokens.get(slot) == token:
            by_slot.setdefault(slot, []).append(tagged)
        elif slot in expired:
            stop.append(Stop(tagged.instance, "deadline"))
        elif slot in tokens:
            stop.append(Stop(tagged.instance, "stale"))
        else:
            stop.append(Stop(tagged.instance, "lost"))
    kept: dict[int, SlotInstance] = {}
    for slot, candidates in by_slot.items():
        kept[slot], extra = _pick(candidates, keep)
        stop += [Stop(t.instance, "duplicate") for t in extra]

    mine = {s for s, (holder, *_) in holders.items() if holder == host}
    occupied = {t.slot for t in instances}
    release = [s for s in mine if s >= slots and s in held and held[s].token == holders[s][1]]
    start: list[int] = []
    if paused or draining:
        release += [s for s in tokens if s not in kept]
        handed = sorted(kept) if paused else sorted(kept)[:1]  # a drain: one slot at a time
        for slot in handed:
            stop.append(Stop(kept.pop(slot).instance, "paused" if paused else "drain"))
    else:
        start = sorted(s for s in tokens if s not in occupied and s in held
                       and held[s].deadline - now > start_margin)  # after a stale one is gone
        if replace_outdated and not start and not stop and set(kept) == set(tokens):
            stale = [s for s in sorted(kept) if kept[s].instance.outdated
                     and held[s].deadline - now > start_margin] if set(kept) <= set(held) else []
            if stale:  # one slot at a time: stopped, then started again by the same plan
                stop.append(Stop(kept.pop(stale[0]).instance, "outdated"))
                start = [stale[0]]
    release = sorted({s for s in release if s not in occupied})  # only once no instance is left

    claims: list[Claim] = []
    if may_claim and not (paused or draining):
        claims = _claims(profile, host, slots, holders, hosts, renew_period=renew_period,
                         claim_stagger=claim_stagger, patterns=patterns,
                         max_per_host=max_per_host,
                         room=max_per_host - sum(1 for s in mine if s < slots))
    renew = sorted(s for s in mine if s not in release and s not in expired
                   and (s not in held or held[s].token == holders[s][1]))
    return SlotPlan(keep=tuple(kept[s] for s in sorted(kept)),
                    stop=tuple(sorted(stop, key=lambda s: s.instance.sort_key())),
                    start=tuple(start), claim=tuple(claims), renew=tuple(renew),
                    release=tuple(release), lose=tuple(lose), adopt=tuple(adopt))


def _claims(profile: str, host: str, slots: int, holders: Mapping[int, tuple[str, int, str, int]],
            hosts: Sequence[HostState], *, renew_period: float, claim_stagger: float,
            patterns: Sequence[str], max_per_host: int, room: int) -> list[Claim]:
    """The claims this host sends, soonest first, no more than it has room for."""
    if room <= 0:
        return []
    in_range = {s: h for s, h in holders.items() if 0 <= s < slots}
    expiring = {s: pttl / 1000 + AFTER_EXPIRY for s, (holder, _t, _i, pttl) in in_range.items()
                if holder != host and pttl / 1000 + AFTER_EXPIRY < renew_period}
    staying = {s: h[0] for s, h in in_range.items() if s not in expiring}
    ranking = place(profile, range(slots), hosts, staying, patterns=patterns,
                    max_per_host=max_per_host)
    found = []
    for slot, ranked in ranking.items():
        at = position(ranked, host)
        if at is not None:
            found.append(Claim(slot, expiring.get(slot, 0.0) + claim_delay(at, claim_stagger)))
    found.sort(key=lambda c: (c.delay, c.slot))
    return found[:room]
