"""Properties of cluster placement (policy.placement) over generated fleets: every guard
computes the same ranking, no host gets more than max_per_host, drained and cooling hosts
are never chosen, held slots never move, and a lower rank waits longer."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workerguard.policy.placement import (
    HostState,
    claim_delay,
    place,
    position,
    preference,
    stable_hash,
)

NAMES = [f"h{i}" for i in range(8)] + ["scrape-01", "scrape-02", "gpu-1"]
host_states = st.lists(
    st.builds(HostState, st.sampled_from(NAMES), st.booleans(), st.booleans(), st.integers(0, 5)),
    max_size=10, unique_by=lambda h: h.host)
patterns = st.lists(st.sampled_from(["h[0-3]", "h*", "scrape-0?", "gpu-*", "*", "nomatch"]),
                    max_size=3)


@st.composite
def fleets(draw):
    """(hosts, slots, held, patterns, max_per_host) for one profile."""
    hosts = draw(host_states)
    slots = draw(st.integers(1, 8))
    holders = st.sampled_from([h.host for h in hosts] + ["gone-host"])
    held = draw(st.dictionaries(st.integers(0, slots - 1), holders, max_size=slots))
    return hosts, slots, held, draw(patterns), draw(st.integers(1, 3))


def _place(fleet, profile="p"):
    hosts, slots, held, pats, mph = fleet
    return place(profile, range(slots), hosts, held, patterns=pats, max_per_host=mph)


@given(fleets())
def test_first_choices_never_put_more_than_max_per_host_on_a_host(fleet):
    hosts, _, held, _, mph = fleet
    ranking = _place(fleet)
    already = Counter(held.values())
    planned = already + Counter(r[0] for r in ranking.values() if r)
    assert all(planned[h.host] <= max(mph, already[h.host]) for h in hosts)
    for ranked in ranking.values():  # a host already at its limit is never ranked
        assert all(already[name] < mph for name in ranked)


@given(fleets())
def test_drained_cooling_and_unmatched_hosts_are_never_chosen(fleet):
    hosts, _, _, pats, _ = fleet
    ranked = {name for r in _place(fleet).values() for name in r}
    states = {h.host: h for h in hosts}
    for name in ranked:
        assert not states[name].draining and not states[name].cooldown
        assert preference(pats, name) is not None


@given(fleets())
def test_held_slots_stay_where_they_are(fleet):
    _, slots, held, _, _ = fleet
    assert set(_place(fleet)) == set(range(slots)) - set(held)


@given(fleets(), st.randoms(use_true_random=False))
def test_every_guard_computes_the_same_ranking_whatever_order_it_read_the_fleet_in(fleet, rnd):
    hosts, slots, held, pats, mph = fleet
    shuffled_hosts = list(hosts)
    rnd.shuffle(shuffled_hosts)
    shuffled_held = dict(rnd.sample(sorted(held.items()), len(held)))
    vacant = list(range(slots))
    rnd.shuffle(vacant)
    again = place("p", vacant, shuffled_hosts, shuffled_held, patterns=pats, max_per_host=mph)
    assert again == _place(fleet)


@given(fleets())
def test_preferred_patterns_rank_first(fleet):
    _, _, _, pats, _ = fleet
    for ranked in _place(fleet).values():
        order = [preference(pats, name) for name in ranked]
        assert order == sorted(order)  # type: ignore[type-var]


@given(st.integers(0, 20), st.floats(0.001, 5))
def test_the_stagger_grows_with_rank(pos, stagger):
    assert claim_delay(pos, stagger) < claim_delay(pos + 1, stagger)
    assert claim_delay(0, stagger) == 0


def test_the_hash_is_the_same_in_every_process():
    """Python's hash() is salted per process; guards on different hosts must agree."""
    code = "from workerguard.policy.placement import stable_hash; print(stable_hash('s', 1, 'h'))"
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout for _ in range(2)}
    assert runs == {f"{stable_hash('s', 1, 'h')}\n"}


def test_example_preference_then_spread_then_one_per_host():
    hosts = [HostState("scrape-01", cluster_slots=3), HostState("scrape-02"),
             HostState("scrape-03"), HostState("other")]
    ranking = place("scraper", [0, 1], hosts, {}, patterns=["scrape-01", "scrape-0[2-5]"])
    assert ranking[0] == ("scrape-01", *sorted(
        ["scrape-02", "scrape-03"], key=lambda h: stable_hash("scraper", 0, h)))
    assert ranking[1][0] in {"scrape-02", "scrape-03"} and "scrape-01" not in ranking[1]
    assert position(ranking[0], "scrape-01") == 0
    assert position(ranking[0], "other") is None


def test_a_crashed_holders_slot_goes_elsewhere_and_a_returning_host_takes_nothing_back():
    hosts = [HostState("a"), HostState("b")]
    assert place("p", [0], hosts, {}, patterns=["a", "b"])[0] == ("a", "b")
    assert place("p", [0], [HostState("b")], {}, patterns=["a", "b"])[0] == ("b",)
    assert place("p", [0], hosts, {0: "b"}, patterns=["a", "b"]) == {}  # no failback


def test_spread_prefers_the_host_with_fewer_cluster_slots():
    busy, idle = HostState("a", cluster_slots=4), HostState("b", cluster_slots=0)
    assert place("p", [0], [busy, idle], {})[0] == ("b", "a")


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="max_per_host"):
        place("p", [0], [], {}, max_per_host=0)
    with pytest.raises(ValueError, match="position"):
        claim_delay(-1, 0.25)


def test_the_spread_of_many_profiles_is_even():
    hosts = [HostState(f"h{i}") for i in range(4)]
    firsts = Counter(place(f"p{n}", [0], hosts, {})[0][0] for n in range(400))
    assert min(firsts.values()) > 50, firsts
