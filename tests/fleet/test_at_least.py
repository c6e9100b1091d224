"""F11 of ../shared/FLEET.md §6 on simulated hosts: a singleton with ``guarantee =
"at_least"`` (2 hosts, test timings) whose holder is cut off from Redis (nft black hole)
for 3 L. Such a profile trades the at-most promise for availability: its instance has no
leash and keeps running while cut off, the other host takes the slot after the lease and
starts its own within L + 1 s (never more than N + 1 at once), and once the partition
heals the old holder's guard learns its lease is lost and stops the instance of the lower
token. The fenced store shows what the fencing token is for here: what the cut-off
instance writes after the heal, under its old token, is refused."""

from __future__ import annotations

import statistics

import pytest

from tests.fleet.bed import PROFILE, STOP_TIMEOUT, Fleet, Host, L, P, boottime
from tests.fleet.conftest import report
from tests.fleet.monitor import Group, Monitor
from tests.fleet.rounds import gone_at, rounds, successor
from tests.support import poll_for

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

PARTITION = 3 * L
STOP_AFTER_HEAL_BOUND = P + STOP_TIMEOUT
"""FLEET §6 F11: the lower token's instance stopped within P + stop_timeout of the heal."""


def until(moment: float, why: str) -> None:
    poll_for(lambda: boottime() >= moment, moment - boottime() + 30, message=why)


def alone(fleet: Fleet, monitor: Monitor) -> tuple[Host, Group]:
    """The holder and its instance once exactly one runs, for at least 2 P."""
    def one() -> tuple[Host, Group] | None:
        running = monitor.running()
        if len(running) != 1 or boottime() - running[0].first_seen < 2 * P:
            return None
        return next(h for h in fleet.hosts if h.host_id == running[0].host), running[0]
    return monitor.wait(one, 90, "one instance running")


def test_f11_at_least_keeps_a_cut_off_holder_and_the_lower_token_stops_after_the_heal(
        fleet_at_least: Fleet) -> None:
    fleet = fleet_at_least
    store = fleet.store
    assert store is not None
    with Monitor(fleet, limit=2).watching() as monitor:
        lines, new_after, stopped_after = [], [], []
        for _ in range(rounds(2)):
            holder, old = alone(fleet, monitor)
            refused = store.writes(0).refused
            at = boottime()
            fleet.isolate(holder)
            try:
                new = successor(monitor, holder, at, 60, f"while {holder.host_id} is cut off")
                until(at + PARTITION, "the partition to last 3 L")
                kept = monitor.group(old.path).gone is None
            finally:
                fleet.heal(holder)
            healed = boottime()
            gone = gone_at(monitor, holder, old, 60)
            fleet.wait_live(holder)
            writes = store.writes(0)
            line = (f"{holder.host_id} cut off {PARTITION:.0f} s: new on {new.host} "
                    f"{new.start - at:.3f} s after the cut, the old one "
                    f"{'kept running' if kept else 'STOPPED'} while cut off and stopped "
                    f"{gone - healed:.3f} s after the heal; token {old.token} -> {new.token}; "
                    f"{writes.refused - refused} of its writes refused after the heal")
            report(f"F11 at_least {line}")
            assert kept, line
            assert new.start - at <= L + 1.0, line
            assert old.token is not None and new.token is not None and new.token > old.token, line
            assert gone - healed <= STOP_AFTER_HEAL_BOUND, line
            assert [g.path for g in monitor.running()] == [new.path], line
            lines.append(line)
            new_after.append(new.start - at)
            stopped_after.append(gone - healed)
    writes = store.writes(0)
    report(f"F11 at_least: {len(lines)} rounds, replacement after the cut median "
           f"{statistics.median(new_after):.3f} s, max {max(new_after):.3f} s; the lower token "
           f"stopped after the heal max {max(stopped_after):.3f} s; at most {monitor.most} "
           f"running ({PROFILE}: N = 1) in {monitor.samples} samples; store {writes.line()}")
    assert monitor.most <= 2, f"more than N + 1 at once: {monitor.overlaps[:5]}"
    assert writes.stale == 0, writes.line()
