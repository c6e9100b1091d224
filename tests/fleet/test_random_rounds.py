"""F6 of ../shared/FLEET.md §6 on simulated hosts: random fault rounds on 4 hosts running a
cluster profile of N = 2 slots with ``max_per_host`` 1 (test timings L 3 s, D 2 s, P 0.5 s,
K 0.5 s, stagger 0.15 s).

Each round draws, from a seeded RNG (the seed is reported; ``WORKERGUARD_FLEET_SEED``
replays a run, ``WORKERGUARD_FLEET_ROUNDS`` sets the rounds for a soak), one of: a host
crash (``cgroup.kill`` of the whole host), an nft black hole, its link down, its guard
SIGKILLed, its guard SIGSTOPped, the whole host frozen, or "heal all". A fault hits one of
the healthy hosts (those with no fault pending), at random; with none left the round
heals all. A fault stays until a "heal all", which restores every faulted host: a crashed
one boots again, a cut one is healed (nft table deleted, link up), a killed guard is
started again, a stopped guard gets SIGCONT and a frozen host is thawed (those two no
sooner than 2 L after the fault: "guard stop 2L", "freeze 2L"), one after the other, each
waited for until its guard publishes its host record again. The run ends with a heal all.

A fault hits a settled fleet: min(2, healthy hosts) instances run on healthy hosts and
the fenced store has the writes of each (their tokens are the slots' top); so does each
restore of a heal all. Without that, back-to-back faults hit a new holder before its
first write, and a write of the old holder (a thawed one, or one delivered late) is
accepted stale: the store cannot refuse an old token before it has seen the new one, which
no lease or leash can change (FLEET §2.5: only the token protects a thawed instance's
moment, and only once the new holder has written).

What passes, with the monitor sampling every host's instance groups every 20 ms:

* at most 2 running (unfrozen) instances in any sample (a thawed host's instances from
  before the freeze are counted apart for ``THAW_ALLOWANCE`` after the thaw, as in F5;
  reported);
* after a fault that leaves 2 or more healthy eligible hosts, 2 instances run on healthy
  hosts, in distinct slots, within L + 1 s of the fault (first seen by the monitor). A
  fault that leaves fewer has no bound (FLEET §2.2: the slots stay vacant); each healthy
  host still runs one;
* after a heal all, 2 run within L + 1 s of the moment 2 hosts were healthy again (the
  heal's start if they were; else when the restored host that made them 2 was seen live:
  its guard published its host record). The bound: a lease of a host still faulted then
  was last renewed before its fault, so it runs out at most L after that moment (a lease
  of a restored host is renewed or adopted by its restarted holder, or lapses the same
  way); a vacant slot is then claimed within P + 2 staggers and started by the claimer's
  heal, a fraction of a second. Also reported: 2 running after the last host was live;
* tokens strictly increase per slot, in the event log (``lease_acquired``, in stream
  order); per slot, each instance's ``WORKERGUARD_FENCING_TOKEN`` (read by the monitor)
  is greater than every earlier instance's of that slot, except a restart under the same
  grant by the same holder (FLEET §2.4: the token names the grant; a crashed host that
  boots before its lease ran out adopts it);
* the fenced store accepted 0 stale writes in either slot.

A wait that fails prints what is needed to find out why: the faulted hosts, the slots'
leases, each host's record, backoff and queue, the running instances and each host's
guard log tail.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from itertools import pairwise
from typing import TypeVar

import pytest
import redis

from tests.fleet.bed import PROFILE, Fleet, Host, L, boottime
from tests.fleet.conftest import report
from tests.fleet.fenced_store import StaleWrite
from tests.fleet.monitor import THAW_ALLOWANCE, Group, Monitor
from tests.fleet.rounds import rounds
from tests.support import poll_for
from workerguard.store import events, keys
from workerguard.tasks.routing import host_queue

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

N = 2
ROUNDS = 50
"""FLEET §6 F6's 50 rounds, in CI too (~2 s a round on the 2-core machine)."""
BOUND = L + 1.0
"""FLEET §6 F6: 2 running within L + 1 s (of the fault; of the last host live after a heal all)."""
WAIT = 60.0
"""How long a wait goes on before it fails with diagnostics (a bound is asserted apart)."""
SEED_VARIABLE = "WORKERGUARD_FLEET_SEED"
FAULTS = ("crash", "nft", "link down", "guard kill", "guard stop 2L", "freeze 2L")
HEAL_ALL = "heal all"
PAUSES = ("guard stop 2L", "freeze 2L")
"""Faults undone no sooner than 2 L after they began."""
T = TypeVar("T")


@dataclass
class Fault:
    kind: str
    at: float
    """``CLOCK_BOOTTIME`` just before it was inflicted."""
    holder: bool
    pids: list[int] = field(default_factory=list)
    """A stopped guard's processes (SIGCONT on the heal)."""


@dataclass(frozen=True)
class Outcome:
    number: int
    kind: str
    host: str
    holder: bool
    healthy: int
    took: float
    """Reference (the fault; after a heal all, 2 hosts healthy again) until the expected
    instances ran, as first seen by the monitor (0: they already ran)."""
    spawned: float | None
    """Reference until the newest of them started (its first process), if after it."""
    bounded: bool
    note: str = ""

    def line(self) -> str:
        spawned = "-" if self.spawned is None else f"{self.spawned:.3f} s"
        what = "heal all" if self.kind == HEAL_ALL else (
            f"{self.kind} of {self.host} ({'holder' if self.holder else 'not a holder'})")
        since = "2 hosts were healthy" if self.kind == HEAL_ALL else "the fault"
        bound = f"<= {BOUND:.1f} s" if self.bounded else "no bound"
        return (f"round {self.number}: {what}, {self.healthy} healthy: "
                f"{min(N, self.healthy)} running {self.took:.3f} s after {since} "
                f"(spawned {spawned}; {bound}){self.note}")


class Chaos:
    """The faults in force, their infliction and their heal, and the waits of a round."""

    def __init__(self, fleet: Fleet, monitor: Monitor) -> None:
        self.fleet = fleet
        self.monitor = monitor
        self.faulted: dict[str, Fault] = {}
        self.timeline: list[tuple[float, str]] = []
        """(Unix time, what happened): every fault, heal and host live again."""

    def note(self, what: str) -> None:
        self.timeline.append((time.time(), what))

    def healthy(self) -> list[Host]:
        return [h for h in self.fleet.hosts if h.host_id not in self.faulted]

    def holders(self) -> set[str]:
        return {g.host for g in self.monitor.running()}

    # faults ----------------------------------------------------------------------------
    def inflict(self, host: Host, kind: str) -> Fault:
        fault = Fault(kind, boottime(), host.host_id in self.holders())
        self.note(f"{kind} of {host.host_id} ({'holder' if fault.holder else 'not a holder'})")
        self.faulted[host.host_id] = fault
        fleet = self.fleet
        if kind == "crash":
            fleet.crash(host)
        elif kind == "nft":
            fleet.isolate(host)
        elif kind == "link down":
            fleet.link_down(host)
        elif kind == "guard kill":
            fleet.guard_signal(host, signal.SIGKILL)
        elif kind == "guard stop 2L":
            fault.pids = fleet.guard_signal(host, signal.SIGSTOP)
        elif kind == "freeze 2L":
            fleet.freeze(host)
        else:
            raise ValueError(kind)
        return fault

    def restore(self, host: Host, fault: Fault) -> None:
        fleet = self.fleet
        if fault.kind in PAUSES:
            poll_for(lambda: boottime() >= fault.at + 2 * L, 4 * L,
                     message=f"the {fault.kind} of {host.host_id} to last 2 L")
        self.note(f"heal of {host.host_id} ({fault.kind})")
        if fault.kind == "crash":
            fleet.restart(host)  # boots it and waits until it is live
            return
        if fault.kind == "guard kill":
            fleet.start_guard(host)  # waits until it is live
            return
        if fault.kind == "nft":
            fleet.heal(host)
        elif fault.kind == "link down":
            fleet.link_up(host)
        elif fault.kind == "guard stop 2L":
            for pid in fault.pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        elif fault.kind == "freeze 2L":
            self.monitor.thawing(host)
            fleet.thaw(host)
        fleet.wait_live(host)

    def heal_all(self) -> list[tuple[str, float]]:
        """Restore every faulted host (the 2 L pauses last), one after the other; each
        host with the ``CLOCK_BOOTTIME`` at which it was seen live again."""
        by_host = {h.host_id: h for h in self.fleet.hosts}
        lives = []
        for name, fault in sorted(self.faulted.items(), key=lambda f: (f[1].kind in PAUSES, f[0])):
            self.diagnosed(partial(self.restore, by_host[name], fault),
                           f"{name} to recover from its {fault.kind}")
            del self.faulted[name]
            lives.append((name, boottime()))
            self.note(f"{name} live again")
            self.settle(f"the fleet to settle once {name} was live again")
        return lives

    # waits -----------------------------------------------------------------------------
    def on_healthy(self) -> list[Group]:
        healthy = {h.host_id for h in self.healthy()}
        return [g for g in self.monitor.running() if g.host in healthy]

    def settle(self, what: str) -> list[Group]:
        """Until min(N, healthy hosts) instances run on healthy hosts, in distinct slots,
        and the store has the writes of each (its token is its slot's top): those."""
        count = min(N, len(self.healthy()))
        if count == 0:
            return []
        store = self.fleet.store
        assert store is not None

        def written(group: Group) -> bool:
            return group.slot is not None and store.writes(group.slot).top == group.token

        def settled() -> list[Group] | None:
            found = self.on_healthy()
            return found if len(found) >= count and all(map(written, found)) else None

        found = self.diagnosed(lambda: self.monitor.wait(settled, WAIT, what), what)
        slots = [g.slot for g in found]
        assert len(set(slots)) == len(slots), f"{what}: two instances in one slot: {slots}"
        return found

    def diagnosed(self, wait: Callable[[], T], what: str) -> T:
        try:
            return wait()
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnose(what)}") from None

    def diagnose(self, what: str) -> str:
        """Everything that tells why ``what`` did not happen."""
        now = boottime()
        lines = [f"--- diagnostics: waiting for {what} ---"]
        lines.append("faulted: " + (", ".join(
            f"{name} ({f.kind}, {now - f.at:.1f} s ago, {'holder' if f.holder else 'not a holder'})"
            for name, f in sorted(self.faulted.items())) or "none"))
        for g in sorted(self.monitor.running(), key=lambda g: g.first_seen):
            lines.append(f"instance {g.host}:{g.path.name} slot {g.slot} token {g.token} "
                         f"seen since {now - g.first_seen:.1f} s, last {now - g.last_seen:.2f} s ago")
        client = self.fleet.client(socket_timeout=2)
        try:
            redis_now = client.time()
            redis_ms = redis_now[0] * 1000 + redis_now[1] // 1000
            for slot in range(N):
                key = keys.cluster_slot(PROFILE, slot)
                lines.append(f"lease slot {slot}: {client.get(key)!r}, PTTL {client.pttl(key)} ms")
            lines.append(f"last token issued: {client.get(keys.cluster_token(PROFILE))!r}")
            for host in self.fleet.hosts:
                seen = client.zscore(keys.HOSTS, host.host_id)
                age = "never" if seen is None else f"{(redis_ms - seen) / 1000:.1f} s ago"
                lines.append(
                    f"{host.host_id}: record PTTL {client.pttl(keys.host_record(host.host_id))} ms "
                    f"(last published {age}), backoff "
                    f"{client.hgetall(keys.backoff(host.host_id, PROFILE))!r}, queue "
                    f"{client.llen(host_queue(host.host_id))} waiting, guard pids "
                    f"{host.guard_pids()}")
        except redis.exceptions.RedisError as exc:
            lines.append(f"redis: {exc!r}")
        finally:
            client.close()
        for host in self.fleet.hosts:
            lines.append(f"--- {host.host_id} guard log tail ---\n{host.log_tail(3000)}")
        return "\n".join(lines)


# the checks at the end -----------------------------------------------------------------
def instance_token_problems(groups: list[Group]) -> tuple[list[str], int]:
    """Per slot, in order of start: each instance's token above every earlier one's (equal
    only for a restart by the same holder under the same grant); and how many such
    restarts there were."""
    problems: list[str] = []
    same_grant = 0
    by_slot: dict[int, list[Group]] = {}
    for g in groups:
        if g.token is None or g.slot is None:
            problems.append(f"{g.host}:{g.path.name}: no token or slot read")
        else:
            by_slot.setdefault(g.slot, []).append(g)
    for slot, ordered in sorted(by_slot.items()):
        ordered.sort(key=lambda g: (g.start, g.first_seen))
        top: Group | None = None
        for g in ordered:
            assert g.token is not None
            if top is None or g.token > (top.token or 0):
                top = g
            elif g.token == top.token and g.host == top.host:
                same_grant += 1
            else:
                problems.append(f"slot {slot}: {g.host}:{g.path.name} token {g.token} after "
                                f"{top.host}:{top.path.name} token {top.token}")
    return problems, same_grant


ACQUIRED = re.compile(r"slot (\d+) token (\d+)")


def granted(fleet: Fleet) -> dict[int, list[int]]:
    """Every ``lease_acquired`` token per slot, in the event log's order."""
    client = fleet.client(socket_timeout=5)
    try:
        found: dict[int, list[int]] = {}
        for _eid, entry in events.since(client, "0-0", events.EventFilter(profile=PROFILE)):
            match = ACQUIRED.fullmatch(entry.get("detail", ""))
            if entry.get("action") == "lease_acquired" and match:
                found.setdefault(int(match[1]), []).append(int(match[2]))
        return found
    finally:
        client.close()


def stale_report(stale: list[StaleWrite], chaos: Chaos, groups: list[Group],
                 offset: float) -> str:
    """Each stale write, the instances of its token and of the lease's (Unix times, from the
    monitor's ``CLOCK_BOOTTIME`` + ``offset``) and what the rounds did around it."""
    lines = ["F6 stale writes:"]
    for w in stale:
        lines.append(f"  {w.line()}")
        for g in groups:
            if g.token in (w.token, w.granted):
                gone = "-" if g.gone is None else f"{g.gone + offset:.3f}"
                lines.append(f"    instance {g.host}:{g.path.name} token {g.token}: started "
                             f"{g.start + offset:.3f}, seen {g.first_seen + offset:.3f} .. "
                             f"{g.last_seen + offset:.3f}, gone {gone}")
        lines += [f"    {at:.3f} {what}" for at, what in chaos.timeline if abs(at - w.at) < 15]
    return "\n".join(lines)


def spread(values: list[float]) -> str:
    if not values:
        return "none"
    return (f"{len(values)}, median {statistics.median(values):.3f} s, "
            f"max {max(values):.3f} s")


@pytest.mark.timeout(ROUNDS * 12)
def test_f6_random_fault_rounds_keep_at_most_2_and_refill_within_l_plus_1s(fleet4: Fleet) -> None:
    fleet = fleet4
    store = fleet.store
    assert store is not None
    seed = int(os.environ.get(SEED_VARIABLE) or random.SystemRandom().randrange(2**32))
    report(f"F6 seed {seed} ({SEED_VARIABLE}={seed} replays this run's faults)")
    rng = random.Random(seed)
    began = time.monotonic()
    outcomes: list[Outcome] = []
    with Monitor(fleet, limit=N).watching() as monitor:
        chaos = Chaos(fleet, monitor)
        started = boottime()
        took, _spawned = after(chaos.settle("the first 2 instances"), started)
        report(f"F6 start: 2 running {took:.3f} s after the monitor began")
        for number in range(1, rounds(ROUNDS) + 1):
            kind = rng.choice((*FAULTS, HEAL_ALL) if chaos.faulted else FAULTS)
            candidates = chaos.healthy()
            if not candidates:
                kind = HEAL_ALL
            if kind == HEAL_ALL:
                outcome = heal_round(chaos, number)
            else:
                outcome = fault_round(chaos, number, rng.choice(candidates), kind)
            outcomes.append(outcome)
            report(f"F6 {outcome.line()}")
            if outcome.bounded:
                assert outcome.took <= BOUND, outcome.line()
        if chaos.faulted:
            outcome = heal_round(chaos, 0)
            report(f"F6 final {outcome.line()}")
            assert outcome.took <= BOUND, outcome.line()
        # the last writes of the instances in place, before the store is read
        tops = {g.slot: g.token for g in chaos.on_healthy() if g.slot is not None}
        poll_for(lambda: all(store.writes(s).top == t for s, t in tops.items()), 10,
                 message=f"the running instances' writes (tokens {tops})")
    elapsed = time.monotonic() - began

    groups = list(monitor.groups.values())
    token_problems, same_grant = instance_token_problems(groups)
    grants = granted(fleet)
    writes = [store.writes(slot) for slot in range(N)]
    failovers = [o.took for o in outcomes if o.bounded and o.kind != HEAL_ALL and o.holder]
    heals = [o.took for o in outcomes if o.kind == HEAL_ALL and o.bounded]
    kinds = Counter(o.kind for o in outcomes)
    report(f"F6: {len(outcomes)} rounds in {elapsed:.0f} s ("
           + ", ".join(f"{k} {kinds[k]}" for k in (*FAULTS, HEAL_ALL) if kinds[k]) + "); "
           f"holder faults with >= 2 healthy hosts, 2 running after: {spread(failovers)}; "
           f"heal all, 2 running after 2 hosts were healthy again: {spread(heals)}")
    report(f"F6: at most {monitor.most} running (unfrozen) in {monitor.samples} samples, "
           f"{len(monitor.overlaps)} samples above 2, {len(monitor.thaw_overlaps)} with a thawed "
           f"instance not yet killed (allowance {THAW_ALLOWANCE:.1f} s); {len(groups)} instances, "
           f"{same_grant} restarted under the same grant; grants per slot "
           + "; ".join(f"slot {s}: {len(t)}" for s, t in sorted(grants.items()))
           + "; store " + "; ".join(w.line() for w in writes))
    stale = [w for slot in range(N) for w in store.stale_writes(slot)]
    if stale:
        report(stale_report(stale, chaos, groups, time.time() - boottime()))
    assert monitor.most <= N, f"more than {N} running at once: {monitor.overlaps[:5]}"
    assert monitor.samples > 100
    assert token_problems == [], token_problems
    for slot, tokens in grants.items():
        assert all(a < b for a, b in pairwise(tokens)), \
            f"slot {slot}: grants out of order in the event log: {tokens}"
    seen = {g.token for g in groups if g.token is not None}
    missing = seen - {t for tokens in grants.values() for t in tokens}
    assert not missing, f"instance tokens never granted in the event log: {sorted(missing)}"
    for w in writes:
        assert w.stale == 0, w.line()
        assert w.accepted > 0, w.line()


def after(found: list[Group], since: float) -> tuple[float, float | None]:
    """Seconds from ``since`` until the monitor first saw the newest of ``found`` running
    (0 if it ran already), and until it started (None if before ``since``)."""
    if not found:
        return 0.0, None
    newest = max(found, key=lambda g: g.first_seen)
    spawned = newest.start - since if newest.start > since else None
    return max(0.0, newest.first_seen - since), spawned


def fault_round(chaos: Chaos, number: int, host: Host, kind: str) -> Outcome:
    fault = chaos.inflict(host, kind)
    healthy = len(chaos.healthy())
    expected = min(N, healthy)
    found = chaos.settle(f"{expected} running on healthy hosts after the {kind} of "
                         f"{host.host_id} (round {number})")
    took, spawned = after(found, fault.at)
    return Outcome(number, kind, host.host_id, fault.holder, healthy, took, spawned,
                   bounded=healthy >= N)


def heal_round(chaos: Chaos, number: int) -> Outcome:
    """Heal all; the bound counts from when 2 hosts were healthy again: before the heal if
    they were (2 ran then already), else when the host that made them 2 was live again.
    Every slot of a host still faulted then has run out L after its last renewal, before
    that moment (the same argument as after a fault)."""
    began = boottime()
    before = len(chaos.healthy())
    healed = ", ".join(f"{name} ({f.kind})" for name, f in sorted(chaos.faulted.items()))
    lives = chaos.heal_all()
    if before >= N or not lives:
        two, which = began, "2 healthy before the heal"
    else:
        name, two = lives[min(N - before, len(lives)) - 1]
        which = f"2 healthy once {name} was live, {two - began:.3f} s into the heal"
    last = lives[-1][1] if lives else began
    found = chaos.settle(f"2 running after the heal of {healed} (round {number})")
    took, spawned = after(found, two)
    after_last, _ = after(found, last)
    note = (f"; healed {healed or 'nothing'}: {which}; last host live {last - began:.3f} s "
            f"into the heal, 2 running {after_last:.3f} s after it")
    return Outcome(number, HEAL_ALL, "-", False, len(chaos.healthy()), took, spawned,
                   bounded=True, note=note)
