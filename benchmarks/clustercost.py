"""Row "cluster_cost" (check F10 of ../shared/FLEET.md §6): what 10 held slots of a cluster
profile cost one guard worker, beside the same guard without the cluster profile, measured
side by side over the same window (tests/cluster_cost.py: how, and why tmpfs for the
runtime dir). The check's window is 5 minutes (the default); ``--quick`` measures 20 s;
``--cluster-window SECONDS`` sets it. The slow test tests/test_cluster_cost.py asserts the
same bounds over 60 s."""

from __future__ import annotations

from benchmarks.rows import Row
from tests.cluster_cost import SLOTS, P, measure
from tests.support import ProcessTracker

WINDOW = 300.0
QUICK_WINDOW = 20.0


def cluster_cost_row(quick: bool, window: float | None = None) -> Row:
    window = window or (QUICK_WINDOW if quick else WINDOW)
    tracker = ProcessTracker()
    try:
        cost = measure(window, tracker)
    finally:
        tracker.end_all()
    leash_cpu = sorted(cost.leash_cpu)
    met = (0.8 / P <= cost.renew_rate <= 1.05 / P and cost.slots_per_call == {SLOTS}
           and cost.extra_cpu <= 0.01 and max(cost.leash_rss_mb) <= 12
           and max(leash_cpu) <= 0.001)
    return Row(
        f"cost of {SLOTS} held cluster slots on one guard, {cost.window:.0f} s window "
        f"(P = {P:g} s; the same guard without the cluster profile beside it)",
        f"without the profile: {cost.idle_commands / cost.window:.1f} Redis commands/s, guard CPU "
        f"{100 * cost.idle_cpu / cost.window:.2f} % of a core",
        f"renew script {cost.renew_rate:.2f} calls/s, each naming "
        f"{'/'.join(map(str, sorted(cost.slots_per_call)))} slots; "
        f"{cost.commands / cost.window:.1f} Redis commands/s (+{cost.extra_commands_rate:.1f}, "
        f"Lua's own counted); guard CPU {100 * cost.guard_cpu / cost.window:.2f} % "
        f"(+{100 * cost.extra_cpu:.2f} %); leash RSS max {max(cost.leash_rss_mb):.1f} MB, "
        f"CPU median {100 * leash_cpu[len(leash_cpu) // 2]:.3f} % / max {100 * max(leash_cpu):.3f} %",
        f"1/P = {1 / P:g} renew calls/s; guard +1 % of a core at most; leash <= 12 MB, "
        "<= 0.1 % CPU", met)
