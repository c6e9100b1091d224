"""Row "failover" (issue 20): how long a singleton takes to come back elsewhere, and the gap
(or the overlap) between its old and its new instance, per fault kind, on the fleet bed of
tests/fleet (simulated hosts: network + PID namespaces and a cgroup each; needs root,
nft and a writable cgroup2), with a second system side by side.

* **workerguard**: a cluster profile of ``max_workers = 1`` on 3 hosts, test timings
  (L 3 s, D 2 s, P 0.5 s, K 0.5 s), the rounds of the fleet checks
  (``tests.fleet.rounds.failover``): the holder crashed (``cgroup.kill`` of its host) or
  cut off (an nft black hole, healed once the new instance runs and the old is gone).
* **a plain TTL lock** (benchmarks/ttl_singleton.py): redis-py's ``Lock`` (TTL = L,
  extended every P) on 2 hosts, each contender running the worker while it believes it
  holds the lock; no leash. Crash rounds as above; a partition is held for 2 L (its old
  instance cannot go before the heal: it learns of the loss only from Redis).

The same monitor samples every host's instance groups every 20 ms for both. Per round:
the new instance's start after the fault, and the gap = new start minus old instance gone
(negative: both ran, an overlap). Not part of ``--quick`` (it boots two beds and takes
minutes); ``--failover-rounds N`` sets the rounds per fault kind (default 5).
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks.rows import Row, log
from tests.fleet.bed import PROFILE, Fleet, Host, L, P, boottime, missing
from tests.fleet.monitor import Monitor
from tests.fleet.rounds import Measured, failover, steady
from tests.support import SLEEPER, poll_for

HERE = Path(__file__).resolve().parent
ROUNDS = 5
PARTITION_HOLD = 2 * L
"""How long the lock's partition rounds keep the holder cut off."""


class LockFleet(Fleet):
    """The bed with a TTL-lock contender on each host where the guard worker would run."""

    def _guard_argv(self, host: Host) -> list[str]:
        return [sys.executable, str(HERE / "ttl_singleton.py"), self.url, f"{self.prefix}-lock",
                str(L), str(P), str(host.workers / host.host_id / PROFILE), str(host.lease_file),
                str(self._alive(host)), "--", sys.executable, str(SLEEPER), "--tag", self.prefix]

    def _alive(self, host: Host) -> Path:
        return host.home / "alive"

    def wait_live(self, host: Host, timeout: float = 90) -> None:
        """Until the host's contender has heard from Redis since now."""
        alive = self._alive(host)
        since = alive.stat().st_mtime if alive.exists() else 0.0
        poll_for(lambda: alive.exists() and alive.stat().st_mtime > since, timeout, interval=0.05,
                 message=f"{host.host_id}'s contender to reach Redis\n{host.log_tail()}")


def held_round(fleet: Fleet, monitor: Monitor, fault: str, inflict: Callable[[Host], None],
               restore: Callable[[Host], None], hold: float, timeout: float = 60) -> Measured:
    """``failover``'s round for a holder that never stops on its own: the fault lasts
    ``hold`` seconds, then it is restored, then the old instance is waited for."""
    holder, old = steady(fleet, monitor)
    at = boottime()
    inflict(holder)
    new = monitor.wait(lambda: next((g for g in monitor.running() if g.host != holder.host_id
                                     and g.first_seen > at), None),
                       timeout, f"a new instance on another host after {fault} of {holder.host_id}")
    poll_for(lambda: boottime() >= at + hold, hold + timeout, message=f"{fault} to last {hold} s")
    restore(holder)
    gone = monitor.wait(lambda: monitor.group(old.path).gone, timeout,
                        f"the old instance on {holder.host_id} to be gone")
    return Measured(fault, holder.host_id, new.host, old.token, new.token, new.start - at,
                    gone - at, None, new.start - gone, at)


Figures = dict[str, tuple[list[Measured], int]]
"""Per fault kind: the rounds, and the most instances running at once in any sample."""


def _run(fleet: Fleet, rounds: int, lock: bool) -> Figures:
    def heal(host: Host) -> None:
        fleet.heal(host)
        fleet.wait_live(host)

    found: Figures = {}
    kinds: list[tuple[str, Callable[[Monitor], Measured]]] = [
        ("crash", lambda m: failover(fleet, m, "crash", fleet.crash, fleet.restart)),
        ("partition", (lambda m: held_round(fleet, m, "partition", fleet.isolate, heal, PARTITION_HOLD))
         if lock else (lambda m: failover(fleet, m, "partition", fleet.isolate, heal)))]
    for kind, one_round in kinds:
        with Monitor(fleet).watching() as monitor:
            measured = []
            for _ in range(rounds):
                measured.append(one_round(monitor))
                log(f"{'TTL lock' if lock else 'workerguard'} {measured[-1].line()}")
        found[kind] = (measured, monitor.most)
    return found


def _cell(measured: list[Measured], most: int) -> str:
    new = [m.new_after_fault for m in measured]
    gaps = [m.margin for m in measured]
    overlap = [-g for g in gaps if g < 0]
    text = (f"failover median {statistics.median(new):.2f} s, max {max(new):.2f} s; gap "
            f"median {statistics.median(gaps):.2f} s, min {min(gaps):.2f} s; "
            f"most running at once {most}")
    if overlap:
        text += f"; **overlap in {len(overlap)} of {len(measured)} rounds, up to {max(overlap):.2f} s**"
    return text


def failover_rows(rounds: int = ROUNDS) -> list[Row]:
    why = missing()
    if why is not None:
        return [Row("failover per fault kind (fleet bed)", f"skipped: {why}",
                    f"skipped: {why}", "", None)]
    figures: dict[str, Figures] = {}
    for name, cls, hosts in (("workerguard", Fleet, 3), ("lock", LockFleet, 2)):
        log(f"failover: {name} on {hosts} simulated hosts, {rounds} rounds per fault kind")
        bed = cls(hosts).start()
        try:
            figures[name] = _run(bed, rounds, lock=name == "lock")
        finally:
            bed.close()
    rows = []
    for kind in ("crash", "partition"):
        wg, most = figures["workerguard"][kind]
        lock, lock_most = figures["lock"][kind]
        worst = max(m.new_after_fault for m in wg)
        rows.append(Row(
            f"failover of a singleton, holder {'host crashed' if kind == 'crash' else 'partitioned (nft)'}"
            f": {rounds} rounds, L = {L:g} s, P = {P:g} s (fleet bed)",
            f"plain TTL lock (redis-py `Lock`, 2 hosts, no leash): {_cell(lock, lock_most)}",
            f"{_cell(wg, most)}", f"new <= L + 1 s = {L + 1:g} s; never 2 at once",
            worst <= L + 1 and most <= 1 and min(m.margin for m in wg) >= 0))
    return rows
