"""Cluster profiles end to end on one machine: two real guard workers with their own host
ids, runtime dirs and queues share one Redis and one ``scope = "cluster"`` profile of
``max_workers = 1``. Exactly one instance runs across both, behind its leash, with its
fencing token; the holder's guard SIGKILLed, its leash fences the instance by the renew
deadline and the other host takes the slot with a greater token, never two at once
(sampled every 20 ms); ``stop`` from either host stops it fleet-wide and ``ensure``
brings it back. Test timings: L 3 s, D 2 s, P 0.5 s, K 0.5 s (inequality I holds with a
margin of 0.45 s)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any, cast

import psutil
import pytest

from tests import test_primary_watch
from tests.cluster_bed import TIMINGS, Instance, instances, sampling, two_hosts
from tests.support import ProcessTracker, RedisServer, cli_env, poll_for, run_cli
from tests.test_primary_watch import needs_faketime
from workerguard.ops.primary_watch import boottime
from workerguard.workers.leashed import lease_dir, read_deadline

faked_redis = test_primary_watch.faked_redis
"""A redis-server whose clock follows a file (libfaketime)."""


@pytest.mark.celery
def test_one_instance_across_two_hosts_moves_when_its_guard_dies_never_two(fleet):
    first, second = fleet
    tag = first.tag
    with sampling(tag).running() as sampler:
        first.start_worker()
        second.start_worker()
        [running] = poll_for(lambda: instances(tag), timeout=60,
                             message="the cluster profile's one instance")
        holder, other = (first, second) if running.host == first.workspace.host_id else (second, first)
        assert running.host == holder.workspace.host_id and running.token > 0

        holder.worker.kill()  # the holder's guard dies: no more renewals
        holder.worker.wait(30)
        poll_for(lambda: not psutil.pid_exists(running.pid)
                 or psutil.Process(running.pid).status() == psutil.STATUS_ZOMBIE,
                 timeout=30, message="the leash to fence the instance of the dead guard")
        [moved] = poll_for(lambda: instances(tag), timeout=60,
                           message="the other host to take the slot")
        assert moved.host == other.workspace.host_id
        assert moved.token > running.token  # a new grant: a greater fencing token
    assert sampler.most == 1, f"{sampler.most} instances of a max_workers=1 cluster profile"
    assert sampler.samples > 20


@pytest.mark.celery
def test_stop_from_any_host_stops_it_everywhere_and_ensure_brings_it_back(fleet):
    first, second = fleet
    tag = first.tag
    first.start_worker()
    second.start_worker()
    [running] = poll_for(lambda: instances(tag), timeout=60, message="the one instance")
    asker = second if running.host == first.workspace.host_id else first
    stopped = asker.call("workerguard.stop_all", "demo")
    assert stopped.state == "SUCCESS", stopped.result
    poll_for(lambda: not instances(tag), timeout=30, message="the instance to stop everywhere")
    ensured = asker.call("workerguard.ensure", "demo")
    assert ensured.state == "SUCCESS", ensured.result
    try:
        [back] = poll_for(lambda: instances(tag), timeout=60, message="the instance to come back")
    except AssertionError:
        for harness in fleet:
            print(harness.workspace.host_id, harness.log_tail(20000))
        raise
    assert back.token > running.token


@pytest.mark.celery
def test_a_guard_restarted_within_the_renew_deadline_keeps_its_instance(workspace, harness):
    """FLEET check F8: the holder's guard worker SIGKILLed and started again well within
    D - P: the new guard takes its slot back (Redis names this host), renews it, and its
    startup sweep keeps the instance it finds under that slot's token: same pid, never a
    gap, never a second one."""
    body = workspace.sleeper_profile(scope="cluster", max_workers=1, lease_seconds=30.0,
                                     renew_deadline=20.0)
    del body["match"]  # adopted processes cannot be leashed
    workspace.profiles["demo"] = body
    workspace.cluster = dict(TIMINGS)
    workspace.guard_settings["sweep_on_start"] = True
    with sampling(workspace.token).running() as sampler:
        harness.start_worker()
        [running] = poll_for(lambda: instances(workspace.token), timeout=60,
                             message="the cluster instance")
        harness.worker.kill()
        harness.worker.wait(30)
        killed = boottime()
        harness.start_worker()
        lease_file = lease_dir(workspace.config().settings.runtime_dir, workspace.host_id) / "demo.0.lease"
        poll_for(lambda: read_deadline(lease_file) > killed + 20.0, timeout=60,
                 message="the restarted guard to renew the slot it holds")
        assert harness.call("workerguard.heal", "demo").state == "SUCCESS"  # a converge, too
        assert [(i.pid, i.token) for i in instances(workspace.token)] == [(running.pid, running.token)]
    assert sampler.most == 1
    assert "the leash fenced it" not in harness.log_tail(1_000_000)


CLOCK_STEPS = 5
"""FLEET check R4's rounds: the Redis clock steps 30 s ahead five times, one after the other."""


@needs_faketime
@pytest.mark.celery
def test_a_redis_clock_step_fences_the_holder_and_no_slot_is_claimed_in_the_hold_off(
        tracker: ProcessTracker, faked_redis: tuple[RedisServer, Path]):
    """FLEET check R4, five rounds: the Redis server's clock steps 30 s ahead (libfaketime):
    every lease expires at once on the Redis clock; the holder finds its lease gone at its
    next renewal and fences at once; the step is seen and no guard claims for the hold-off
    (H = L + 1 s); then the slot is granted again, with a greater token, within P + H + 1 s
    of the step; never two at once."""
    server, stamp = faked_redis
    period = TIMINGS["renew_period"]
    holdoff = TIMINGS["lease_seconds"] + 1.0
    rounds: list[tuple[float, float]] = []
    with two_hosts(server, tracker) as fleet:
        tag = fleet[0].tag  # type: ignore[attr-defined]
        with sampling(tag).running() as sampler:
            for harness in fleet:
                harness.start_worker()
            [before] = poll_for(lambda: instances(tag), timeout=60, message="the instance")
            tokens = [before.token]
            for number in range(1, CLOCK_STEPS + 1):
                stamp.write_text(f"+{30 * number}\n")
                stepped = time.monotonic()
                poll_for(lambda b=before: all(i.pid != b.pid for i in instances(tag)),  # type: ignore[misc]
                         timeout=30, message=f"step {number}: the holder to fence its instance")
                fenced = time.monotonic() - stepped
                [after] = poll_for(lambda: instances(tag), timeout=60,
                                   message=f"step {number}: the slot to be granted again")
                again = time.monotonic() - stepped
                rounds.append((fenced, again))
                assert after.token > before.token, (number, before, after)
                assert again >= holdoff - 0.1, f"step {number}: a claim inside the hold-off"
                tokens.append(after.token)
                before = after
        logs = "".join(h.log_tail(1_000_000) for h in fleet)
    print(f"\nR4: {CLOCK_STEPS} Redis clock steps of +30 s: the holder's instance gone, the "
          "slot's next instance running after "
          + "; ".join(f"{f:.2f}, {a:.2f} s" for f, a in rounds)
          + f" (hold-off {holdoff:g} s, bound P + H + 1 = {period + holdoff + 1:g} s); at most "
          f"{sampler.most} running in {sampler.samples} samples; tokens {tokens}")
    assert sampler.most == 1
    assert logs.count("the Redis clock jumped") >= CLOCK_STEPS, logs[-8000:]
    for fenced, again in rounds:
        # the fence comes at the holder's next renewal (P); the bound leaves a kill budget
        # and the process-table poll of a loaded machine on top
        assert fenced <= period + TIMINGS["kill_budget"] + 1.0, rounds
        assert again <= period + holdoff + 1.0, rounds


@pytest.mark.celery
def test_at_least_keeps_a_cut_off_holder_running_and_the_older_grant_stops_after(
        redis_server: RedisServer, tracker: ProcessTracker):
    """FLEET check F11 on one machine: ``guarantee = "at_least"``, the holder's guard frozen
    (SIGSTOP) for twice the lease: its instance has no leash and keeps running, the other
    host takes the slot after the lease and starts one too (never more than N + 1); thawed,
    the old holder learns its lease is lost and stops its instance, the lower token."""
    with two_hosts(redis_server, tracker, guarantee="at_least") as fleet:
        tag = fleet[0].tag  # type: ignore[attr-defined]
        with sampling(tag).running() as sampler:
            for harness in fleet:
                harness.start_worker()
            [old] = poll_for(lambda: instances(tag), timeout=60, message="the instance")
            holder = next(h for h in fleet if h.workspace.host_id == old.host)
            holder.worker.send_signal(signal.SIGSTOP)
            try:
                both = poll_for(lambda: _exactly(2, instances(tag)), timeout=60,
                                message="the other host to start its own beside the cut-off one")
            finally:
                holder.worker.send_signal(signal.SIGCONT)
            assert {i.pid for i in both} >= {old.pid}  # the cut-off one kept running
            [new] = [i for i in both if i.pid != old.pid]
            assert new.token > old.token and new.host != old.host
            poll_for(lambda: [i.pid for i in instances(tag)] == [new.pid], timeout=60,
                     message="the lower token's instance to stop once its guard is back")
        assert sampler.most <= 2  # N + 1 at most (the overlap itself was seen above)


def _exactly(count: int, found: list[Instance]) -> list[Instance]:
    return found if len(found) == count else []


@pytest.mark.celery
@pytest.mark.slow  # ~40 s: slot 1's lease runs out (L) before the spec may move
def test_a_shrink_rolls_out_only_once_the_slots_beyond_the_new_n_are_vacant(
        redis_server: RedisServer, tracker: ProcessTracker):
    """FLEET 2.9, a shrink by rollout: two guards hold the two slots of N = 2 (one per
    host). The holder of slot 1 restarts with N = 1: it no longer renews slot 1 and stops
    its instance, claims nothing (mismatched: the spec still says 2) while slot 0's
    instance keeps running. The holder of slot 0 restarts with N = 1 within the renew
    deadline: its instance keeps running (same pid and token), and the spec moves to N = 1
    once slot 1's lease ran out. Never more than 2 at once before, 1 after."""
    from tests.test_fleet_ops import as_json

    timing = {"lease_seconds": 12.0, "renew_deadline": 8.0}  # a restart keeps the instance
    with two_hosts(redis_server, tracker, max_workers=2, max_per_host=1, **timing) as fleet:
        tag = fleet[0].tag  # type: ignore[attr-defined]
        config = fleet[0].workspace.config_path

        def demo() -> dict[str, Any]:
            return cast(dict[str, Any], as_json(config, "status", "--cluster")["profiles"]["demo"])

        with sampling(tag).running() as before:
            for harness in fleet:
                harness.start_worker()
            both = poll_for(lambda: _exactly(2, instances(tag)), timeout=60,
                            message="an instance in each of the two slots")
            slot = {i.slot: i for i in both}
            assert sorted(slot) == [0, 1] and slot[0].host != slot[1].host
            keeper = next(h for h in fleet if h.workspace.host_id == slot[0].host)
            leaver = next(h for h in fleet if h is not keeper)
            poll_for(lambda: demo()["spec"], timeout=30, message="the first claim's spec record")

            for harness in fleet:
                harness.workspace.profiles["demo"]["max_workers"] = 1
            leaver.worker.kill()
            leaver.worker.wait(30)
            leaver.start_worker()
            poll_for(lambda: [(i.pid, i.token) for i in instances(tag)]
                     == [(slot[0].pid, slot[0].token)], timeout=60,
                     message="slot 1's instance to stop, slot 0's to keep running")
            mismatched = poll_for(lambda: (v := demo())["spec_mismatch"] and v, timeout=30,
                                  message="status --cluster to name the mismatched host")
            assert mismatched["spec_mismatch"] == [leaver.workspace.host_id]
            assert mismatched["spec"]["max_workers"] == 2  # not agreed yet

            keeper.worker.kill()
            keeper.worker.wait(30)
            keeper.start_worker()
            moved = poll_for(lambda: (v := demo())["spec"]["max_workers"] == 1
                             and not v["spec_mismatch"] and v, timeout=60,
                             message="the spec to move to N = 1")
        assert moved and [s["slot"] for s in moved["slots"]] == [0]
        with sampling(tag).running() as after:
            poll_for(lambda: after.samples >= 25, timeout=30, message="samples after the move")
            assert [(i.pid, i.token) for i in instances(tag)] == [(slot[0].pid, slot[0].token)]
        assert before.most <= 2 and after.most == 1, (before.most, after.most)
        assert "spec moves to it" in "".join(h.log_tail(1_000_000) for h in fleet)


@pytest.mark.celery
def test_a_changed_definition_rolls_out_only_once_every_host_runs_it_never_two_at_once(
        redis_server: RedisServer, tracker: ProcessTracker):
    """FLEET 2.9, config agreement: two guards run a singleton; the host that does not hold
    it restarts with a changed command and claims nothing (``status --cluster`` names it:
    spec_mismatch) while the old instance keeps running; the holder restarts with the same
    new definition within the renew deadline: the spec moves to it and the holder replaces
    its old-command instance in the same slot (same grant); never two at once."""
    from tests.test_fleet_ops import as_json

    timing = {"lease_seconds": 30.0, "renew_deadline": 20.0}  # a restart keeps the instance
    with two_hosts(redis_server, tracker, **timing) as fleet:
        tag = fleet[0].tag  # type: ignore[attr-defined]
        config = fleet[0].workspace.config_path
        with sampling(tag).running() as sampler:
            for harness in fleet:
                harness.start_worker()
            [old] = poll_for(lambda: instances(tag), timeout=60, message="the singleton")
            holder = next(h for h in fleet if h.workspace.host_id == old.host)
            other = next(h for h in fleet if h is not holder)
            poll_for(lambda: as_json(config, "status", "--cluster")["profiles"]["demo"]["spec"],
                     timeout=30, message="the first claim's spec record")

            for harness in (other, holder):
                harness.workspace.profiles["demo"]["command"] += ["--chatter", "0"]
            other.worker.kill()
            other.worker.wait(30)
            other.start_worker()
            view = poll_for(lambda: (v := as_json(config, "status", "--cluster")["profiles"]
                                     ["demo"])["spec_mismatch"] and v, timeout=30,
                            message="status --cluster to name the mismatched host")
            assert view["spec_mismatch"] == [other.workspace.host_id]
            plain = run_cli("status", "--cluster", "--config", str(config), env=cli_env())
            assert f"spec_mismatch: {other.workspace.host_id}" in plain.stdout, plain.stdout
            poll_for(lambda: "differs from the fleet's spec" in other.log_tail(1_000_000),
                     timeout=30, message="the mismatched guard to say so")
            assert [(i.pid, i.token) for i in instances(tag)] == [(old.pid, old.token)]

            holder.worker.kill()
            holder.worker.wait(30)
            holder.start_worker()
            try:
                [new] = poll_for(lambda: [i for i in instances(tag) if "--chatter" in i.argv],
                                 timeout=60, message="the singleton to run the new command")
            except AssertionError:
                for harness in fleet:
                    print(harness.workspace.host_id, harness.log_tail(20000))
                raise
            poll_for(lambda: not as_json(config, "status", "--cluster")["profiles"]["demo"]
                     ["spec_mismatch"], timeout=30, message="the fleet to agree")
            assert [i.pid for i in instances(tag)] == [new.pid]
        assert new.pid != old.pid
        assert (new.host, new.token) == (old.host, old.token)  # replaced under the same grant
        assert sampler.most == 1, f"{sampler.most} instances of a max_workers=1 cluster profile"
        assert "spec moves to it" in "".join(h.log_tail(1_000_000) for h in fleet)
