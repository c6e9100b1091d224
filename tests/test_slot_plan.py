"""Properties of the cluster slot plan (policy.slot_plan) over generated leases, own views
and local instances: an instance runs only for a slot this host holds, under that slot's
token, one per slot; never beyond max_per_host or max_workers; a slot is given back only
once no instance of it is left."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workerguard.policy.placement import HostState
from workerguard.policy.slot_plan import SlotInstance, SlotPlan, make_slot_plan
from workerguard.store.leases import Held
from workerguard.workers.model import Instance

ME = "me"
NOW = 1000.0
HOSTS = [ME, "a", "b", "c"]
TOKENS = [10, 20, 30]


@dataclass(frozen=True)
class Own:
    token: int
    deadline: float


@st.composite
def situations(draw):
    """Per slot (one beyond ``max_workers`` too: a shrunken profile): a lease or none, this
    guard's view of it (none, the same grant live or expired, another grant) and 0-2 local
    instances under that slot's token or another; plus instances without a slot."""
    slots = draw(st.integers(0, 5))
    holders, held, instances = {}, {}, []
    pids = iter(draw(st.permutations(range(1, 60))))
    for slot in range(slots + 2):
        token = draw(st.sampled_from(TOKENS))
        if draw(st.booleans()):
            holders[slot] = (draw(st.sampled_from([ME, ME, *HOSTS])), token, "iid",
                             draw(st.integers(0, 20_000)))
        view = draw(st.sampled_from(["none", "live", "live", "expired", "other"]))
        if view != "none":
            ahead = st.floats(NOW - 5, NOW) if view == "expired" else st.floats(NOW + 0.01, NOW + 15)
            deadline = draw(ahead)
            held[slot] = Own(token if view != "other" else token + 1, deadline)
        for _ in range(draw(st.integers(0, 2))):
            tagged_token = draw(st.sampled_from([token, token + 1, token + 1, None]))
            instances.append(SlotInstance(Instance("p", next(pids), 100 + draw(st.integers(0, 3))),
                                          slot, tagged_token))
    for _ in range(draw(st.integers(0, 1))):
        instances.append(SlotInstance(Instance("p", next(pids), 100), draw(st.sampled_from([None, -1])),
                                      draw(st.sampled_from([None, 10]))))
    hosts = draw(st.lists(st.builds(HostState, st.sampled_from(HOSTS), st.booleans(),
                                    st.booleans(), st.integers(0, 3)),
                          max_size=4, unique_by=lambda h: h.host))
    rarely = st.sampled_from([False, False, False, True])
    options = {"max_per_host": draw(st.integers(1, 3)), "paused": draw(rarely),
               "draining": draw(rarely), "may_claim": draw(st.booleans()),
               "start_margin": draw(st.sampled_from([0.0, 1.0, 5.0]))}
    return slots, holders, held, draw(st.permutations(instances)), hosts, options


def _plan(situation) -> SlotPlan:
    slots, holders, held, instances, hosts, options = situation
    return make_slot_plan("p", ME, slots=slots, holders=holders, held=held, instances=instances,
                          hosts=hosts, now=NOW, renew_period=2.0, claim_stagger=0.25, **options)


def _really_held(situation) -> dict[int, int]:
    """Independent of the code: slots Redis gives this host, with the token this guard knows
    (or any, when it knows none) and a deadline still ahead."""
    slots, holders, held, *_ = situation
    out = {}
    for slot, (host, token, _, _) in holders.items():
        own = held.get(slot)
        if host == ME and slot < slots and (own is None or (own.token == token and own.deadline > NOW)):
            out[slot] = token
    return out


@given(situations())
def test_an_instance_runs_only_for_a_slot_this_host_holds_under_its_token(situation):
    plan = _plan(situation)
    held = _really_held(situation)
    for kept in plan.keep:
        assert kept.slot in held and held[kept.slot] == kept.token
    own = situation[2]
    for slot in plan.start:
        assert slot in held and slot in own and own[slot].deadline - NOW > situation[5]["start_margin"]


@given(situations())
def test_never_two_local_instances_for_one_slot(situation):
    plan = _plan(situation)
    running = [k.slot for k in plan.keep] + list(plan.start)
    assert len(running) == len(set(running))
    assert not set(plan.start) & {t.slot for t in situation[3]}  # not even beside a stopping one


@given(situations())
def test_every_instance_is_kept_or_stopped_exactly_once(situation):
    plan = _plan(situation)
    kept = [k.instance.pid for k in plan.keep]
    stopped = [s.instance.pid for s in plan.stop]
    assert sorted(kept + stopped) == sorted(t.instance.pid for t in situation[3])


@given(situations())
def test_never_beyond_max_per_host_or_max_workers(situation):
    slots, holders, _, _, _, options = situation
    plan = _plan(situation)
    mine = sum(1 for s, h in holders.items() if h[0] == ME and s < slots)
    assert len(plan.claim) <= max(0, options["max_per_host"] - mine)
    assert len(plan.keep) + len(plan.start) <= mine
    for slot in [k.slot for k in plan.keep] + list(plan.start) + [c.slot for c in plan.claim]:
        assert slot is not None and 0 <= slot < slots
    assert len({c.slot for c in plan.claim}) == len(plan.claim)
    for claim in plan.claim:  # a claim only for a slot nobody holds, or one about to expire
        holder = holders.get(claim.slot)
        assert holder is None or (holder[0] != ME and holder[3] / 1000 < 2.0)


@given(situations())
def test_a_slot_is_given_back_only_once_no_instance_of_it_is_left(situation):
    plan = _plan(situation)
    slots_with_instances = {t.slot for t in situation[3]}
    assert not set(plan.release) & slots_with_instances
    assert not set(plan.release) & set(plan.start)


@given(situations())
def test_a_paused_or_draining_host_claims_and_starts_nothing(situation):
    plan = _plan(situation)
    options = situation[5]
    draining = options["draining"] or any(h.host == ME and h.draining for h in situation[4])
    if options["paused"]:
        assert plan.keep == () and plan.start == () and plan.claim == ()
    if draining:
        assert plan.start == () and plan.claim == ()
        assert sum(1 for s in plan.stop if s.reason == "drain") <= 1


@given(situations())
def test_a_lost_or_expired_lease_stops_its_instances(situation):
    plan = _plan(situation)
    held = _really_held(situation)
    reasons = {s.instance.pid: s.reason for s in plan.stop}
    for tagged in situation[3]:
        if tagged.slot not in held or tagged.token is None:
            assert reasons[tagged.instance.pid] in {"lost", "deadline", "unslotted"}
        elif tagged.token != held[tagged.slot]:
            assert reasons[tagged.instance.pid] == "stale"
    assert set(plan.lose) <= set(situation[2])


@given(situations())
def test_the_plan_does_not_depend_on_the_order_instances_were_found_in(situation):
    slots, holders, held, instances, hosts, options = situation
    again = (slots, holders, held, list(reversed(instances)), list(reversed(hosts)), options)
    assert _plan(again) == _plan(situation)


# examples -----------------------------------------------------------------------------
def _instance(pid: int, slot: int | None, token: int | None, tick: int = 0) -> SlotInstance:
    return SlotInstance(Instance("p", pid, 100 + tick), slot, token)


def test_a_won_slot_without_an_instance_is_started_and_renewed():
    held = {0: Held("p", 0, 7, "iid", deadline=NOW + 10)}
    plan = make_slot_plan("p", ME, slots=1, holders={0: (ME, 7, "iid", 15_000)}, held=held,
                          instances=[], hosts=[HostState(ME)], now=NOW, renew_period=2,
                          claim_stagger=0.25)
    assert (plan.start, plan.renew, plan.claim, plan.keep) == ((0,), (0,), (), ())


def test_a_vacant_slot_is_claimed_after_the_stagger_of_this_hosts_rank():
    hosts = [HostState(ME), HostState("a")]
    first = make_slot_plan("p", ME, slots=1, holders={}, held={}, instances=[], hosts=hosts,
                           now=NOW, renew_period=2, claim_stagger=0.25, patterns=["a", "me"])
    assert [(c.slot, c.delay) for c in first.claim] == [(0, 0.25)]
    top = make_slot_plan("p", "a", slots=1, holders={}, held={}, instances=[], hosts=hosts,
                         now=NOW, renew_period=2, claim_stagger=0.25, patterns=["a", "me"])
    assert [(c.slot, c.delay) for c in top.claim] == [(0, 0.0)]


def test_a_slot_held_elsewhere_is_claimed_just_after_its_lease_runs_out():
    hosts = [HostState(ME)]
    soon = make_slot_plan("p", ME, slots=1, holders={0: ("a", 3, "iid", 1_200)}, held={},
                          instances=[], hosts=hosts, now=NOW, renew_period=2, claim_stagger=0.25)
    assert [(c.slot, round(c.delay, 3)) for c in soon.claim] == [(0, 1.205)]
    later = make_slot_plan("p", ME, slots=1, holders={0: ("a", 3, "iid", 9_000)}, held={},
                           instances=[], hosts=hosts, now=NOW, renew_period=2, claim_stagger=0.25)
    assert later.claim == ()


def test_a_lost_lease_fences_its_instance_and_a_newer_grant_replaces_a_stale_one():
    lost = make_slot_plan("p", ME, slots=1, holders={0: ("a", 9, "x", 15_000)},
                          held={0: Own(7, NOW + 5)}, instances=[_instance(1, 0, 7)],
                          hosts=[], now=NOW, renew_period=2, claim_stagger=0.25)
    assert [(s.instance.pid, s.reason) for s in lost.stop] == [(1, "lost")] and lost.lose == (0,)
    stale = make_slot_plan("p", ME, slots=1, holders={0: (ME, 9, "x", 15_000)},
                           held={0: Own(9, NOW + 5)}, instances=[_instance(1, 0, 7)],
                           hosts=[], now=NOW, renew_period=2, claim_stagger=0.25)
    assert [s.reason for s in stale.stop] == ["stale"] and stale.start == ()  # not beside it
    gone = make_slot_plan("p", ME, slots=1, holders={0: (ME, 9, "x", 15_000)},
                          held={0: Own(9, NOW + 5)}, instances=[], hosts=[], now=NOW,
                          renew_period=2, claim_stagger=0.25)
    assert gone.start == (0,)


def test_a_passed_deadline_stops_the_instance_and_starts_nothing():
    plan = make_slot_plan("p", ME, slots=1, holders={0: (ME, 7, "x", 4_000)},
                          held={0: Own(7, NOW - 0.1)}, instances=[_instance(1, 0, 7)],
                          hosts=[], now=NOW, renew_period=2, claim_stagger=0.25)
    assert [s.reason for s in plan.stop] == ["deadline"] and plan.start == () and plan.renew == ()


def test_a_drain_hands_over_one_slot_at_a_time_then_releases_it():
    holders = {0: (ME, 7, "x", 15_000), 1: (ME, 8, "y", 15_000)}
    held = {0: Own(7, NOW + 9), 1: Own(8, NOW + 9)}
    both = [_instance(1, 0, 7), _instance(2, 1, 8)]
    plan = make_slot_plan("p", ME, slots=2, holders=holders, held=held, instances=both,
                          hosts=[], now=NOW, renew_period=2, claim_stagger=0.25,
                          max_per_host=2, draining=True)
    assert [(s.instance.pid, s.reason) for s in plan.stop] == [(1, "drain")]
    assert plan.release == () and [k.slot for k in plan.keep] == [1]
    after = make_slot_plan("p", ME, slots=2, holders=holders, held=held, instances=both[1:],
                           hosts=[], now=NOW, renew_period=2, claim_stagger=0.25,
                           max_per_host=2, draining=True)
    assert after.release == (0,) and [s.instance.pid for s in after.stop] == [2]


def test_after_a_restart_a_slot_redis_names_this_host_for_is_adopted_and_its_instance_kept():
    plan = make_slot_plan("p", ME, slots=1, holders={0: (ME, 7, "x", 12_000)}, held={},
                          instances=[_instance(1, 0, 7)], hosts=[], now=NOW, renew_period=2,
                          claim_stagger=0.25)
    assert plan.adopt == (0,) and [k.instance.pid for k in plan.keep] == [1] and plan.stop == ()
    assert plan.start == ()  # no deadline known yet: nothing starts before a renewal


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="max_per_host"):
        make_slot_plan("p", ME, slots=1, holders={}, held={}, instances=[], hosts=[], now=NOW,
                       renew_period=2, claim_stagger=0.25, max_per_host=0)
