"""Properties of the pure planning function, over generated instance sets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workerguard.policy.plan import make_plan
from workerguard.workers.model import Instance

instances_strategy = st.lists(
    st.builds(
        lambda pid, tick: Instance(profile="p", pid=pid, start=100_000 + tick),
        st.integers(1, 10_000), st.integers(0, 20),  # few ticks: many start ties
    ),
    max_size=25,
    unique_by=lambda i: i.pid,
)
bounds = st.integers(0, 10).flatmap(lambda lo: st.tuples(st.just(lo), st.integers(max(lo, 1), 12)))


@given(instances_strategy, bounds, st.sampled_from(["newest", "oldest"]))
def test_plan_never_keeps_more_than_max_and_never_invents_processes(instances, b, keep):
    lo, hi = b
    plan = make_plan(instances, min_workers=lo, max_workers=hi, keep=keep)
    assert len(plan.keep) <= hi
    given_pids = {i.pid for i in instances}
    assert {i.pid for i in plan.keep} | {i.pid for i in plan.stop} == given_pids
    assert not {i.pid for i in plan.keep} & {i.pid for i in plan.stop}
    assert len(plan.keep) + plan.start >= lo
    assert len(plan.keep) + plan.start <= hi


@given(instances_strategy, bounds)
def test_plan_stops_nothing_when_the_count_is_within_bounds(instances, b):
    lo, hi = b
    plan = make_plan(instances, min_workers=lo, max_workers=hi)
    if len(instances) <= hi:
        assert plan.stop == ()
        assert plan.start == max(0, lo - len(instances))
    if lo <= len(instances) <= hi:
        assert plan.is_noop


@given(instances_strategy, st.integers(1, 12), st.sampled_from(["newest", "oldest"]))
def test_plan_keeps_the_newest_or_oldest_with_pid_as_tie_break(instances, hi, keep):
    plan = make_plan(instances, min_workers=0, max_workers=hi, keep=keep)
    key = Instance.sort_key
    for kept in plan.keep:
        for stopped in plan.stop:
            if keep == "newest":
                assert key(kept) > key(stopped)
            else:
                assert key(kept) < key(stopped)


@given(instances_strategy, st.integers(0, 12))
def test_enforce_plans_never_start_anything(instances, hi):
    plan = make_plan(instances, min_workers=0, max_workers=hi, may_start=False)
    assert plan.start == 0


@given(instances_strategy, bounds)
def test_plan_is_deterministic_whatever_the_input_order(instances, b):
    lo, hi = b
    forward = make_plan(instances, min_workers=lo, max_workers=hi)
    backward = make_plan(list(reversed(instances)), min_workers=lo, max_workers=hi)
    assert forward == backward


def test_plan_example_from_the_original_script():
    old = Instance(profile="rpa", pid=30988, start=10_000)
    new = Instance(profile="rpa", pid=51848, start=20_000)
    plan = make_plan([old, new], min_workers=1, max_workers=1)
    assert [i.pid for i in plan.keep] == [51848]
    assert [i.pid for i in plan.stop] == [30988]
    assert plan.start == 0


def test_plan_rejects_min_above_max():
    with pytest.raises(ValueError, match="min_workers"):
        make_plan([], min_workers=3, max_workers=2)


# Adopted, outdated and spare instances, and stop_adopted ----------------------------------

mixed_strategy = st.lists(
    st.builds(
        lambda pid, tick, kind: Instance(
            profile="p", pid=pid, start=100_000 + tick,
            instance_id=None if kind == "adopted" else f"{pid:032x}",
            origin="adopted" if kind == "adopted" else "spawned", outdated=kind == "outdated"),
        st.integers(1, 10_000), st.integers(0, 20), st.sampled_from(["current", "outdated", "adopted"]),
    ),
    max_size=25,
    unique_by=lambda i: i.pid,
)


def _class(instance: Instance) -> int:
    """Survivor preference: spawned with the current command, then outdated, then adopted."""
    return 2 if instance.origin == "adopted" else (1 if instance.outdated else 0)


@given(mixed_strategy, bounds, st.sampled_from(["newest", "oldest"]), st.booleans())
def test_every_instance_is_kept_stopped_or_spare_and_adopted_ones_stop_only_when_allowed(
        instances, b, keep, stop_adopted):
    lo, hi = b
    plan = make_plan(instances, min_workers=lo, max_workers=hi, keep=keep, stop_adopted=stop_adopted)
    kept, stopped, spare = ({i.pid for i in part} for part in (plan.keep, plan.stop, plan.spare))
    assert kept | stopped | spare == {i.pid for i in instances}
    assert not (kept & stopped or kept & spare or stopped & spare)
    assert len(kept) == min(hi, len(instances))
    assert plan.start == max(0, lo - len(kept))
    if stop_adopted:
        assert plan.spare == ()
    else:
        assert all(i.origin == "adopted" for i in plan.spare)
        assert all(i.origin != "adopted" for i in plan.stop)


@given(mixed_strategy, bounds, st.sampled_from(["newest", "oldest"]))
def test_survivors_are_current_first_then_outdated_then_adopted_and_by_age_within_a_class(
        instances, b, keep):
    lo, hi = b
    plan = make_plan(instances, min_workers=lo, max_workers=hi, keep=keep, stop_adopted=True)
    for survivor in plan.keep:
        for gone in plan.stop:
            assert _class(survivor) <= _class(gone)
            if _class(survivor) == _class(gone):
                newer = survivor.sort_key() > gone.sort_key()
                assert newer == (keep == "newest")


@given(mixed_strategy, bounds)
def test_an_outdated_instance_is_never_kept_over_a_current_one_beyond_max(instances, b):
    lo, hi = b
    plan = make_plan(instances, min_workers=lo, max_workers=hi)
    current_gone = [i for i in plan.stop if _class(i) == 0]
    assert not current_gone or all(_class(k) == 0 for k in plan.keep)
