"""F7 of ../shared/FLEET.md §6 on simulated hosts: clock faults. The singleton bed of
test_failover.py (3 hosts, L 3 s, D 2 s, P 0.5 s, K 0.5 s, rho 0.01), its holder faulted as
in F1-F4 (crash, nft partition, guard SIGKILL, guard SIGSTOP 2 L), with clocks that are off:

(a) hosts' wall clocks offset: one host at ``+1h``, one at ``-1h``, one real. Leases and
    leashes run on ``CLOCK_BOOTTIME``, which a wall-clock offset does not move: F1-F4 pass
    unchanged.
(b) rates at the edge of rho = 0.01: Redis at x1.01 (a lease expires after L/1.01) and every
    host at x0.99 (wall and monotonic clocks: the leash fires D/0.99 after the last
    acknowledged renewal). Inequality (I), (1 + rho)(D/(1 - rho) + K) < L, holds with a
    margin of 0.455 s: F1-F4 pass unchanged.
(c) negative control: Redis at x2, far outside rho (a lease expires L/2 = 1.5 s after its
    renewal, before the cut-off holder's leash fires at D = 2 s): the monitor must report
    two instances at once, which proves the check can fail (partition, guard SIGKILL and
    guard SIGSTOP rounds; a crashed holder's instance dies with it). Its bed sends the stop signal
    only ``fence_grace`` = 0.05 s before the hard deadline (the others: 0.5 s): the bed's
    worker exits at once on SIGTERM, and with 0.5 s of grace it was gone 1.72 s after the
    renewal, a mere 56-75 ms after the new one started (1-2 samples of 20 ms, 3 of 3
    rounds): too close to the sampling to fail reliably. Inequality (I) counts on the kill
    at D, not on a worker that stops early. And each round begins once the fleet's claim
    hold-off is over: a guard that reconnects after a partition or a stop finds that the
    Redis clock ran twice as fast as its own meanwhile, takes it for a jump and holds every
    claim off for L + 1 s of Redis time (2 s real at x2); a fault inside that window moves
    the slot only after it, too late for an overlap (2 of 6 rounds, twice, when not waited
    out; 6 of 6 overlapped once waited out). A healed guard can log its jump a round after
    its record is back, so each round first lets 4 P pass after the last restore. In
    steady running the detector misses a x2 clock, save now and then: renewal rounds are
    P = 0.5 s apart, so the clock gains 0.5 s per round, the detector's floor, and only a
    round late by more than its tolerance (about 10 ms) shows a jump.

How the clocks are faked (``HostClock`` in bed.py): libfaketime for Redis (its key expiries
follow its wall clock: Redis 6.2) and for the hosts' wall clocks; tests/fleet/clockshim.c
for the hosts' monotonic clocks, which libfaketime 0.9.10 cannot fake for a threaded
Python. Each check reports its figures (``fleet figures``; ``WORKERGUARD_FLEET_ROUNDS``
repeats the rounds)."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from typing import cast

import pytest

from tests.fleet.bed import Fleet, Host, L, P, boottime
from tests.fleet.conftest import bed, report
from tests.fleet.monitor import Monitor
from tests.fleet.rounds import GuardPause, Measured, failover, rounds
from tests.fleet.test_failover import assert_at_most_one, assert_failover, summarise
from tests.support import poll_for
from workerguard.store import keys
from workerguard.store.host_records import HostRecords
from workerguard.timing import HOLDOFF_EXTRA

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

Fault = tuple[str, Callable[[Host], None], Callable[[Host], None], bool]
"""(name, inflict, restore, whether the holder is cut off: its leash must fence)."""


def f1_to_f4(fleet: Fleet, crash: bool = True) -> list[Fault]:
    """The faults of F1-F4, restored as test_failover.py restores them."""
    pause = GuardPause(fleet)

    def heal(host: Host) -> None:
        fleet.heal(host)
        fleet.wait_live(host)

    def kill(host: Host) -> None:
        fleet.guard_signal(host, signal.SIGKILL)

    faults: list[Fault] = [("crash", fleet.crash, fleet.restart, False)] if crash else []
    return [*faults, ("partition (nft)", fleet.isolate, heal, True),
            ("guard SIGKILL", kill, fleet.start_guard, True),
            ("guard SIGSTOP 2L", pause.stop, pause.restore, True)]


def clock_offsets(fleet: Fleet) -> dict[str, float]:
    """Redis ``TIME`` minus each host's wall clock, from the host records its guard wrote."""
    client = fleet.client(socket_timeout=5)
    try:
        return {h: r.clock_offset for h, r in HostRecords(client).live().items()}
    finally:
        client.close()


def host_boottime(host: Host) -> tuple[float, float, float]:
    """The host's ``CLOCK_BOOTTIME``, read by a process on the host's clock (the guard's
    environment), and the real one just before and just after that process ran (its
    reading falls in between, anywhere: an interpreter's start and exit are not even)."""
    assert host.clock is not None
    before = boottime()
    out = subprocess.run([sys.executable, "-c",
                          "import time; print(time.clock_gettime(time.CLOCK_BOOTTIME))"],
                         env={**os.environ, **host.clock.env}, capture_output=True, text=True,
                         timeout=30, check=True)
    return float(out.stdout), before, boottime()


def jumps_logged(fleet: Fleet) -> tuple[int, int]:
    """The Redis clock jumps the guards logged: by their cluster loops (renewal rounds P
    apart; each jump holds every claim of the fleet off for L + 1 s of Redis time) and by
    their Redis watches (every 2 s; logged and counted only)."""
    logs = [h.log.read_text(errors="replace") for h in fleet.hosts if h.log.exists()]
    return (sum(t.count("cluster: the Redis clock jumped") for t in logs),
            sum(t.count("redis: the server's clock jumped") for t in logs))


def clock_jumps(fleet: Fleet) -> str:
    loop, watch = jumps_logged(fleet)
    return f"Redis clock jumps logged: {loop} by cluster loops (hold-offs), {watch} by Redis watches"


def holdoff_over(fleet: Fleet) -> None:
    """Until the fleet's hold-off is over: L + 1 s of Redis time since its epoch was last
    rewritten (``workerguard:epoch``: ``<since ms>|<primary>``)."""
    client = fleet.client(socket_timeout=5)
    try:
        def over() -> bool:
            epoch = cast(bytes | None, client.get(keys.EPOCH))
            seconds, micros = client.time()
            since = 0 if epoch is None else int(epoch.split(b"|")[0])
            return seconds * 1000 + micros // 1000 - since >= (L + HOLDOFF_EXTRA) * 1000
        poll_for(over, 60, interval=0.05, message="the fleet's claim hold-off to end")
    finally:
        client.close()


def passed(moment: float) -> bool:
    return boottime() >= moment


def run_rounds(fleet: Fleet, check: str) -> tuple[list[Measured], Monitor]:
    """F1-F4, ``rounds(1)`` times each, asserted as test_failover.py asserts them."""
    measured = []
    with Monitor(fleet).watching() as monitor:
        for _ in range(rounds(1)):
            for fault, inflict, restore, cut_off in f1_to_f4(fleet):
                m = failover(fleet, monitor, fault, inflict, restore)
                assert_failover(m, cut_off=cut_off)
                measured.append(m)
    summarise(check, measured, monitor)
    report(f"{check}: {clock_jumps(fleet)}; holders "
           f"{', '.join(sorted({m.holder for m in measured}))}")
    return measured, monitor


def test_f7a_hosts_wall_clocks_an_hour_off_change_nothing() -> None:
    with bed(3, max_workers=1, host_clocks=("+1h", "-1h", None)) as fleet:
        offsets = clock_offsets(fleet)
        report("F7a wall clocks: Redis TIME - host: " + ", ".join(
            f"{h} {o:+.1f} s" for h, o in sorted(offsets.items())))
        for host, expected in zip(fleet.hosts, (-3600, 3600, 0), strict=True):
            assert abs(offsets[host.host_id] - expected) < 5, offsets
        measured, monitor = run_rounds(fleet, "F7a wall +1h/-1h")
        assert_at_most_one(monitor, measured)


def test_f7b_redis_fast_and_hosts_slow_within_rho_change_nothing() -> None:
    with bed(3, max_workers=1, redis_clock="+0 x1.01", host_clocks=("+0 x0.99",) * 3) as fleet:
        offsets = clock_offsets(fleet)
        measured, monitor = run_rounds(fleet, "F7b Redis x1.01, hosts x0.99")
        assert_at_most_one(monitor, measured)
        for host in fleet.hosts:  # every host really was on a slow clock
            assert host.clock is not None
            faked, before, after = host_boottime(host)
            real = (before + after) / 2
            lag, since = real - faked, real - host.clock.anchor
            report(f"F7b {host.host_id}: its CLOCK_BOOTTIME {lag:.3f} s behind the real one "
                   f"{since:.1f} s after its anchor (x{host.clock.rate}: "
                   f"{(1 - host.clock.rate) * since:.3f} s expected)")
            assert lag > 0.5 * (1 - host.clock.rate) * since, (faked, real)
            seen = host.clock.real(faked)
            assert before - 0.05 < seen < after + 0.05, \
                f"{host.host_id}: {faked} on the host is {seen} real, read in {before}..{after}"
        drift = {h: o - offsets[h] for h, o in clock_offsets(fleet).items() if h in offsets}
        report("F7b wall clocks: Redis TIME - host grew by " + ", ".join(
            f"{h} {d:+.3f} s" for h, d in sorted(drift.items())) + " during the rounds")
        assert all(d > 0 for d in drift.values()), drift


def test_f7c_negative_control_redis_twice_as_fast_shows_an_overlap() -> None:
    """Outside rho the check must fail: with Redis at x2 the lease of a cut-off holder
    expires at about 1.5 s, its leash fires at D = 2 s, and another host starts in between."""
    with bed(3, max_workers=1, redis_clock="+0 x2", timings={"fence_grace": 0.05}) as fleet:
        measured: list[Measured] = []
        restored = boottime()
        with Monitor(fleet).watching() as monitor:
            for _ in range(rounds(1)):
                for fault, inflict, restore, _cut in f1_to_f4(fleet, crash=False):
                    # a healed guard logs its jump at its first renewal round that gets
                    # through, which can come after its record (all wait_live awaits)
                    poll_for(partial(passed, restored + 4 * P), 10 * P,
                             message="the restored guard's first rounds")
                    holdoff_over(fleet)
                    before, held_off = len(monitor.overlaps), jumps_logged(fleet)[0]
                    m = failover(fleet, monitor, fault, inflict, restore)
                    seen = len(monitor.overlaps) - before
                    held_off = jumps_logged(fleet)[0] - held_off
                    report(f"F7c Redis x2 {m.holder} -> {m.successor}: {m.line()}; "
                           f"{seen} samples with 2 running; {held_off} hold-offs in the round")
                    measured.append(m)
                    restored = boottime()
        overlapped = [m for m in measured if m.margin < 0]
        jumps = clock_jumps(fleet)
        report(f"F7c Redis x2: {len(measured)} rounds, {len(overlapped)} with the new instance "
               f"started before the old was gone (gap median "
               f"{statistics.median(m.margin for m in measured):.3f} s, min "
               f"{min(m.margin for m in measured):.3f} s); at most {monitor.most} running in "
               f"{monitor.samples} samples, {len(monitor.overlaps)} samples with 2; "
               f"{jumps}")
        assert monitor.most >= 2, "the negative control showed no overlap"
        assert monitor.overlaps
