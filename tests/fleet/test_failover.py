"""F1-F5 of ../shared/FLEET.md §6 on simulated hosts: a singleton (``max_workers = 1`` across 3
hosts, test timings L 3 s, D 2 s, P 0.5 s, K 0.5 s, stagger 0.15 s) whose holder is
crashed, cut off, loses its guard, has its guard stopped, or is frozen whole. The monitor samples every
host's instance groups every 20 ms throughout: never two running at once; the new
instance starts on another host within L + 1 s of the fault; a cut-off holder's instance
is gone within K of its hard deadline (D after its last acknowledged renewal), before the
new one starts. A frozen holder's instance dies on its thaw, and the writes it gets off
first are refused by the fenced store. Each check reports its figures (``fleet figures``
at the end of the run; ``WORKERGUARD_FLEET_ROUNDS`` sets the rounds per check for a
longer soak)."""

from __future__ import annotations

import signal
import statistics
from functools import partial

import pytest

from tests.fleet.bed import STOP_TIMEOUT, TIMINGS, D, Fleet, Host, K, L, P, boottime
from tests.fleet.conftest import report
from tests.fleet.fenced_store import FencedStore, SlotWrites
from tests.fleet.monitor import INTERVAL, THAW_ALLOWANCE, Monitor
from tests.fleet.rounds import (
    GuardPause,
    Measured,
    failover,
    fence_marker,
    gone_at,
    rounds,
    stale_starts,
    steady,
    successor,
)
from tests.support import poll_for

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

FAILOVER_BOUND = L + 1.0
"""FLEET §6: the new instance within L + 1 s of the fault."""
STAGGER = TIMINGS["claim_stagger"]


def summarise(check: str, measured: list[Measured], monitor: Monitor) -> None:
    for m in measured:
        report(f"{check} {m.holder} -> {m.successor}: {m.line()}")
    new = [m.new_after_fault for m in measured]
    gaps = [m.margin for m in measured]
    report(f"{check}: {len(measured)} rounds, new instance after the fault median "
           f"{statistics.median(new):.3f} s, max {max(new):.3f} s; gap min {min(gaps):.3f} s, "
           f"max {max(gaps):.3f} s; at most {monitor.most} running in {monitor.samples} samples")


def assert_failover(measured: Measured, cut_off: bool) -> None:
    assert measured.successor != measured.holder
    assert measured.new_after_fault <= FAILOVER_BOUND, measured.line()
    assert measured.new_token is not None and measured.old_token is not None
    assert measured.new_token > measured.old_token, measured.line()
    assert measured.margin >= 0, measured.line()
    if cut_off:  # the leash fenced it by its deadline, on its own
        assert measured.gone_after_deadline is not None, measured.line()
        assert measured.gone_after_deadline <= K, measured.line()
        assert measured.old_gone_after_fault <= D + K, measured.line()


def assert_at_most_one(monitor: Monitor, measured: list[Measured]) -> None:
    assert monitor.most <= 1, f"two instances at once: {monitor.overlaps[:5]}"
    assert monitor.samples > 100
    assert stale_starts(monitor, measured) == []


def test_f1_holder_host_crash_moves_it_within_l_plus_1s(fleet: Fleet) -> None:
    measured = []
    with Monitor(fleet).watching() as monitor:
        for _ in range(rounds(3)):
            m = failover(fleet, monitor, "crash", fleet.crash, fleet.restart)
            assert_failover(m, cut_off=False)
            measured.append(m)
    summarise("F1 host crash", measured, monitor)
    assert_at_most_one(monitor, measured)


@pytest.mark.parametrize("cut", ["nft", "link"])
def test_f2_holder_partitioned_fences_itself_before_the_move(fleet: Fleet, cut: str) -> None:
    inflict, restore = ((fleet.isolate, fleet.heal) if cut == "nft"
                        else (fleet.link_down, fleet.link_up))

    def heal(host: Host) -> None:
        restore(host)
        fleet.wait_live(host)

    measured = []
    with Monitor(fleet).watching() as monitor:
        for _ in range(rounds(2)):
            m = failover(fleet, monitor, f"partition ({cut})", inflict, heal)
            assert_failover(m, cut_off=True)
            measured.append(m)
    summarise(f"F2 partition {cut}", measured, monitor)
    assert_at_most_one(monitor, measured)


def test_f3_holder_guard_killed_its_leash_fences_alone(fleet: Fleet) -> None:
    def kill(host: Host) -> None:
        fleet.guard_signal(host, signal.SIGKILL)

    measured = []
    with Monitor(fleet).watching() as monitor:
        for _ in range(rounds(2)):
            m = failover(fleet, monitor, "guard SIGKILL", kill, fleet.start_guard)
            assert_failover(m, cut_off=True)
            measured.append(m)
    summarise("F3 guard SIGKILL", measured, monitor)
    assert_at_most_one(monitor, measured)


def test_f4_holder_guard_stopped_2l_then_continued(fleet: Fleet) -> None:
    pause = GuardPause(fleet)
    measured = []
    with Monitor(fleet).watching() as monitor:
        for _ in range(rounds(2)):
            m = failover(fleet, monitor, "guard SIGSTOP 2L", pause.stop, pause.restore)
            assert_failover(m, cut_off=True)
            measured.append(m)
    summarise("F4 guard SIGSTOP", measured, monitor)
    assert_at_most_one(monitor, measured)


def written(store: FencedStore, token: int | None) -> SlotWrites | None:
    """Slot 0's writes once the store's top token is ``token``."""
    writes = store.writes(0)
    return writes if writes.top == token else None


def test_f5_holder_host_frozen_2l_then_thawed(fleet: Fleet) -> None:
    """The whole holder host paused (``cgroup.freeze``: guard, leash and instance) for 2 L:
    the slot moves; on the thaw the old instance dies at once (its leash finds its deadline
    passed) and the fenced store refuses what it writes first, under the old token."""
    store = fleet.store
    assert store is not None
    frozen: dict[str, float] = {}
    thawed: dict[str, float] = {}

    def freeze(host: Host) -> None:
        fleet.freeze(host)
        frozen[host.host_id] = boottime()

    def thaw(host: Host) -> None:
        poll_for(lambda: boottime() >= frozen[host.host_id] + 2 * L, 4 * L,
                 message="the freeze to last 2 L")
        thawed[host.host_id] = monitor.thawing(host)
        fleet.thaw(host)

    measured, figures = [], []
    with Monitor(fleet).watching() as monitor:
        for _ in range(rounds(3)):
            refused = store.writes(0).refused
            m = failover(fleet, monitor, "freeze 2L", freeze, fleet.wait_live, release=thaw)
            thaw_at = thawed.pop(m.holder)
            gone = m.at + m.old_gone_after_fault - thaw_at
            marker = fence_marker(next(h for h in fleet.hosts if h.host_id == m.holder), m.at)
            fenced = None if marker is None else float(marker["at"]) - thaw_at
            writes = monitor.wait(partial(written, store, m.new_token), 10,
                                  f"the new holder's writes (token {m.new_token})")
            line = (f"{m.line()}; old gone {gone * 1000:.0f} ms after the thaw (sampled), "
                    f"leash fenced {'-' if fenced is None else f'{fenced * 1000:.0f}'} ms after "
                    f"it; {writes.refused - refused} of its writes refused")
            report(f"F5 freeze {m.holder} -> {m.successor}: {line}")
            assert m.successor != m.holder
            assert m.new_after_fault <= FAILOVER_BOUND, line
            assert m.new_token is not None and m.old_token is not None
            assert m.new_token > m.old_token, line
            assert gone <= THAW_ALLOWANCE, line
            measured.append(m)
            figures.append(gone)
    writes = store.writes(0)
    new = [m.new_after_fault for m in measured]
    report(f"F5 freeze: {len(measured)} rounds, new instance after the freeze median "
           f"{statistics.median(new):.3f} s, max {max(new):.3f} s; thawed instance gone after "
           f"the thaw max {max(figures) * 1000:.0f} ms; at most {monitor.most} running unfrozen "
           f"in {monitor.samples} samples, {len(monitor.thaw_overlaps)} samples with a thawed "
           f"instance not yet killed; store {writes.line()}")
    assert writes.stale == 0, writes.line()
    assert writes.accepted > 0
    assert_at_most_one(monitor, measured)


DRAIN_GAP_BOUND = STOP_TIMEOUT + P + STAGGER + 1.0
"""FLEET §6 F8: a drained holder's slot runs again within stop_timeout + P + stagger + 1 s
of its instance's end."""


def test_f8_drained_holder_hands_its_slot_over_never_two_at_once(fleet: Fleet) -> None:
    """``workerguard hosts --drain HOLDER``, run from outside every host (it talks to Redis
    only): the holder stops its instance and gives the slot back once it is gone; another
    host claims it at once; the drained host claims nothing until ``--undrain``. (The other
    half of F8, a guard restarted within D - P keeps its instance, is
    tests/test_cluster.py::test_a_guard_restarted_within_the_renew_deadline_keeps_its_instance:
    a Celery worker's start does not fit the bed's D - P of 1.5 s.)"""
    measured = []
    with Monitor(fleet).watching() as monitor:
        for _ in range(rounds(3)):
            holder, old = steady(fleet, monitor)
            at = boottime()
            drained = fleet.cli("hosts", "--drain", holder.host_id)
            assert drained.returncode == 0 and "draining" in drained.stdout, drained
            new = successor(monitor, holder, at, 60, f"to take {holder.host_id}'s drained slot")
            gone = gone_at(monitor, holder, old, 60)
            m = Measured("drain", holder.host_id, new.host, old.token, new.token, new.start - at,
                         gone - at, None, new.start - gone, at)
            report(f"F8 drain {m.holder} -> {m.successor}: {m.line()}")
            assert m.new_token is not None and m.old_token is not None
            assert m.new_token > m.old_token, m.line()
            # the old group's end is sampled (every INTERVAL), the new start exact: a handover
            # this fast (the slot is released once the group is empty, and claimed at once)
            # can show a gap down to -INTERVAL; an overlap would show in the samples
            assert -INTERVAL <= m.margin <= DRAIN_GAP_BOUND - INTERVAL, m.line()
            # drained, the host claims nothing: the slot stays where it went
            assert [g.host for g in monitor.running()] == [new.host]
            undrained = fleet.cli("hosts", "--undrain", holder.host_id)
            assert undrained.returncode == 0, undrained
            measured.append(m)
    gaps = [m.margin for m in measured]
    report(f"F8 drain: {len(measured)} rounds, gap with none running {min(gaps):.3f}-"
           f"{max(gaps):.3f} s (bound {DRAIN_GAP_BOUND:.2f} s); at most {monitor.most} running "
           f"in {monitor.samples} samples")
    assert_at_most_one(monitor, measured)
