"""The config agreement of a cluster profile (FLEET design 2.9): the pure decision
(``policy.spec_agreement``), the spec record and its compare-and-set against a real Redis
(``store.cluster_spec``, the claim script), the slot plan's one-at-a-time replacement of
an outdated instance, and two cluster loops (two host ids, one Redis, no Celery) that
disagree, then agree: the mismatched host claims nothing and says so (log, event, hook),
the spec moves only once every live host runs the new definition and, when N shrinks,
only once the slots beyond the new N are vacant."""

from __future__ import annotations

import uuid

import pytest
import redis

from tests.cluster_bed import no_holdoff
from tests.conftest import Workspace
from tests.support import ProcessTracker, RedisServer, short_tmpdir
from workerguard.cli.fleet import host_lines
from workerguard.policy.cluster_view import host_views
from workerguard.policy.hooks import GuardHooks
from workerguard.policy.slot_plan import SlotInstance, make_slot_plan
from workerguard.policy.spec_agreement import Agreement, agree, counted_hosts, mismatched_hosts
from workerguard.store import keys
from workerguard.store.cluster_spec import Spec, move_spec, profile_spec, read_spec
from workerguard.store.events import EventFilter, latest
from workerguard.store.host_records import HostRecord, HostRecords
from workerguard.store.lease import LeaseStore, observe_epoch
from workerguard.store.leases import Held
from workerguard.workers.model import Instance

OLD = Spec("old", 2, 3000)
NEW = Spec("new", 1, 3000)
ID = "run:replid"


def record(host: str, **fingerprints: str) -> HostRecord:
    return HostRecord(host=host, machine="m-" + host, boot="b", version="v",
                      fingerprints=fingerprints)


# the pure decision ---------------------------------------------------------------------
def test_the_spec_moves_only_when_every_live_eligible_host_reports_the_new_definition():
    assert agree(None, NEW, {"a": "new"}).standing == "unset"
    assert agree(OLD, OLD, {"a": "old", "b": "new"}) == Agreement("match", False, ("b",))
    assert agree(OLD, OLD, {"a": "old"}).standing == "match"
    half = agree(OLD, NEW, {"a": "old", "b": "new"})
    assert (half.standing, half.move, half.holding_back) == ("mismatch", False, ("a",))
    third = agree(OLD, NEW, {"a": "other", "b": "new"})
    assert not third.move and third.holding_back == ("a",)
    everyone = agree(OLD, NEW, {"a": "new", "b": "new"})
    assert (everyone.standing, everyone.move) == ("mismatch", True)
    assert not agree(OLD, NEW, {}).move  # nobody reports anything: nothing to agree on


def test_draining_departed_foreign_and_unrelated_hosts_do_not_hold_a_move_back():
    live = {"a": record("a", demo="old"), "b": record("b", demo="new"),
            "c": record("c", other="x"), "web-1": record("web-1", demo="old")}
    assert counted_hosts("demo", live, set(), ["a", "b"]) == {"a": "old", "b": "new"}
    assert counted_hosts("demo", live, {"a"}, ["a", "b"]) == {"b": "new"}
    assert agree(OLD, NEW, counted_hosts("demo", live, {"a"}, ["a", "b"])).move
    assert counted_hosts("demo", live, set()) == {"a": "old", "b": "new", "web-1": "old"}
    assert mismatched_hosts(OLD, "demo", live) == ("b",)
    assert mismatched_hosts(None, "demo", live) == ()


def test_the_fingerprint_covers_the_command_max_workers_and_the_lease(workspace: Workspace):
    workspace.profiles["demo"] = workspace.sleeper_profile(scope="cluster", max_workers=2)
    del workspace.profiles["demo"]["match"]
    base = workspace.config().profiles["demo"]
    same = profile_spec(base, 15.0)
    assert same == profile_spec(base, 15.0) and same.max_workers == 2 and same.lease_ms == 15000
    changed = {profile_spec(base.model_copy(update={"command": [*base.command, "--reap"]}), 15.0),
               profile_spec(base.model_copy(update={"max_workers": 3, "min_workers": 3}), 15.0),
               profile_spec(base, 20.0)}
    assert same not in changed and len({s.fp for s in changed}) == 3
    assert Spec.decode(same.encode()) == same
    assert Spec.decode(b"0123abcd") == Spec("0123abcd", 0, 0)  # an older guard's record


# the spec record in Redis --------------------------------------------------------------
def test_the_compare_and_set_moves_only_from_the_value_read_and_after_the_extra_slots_empty(
        redis_client: redis.Redis):
    assert read_spec(redis_client, "demo") == (None, "")
    redis_client.set(keys.cluster_spec("demo"), OLD.encode())
    spec, raw = read_spec(redis_client, "demo")
    assert spec == OLD
    assert move_spec(redis_client, "demo", "stale", NEW, 2) == "changed"
    redis_client.set(keys.cluster_slot("demo", 1), "h|1|i", px=60_000)
    assert move_spec(redis_client, "demo", raw, NEW, 2) == "held"  # N 2 -> 1: slot 1 held
    assert read_spec(redis_client, "demo")[0] == OLD
    redis_client.delete(keys.cluster_slot("demo", 1))
    assert move_spec(redis_client, "demo", raw, NEW, 2) == "moved"
    assert read_spec(redis_client, "demo")[0] == NEW
    assert move_spec(redis_client, "demo", raw, OLD, 2) == "changed"  # a late racer loses


def test_hosts_flags_each_live_host_that_runs_another_definition_than_the_spec(
        redis_client: redis.Redis):
    """``workerguard hosts`` (``host_views``) names what ``status --cluster`` calls
    spec_mismatch, per host, from the published fingerprints alone (no config)."""
    redis_client.delete(keys.HOSTS, keys.DRAINING)
    records = HostRecords(redis_client)
    records.publish(record("a", demo="old", other="x"), 30)
    records.publish(record("b", demo="new", other="x"), 30)
    records.publish(record("c", demo="new"), 30)
    assert all(v.flags == () for v in host_views(redis_client))  # no spec yet: nothing to differ from
    redis_client.set(keys.cluster_spec("demo"), OLD.encode())
    flags = {v.host: v.flags for v in host_views(redis_client)}
    expected = ("runs another definition of demo than the fleet's spec (claims nothing for it)",)
    assert flags == {"a": (), "b": expected, "c": expected}
    table = "\n".join(host_lines(host_views(redis_client)))
    assert "b " in table and expected[0] in table
    redis_client.set(keys.cluster_spec("other"), Spec("y", 1, 3000).encode())
    both = {v.host: v.flags for v in host_views(redis_client)}["b"]
    assert both == ("runs another definition of demo, other than the fleet's spec (claims "
                    "nothing for it)",)


def test_the_first_claim_writes_the_whole_spec_and_a_claim_checks_its_fingerprint(
        redis_client: redis.Redis):
    store = LeaseStore(redis_client, "demo", 2)
    observe_epoch(redis_client, ID)

    def claim(host: str, spec: Spec) -> str:
        grant = store.claim(host, spec.fp, uuid.uuid4().hex, max_per_host=1, lease_ms=60_000,
                            holdoff_ms=0, identity=ID, spec=spec.encode())
        return grant.result if grant.result == "won" else grant.reason

    assert claim("a", OLD) == "won"
    assert read_spec(redis_client, "demo")[0] == OLD
    assert claim("b", NEW) == "spec_mismatch"
    assert claim("b", OLD) == "won"
    redis_client.set(keys.cluster_spec("demo"), "new")  # an older guard's bare fingerprint
    store.release(0, bytes(redis_client.get(keys.cluster_slot("demo", 0))).decode())  # type: ignore[arg-type]
    assert claim("c", OLD) == "spec_mismatch"
    assert claim("c", NEW) == "won"


# the slot plan -------------------------------------------------------------------------
def _slots(instances: list[SlotInstance], replace: bool, held_slots: int = 2):
    holders = {s: ("me", 10 + s, "iid", 5000) for s in range(held_slots)}
    held = {s: Held("p", s, 10 + s, "iid", 100.0) for s in range(held_slots)}
    return make_slot_plan("p", "me", slots=2, holders=holders, held=held, instances=instances,
                          hosts=[], now=0.0, renew_period=0.5, claim_stagger=0.1,
                          max_per_host=2, may_claim=False, replace_outdated=replace)


def test_after_the_spec_moved_an_outdated_instance_is_replaced_in_its_slot_one_at_a_time():
    old0 = SlotInstance(Instance("p", 1, 100, outdated=True), 0, 10)
    old1 = SlotInstance(Instance("p", 2, 100, outdated=True), 1, 11)
    new1 = SlotInstance(Instance("p", 3, 100), 1, 11)
    assert not _slots([old0, old1], replace=False).stop  # the fleet has not agreed yet
    plan = _slots([old0, old1], replace=True)
    assert [(s.instance.pid, s.reason) for s in plan.stop] == [(1, "outdated")]
    assert plan.start == (0,) and [k.instance.pid for k in plan.keep] == [2]
    after = _slots([SlotInstance(Instance("p", 4, 100), 0, 10), old1], replace=True)
    assert [(s.instance.pid, s.reason) for s in after.stop] == [(2, "outdated")]
    assert after.start == (1,)
    assert _slots([old0], replace=True).start == (1,)  # a slot starting: no replacement yet
    assert not _slots([old0], replace=True).stop
    assert _slots([SlotInstance(Instance("p", 4, 100), 0, 10), new1], replace=True).is_noop


# two cluster loops ---------------------------------------------------------------------
class Seen(GuardHooks):
    def __init__(self) -> None:
        self.mismatch: dict[str, bool] = {}

    def spec_mismatch(self, profile: str, mismatched: bool) -> None:
        self.mismatch[profile] = mismatched


def _loop(redis_server: RedisServer, tracker: ProcessTracker, host: str, *extra: str,
          max_workers: int) -> tuple[object, Seen, list[tuple[str, str]]]:
    from workerguard.ops.cluster_loop import ClusterLoop
    from workerguard.store.events import EventLog

    space = Workspace(redis_url=redis_server.url, home=short_tmpdir(), tracker=tracker,
                      host_id=host)
    body = space.sleeper_profile(*extra, scope="cluster", max_workers=max_workers)
    del body["match"]
    body["command"][3] = "shared-tag"  # one definition across the two workspaces
    space.profiles["demo"] = body
    space.cluster = {"lease_seconds": 3.0, "renew_deadline": 2.0, "renew_period": 0.5,
                     "kill_budget": 0.5}
    heals: list[tuple[str, str]] = []
    seen = Seen()
    client = redis_server.client()
    loop = ClusterLoop(space.config(), client, lambda p, why: heals.append((p, why)),
                       events=EventLog(client, host), hooks=[seen])
    return loop, seen, heals


@pytest.mark.parametrize("shrink", [False, True])
def test_a_mismatched_host_claims_nothing_until_every_live_host_runs_its_definition(
        redis_server: RedisServer, redis_client: redis.Redis, tracker: ProcessTracker,
        shrink: bool, caplog: pytest.LogCaptureFixture):
    old_a, seen_a, _ = _loop(redis_server, tracker, "a", max_workers=2)
    new_n = 1 if shrink else 2
    new_b, seen_b, heals_b = _loop(redis_server, tracker, "b", "--reap", max_workers=new_n)
    old_spec = old_a.specs["demo"]  # type: ignore[attr-defined]
    new_spec = new_b.specs["demo"]  # type: ignore[attr-defined]
    redis_client.set(keys.cluster_spec("demo"), old_spec.encode())  # as the first claim left it
    no_holdoff(redis_client)
    old_a.round()  # type: ignore[attr-defined]
    new_b.round()  # type: ignore[attr-defined]
    assert seen_a.mismatch == {"demo": False} and seen_b.mismatch == {"demo": True}
    assert old_a._state.due or old_a.leases.all_held()  # type: ignore[attr-defined]
    assert new_b._state.due == {} and not new_b.leases.all_held()  # type: ignore[attr-defined]
    assert read_spec(redis_client, "demo")[0] == old_spec
    [(_, event)] = latest(redis_client, 1, EventFilter(profile="demo", host="b"))
    assert event["action"] == "spec_mismatch"
    assert "differs from the fleet's spec" in caplog.text

    new_a, seen_a2, _heals = _loop(redis_server, tracker, "a", "--reap", max_workers=new_n)
    if shrink:  # slot 1 is still held: N shrinks only once it is vacant
        redis_client.set(keys.cluster_slot("demo", 1), "a|7|iid", px=60_000)
    new_a.round()  # type: ignore[attr-defined]
    if shrink:
        assert read_spec(redis_client, "demo")[0] == old_spec
        redis_client.delete(keys.cluster_slot("demo", 1))
        new_a.round()  # type: ignore[attr-defined]
    assert read_spec(redis_client, "demo")[0] == new_spec
    assert seen_a2.mismatch == {"demo": False}
    new_b.round()  # type: ignore[attr-defined]
    assert seen_b.mismatch == {"demo": False}
    assert ("demo", "spec changed") in heals_b  # the holders replace the old definition
    actions = [f["action"] for _, f in latest(redis_client, 10, EventFilter(profile="demo"))]
    assert "spec_changed" in actions
