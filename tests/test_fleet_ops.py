"""Operations of cluster profiles from the command line, read from Redis only:
``status --cluster`` and ``hosts`` (with ``--drain``), against two real guard workers
sharing one Redis (``tests.cluster_bed``). A drained holder hands its slot over: its
instance stops, the other host's starts with a greater token, never two at once in
samples every 20 ms; the drained host claims nothing more."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.cluster_bed import instances, sampling
from tests.conftest import CeleryHarness, Workspace
from tests.support import cli_env, poll_for, run_cli


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "--config", str(config), env=cli_env())


def as_json(config: Path, *args: str) -> Any:
    done = cli(config, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def slot0(config: Path) -> Any:
    return as_json(config, "status", "--cluster")["profiles"]["demo"]["slots"][0]


def cluster_workspace(workspace: Workspace) -> Path:
    body = workspace.sleeper_profile(scope="cluster", max_workers=2)
    del body["match"]
    workspace.profiles["demo"] = body
    workspace.add_profile("local")
    return workspace.write_config()


def test_status_cluster_without_a_guard_says_why_each_slot_is_vacant(workspace: Workspace,
                                                                     redis_client):
    config = cluster_workspace(workspace)
    view = as_json(config, "status", "--cluster", "demo")["profiles"]["demo"]
    assert view["running_total"] == 0 and view["max_workers"] == 2
    assert [s["state"] for s in view["slots"]] == ["vacant: no live guard runs this profile"] * 2
    redis_client.set("workerguard:cluster:demo:paused", "1")
    plain = cli(config, "status", "--cluster")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.splitlines()[0].startswith("demo   cluster   0 of 2 held")
    assert plain.stdout.count("paused") == 3  # the head and each slot
    hosts = as_json(config, "hosts")
    assert hosts == {"hosts": []}


def test_fleet_commands_refuse_bad_input_in_one_line(workspace: Workspace, redis_client):
    config = cluster_workspace(workspace)
    for args, needle in [(("status", "--cluster", "local"), "is not a cluster profile"),
                         (("status", "--cluster", "nope"), "unknown profile 'nope'"),
                         (("hosts", "--drain", "nobody"), "has never been seen"),
                         (("hosts", "--drain", "a", "--undrain", "b"), "exclude each other")]:
        done = cli(config, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert done.stderr.count("\n") == 1 and needle in done.stderr, done.stderr
    workspace.profiles.pop("demo")
    done = cli(workspace.write_config(), "status", "--cluster")
    assert done.returncode == 2 and "no cluster profile" in done.stderr


def test_fleet_commands_name_an_unreachable_redis(workspace: Workspace):
    config = cluster_workspace(workspace)
    workspace.redis_url = "redis://127.0.0.1:9/0"  # discard: nothing listens
    config = workspace.write_config()
    for args in (("status", "--cluster"), ("hosts",), ("hosts", "--undrain", "x")):
        done = cli(config, *args)
        assert done.returncode == 1, done
        assert done.stderr.startswith("error: redis unreachable at redis://127.0.0.1:9/0"), done.stderr


def test_hosts_shows_each_clock_offset_and_forgets_only_a_departed_host(workspace: Workspace,
                                                                       redis_client):
    from workerguard.store.host_records import HostRecord, HostRecords

    config = cluster_workspace(workspace)
    slow, gone = f"slow-{workspace.host_id}", f"gone-{workspace.host_id}"
    HostRecords(redis_client, wall_clock=lambda: time.time() + 5).publish(  # 5 s fast
        HostRecord(host=slow, machine="m-1", boot="b", version="9.9"), 60)
    HostRecords(redis_client).publish(HostRecord(host=gone, machine="m-2", boot="b",
                                                 version="9.9"), 0.2)
    assert cli(config, "hosts", "--drain", gone).returncode == 0

    def departed() -> dict[str, Any]:
        found = {v["host"]: v for v in as_json(config, "hosts")["hosts"]}
        return {} if found[gone]["live"] else found

    listed = poll_for(departed, timeout=10, message="the record to expire")
    assert listed[slow]["clock_offset"] == pytest.approx(-5, abs=0.5)
    [flag] = listed[slow]["flags"]
    assert re.fullmatch(r"clock off by -[45]\.\d s", flag) and listed[gone]["draining"], flag
    table = cli(config, "hosts").stdout.splitlines()
    assert "clock offset" in table[0]
    [row] = [line for line in table if line.startswith(slow)]
    assert re.search(rf"\s-(4\.[5-9]|5\.[0-4])\d\d s\s+{flag}$", row), row

    refused = cli(config, "hosts", "--forget", slow)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused
    assert f"host {slow!r} is live" in refused.stderr and "stop its guard first" in refused.stderr
    done = cli(config, "hosts", "--forget", gone)
    assert done.returncode == 0 and done.stdout == f"{gone}: forgotten (no longer listed, no " \
                                                   "drain mark)\n", done
    assert [v["host"] for v in as_json(config, "hosts")["hosts"]] == [slow]
    again = cli(config, "hosts", "--forget", gone)
    assert again.returncode == 2 and "nothing to forget" in again.stderr, again
    both = cli(config, "hosts", "--forget", gone, "--drain", slow)
    assert both.returncode == 2 and "exclude each other" in both.stderr, both


def _holder_and_other(fleet: list[CeleryHarness], host: str) -> tuple[CeleryHarness, CeleryHarness]:
    first, second = fleet
    return (first, second) if host == first.workspace.host_id else (second, first)


def test_a_held_slot_reads_starting_until_its_holder_says_which_instance_runs(
        workspace: Workspace, redis_client):
    from workerguard.policy.cluster_view import cluster_views
    from workerguard.store import keys
    from workerguard.store.host_records import HostRecord, HostRecords
    from workerguard.store.lease import LeaseStore

    cluster_workspace(workspace)
    config = workspace.config()
    profile = config.profile("demo")
    records = HostRecords(redis_client)
    records.publish(HostRecord(host="a", machine="m-a", boot="b", version="v"), 60)
    redis_client.set(keys.cluster_slot("demo", 0), "a|7|iid", px=60_000)

    def state() -> tuple[str, int | None]:
        [view] = cluster_views(redis_client, config, [profile])
        return view.slots[0].state, view.slots[0].pid

    assert state() == ("starting", None)  # won, nothing said yet
    store = LeaseStore(redis_client, "demo", 2)
    assert store.publish_info(0, "a", 7, 4242, 1000, 3.0)
    assert state() == ("running", 4242)
    records.set_draining("a", True)
    assert state() == ("running (draining)", 4242)
    records.set_draining("a", False)
    redis_client.set(keys.cluster_paused("demo"), "1")
    assert state() == ("running (stopping)", 4242)
    redis_client.delete(keys.cluster_paused("demo"))
    redis_client.set(keys.cluster_slot("demo", 0), "a|8|iid2", px=60_000)  # a new grant
    assert state() == ("starting", None)  # the older grant's instance is not shown
    redis_client.delete(keys.host_record("a"))
    assert state() == ("starting (holder gone)", None)


@pytest.mark.celery
def test_a_drained_holder_hands_its_slot_over_never_two_at_once(fleet):
    tag = fleet[0].tag
    config = fleet[0].workspace.config_path
    with sampling(tag).running() as sampler:
        for harness in fleet:
            harness.start_worker()
        [running] = poll_for(lambda: instances(tag), timeout=60, message="the one instance")
        holder, other = _holder_and_other(fleet, running.host)
        held = poll_for(lambda: (s := slot0(config))["host"] and s, timeout=30,
                        message="status --cluster to name the holder")
        assert (held["host"], held["token"]) == (running.host, running.token)
        assert held["state"] in ("starting", "running")
        assert 0 < held["lease_left"] <= 3.0
        # the holder's converge says which instance runs: its pid and uptime, on any machine
        # (the instance's main process is its leash, the worker's parent: the pid that
        # `workerguard status demo` on the holder shows too)
        leash = psutil.Process(running.pid).ppid()
        shown = poll_for(lambda: (s := slot0(config))["pid"] == leash and s, timeout=30,
                         message="status --cluster to show the instance's pid")
        age = time.time() - psutil.Process(leash).create_time()
        assert shown["uptime"] == pytest.approx(age, abs=2.0), (shown, age)
        assert shown["state"] == "running"
        rows = cli(config, "status", "--cluster").stdout.splitlines()
        assert rows[1].split() == ["slot", "host", "token", "pid", "up", "lease", "left", "state"]
        assert rows[2].split()[:4] == ["0", running.host, str(running.token), str(leash)]
        hosts = {h["host"]: h for h in as_json(config, "hosts")["hosts"]}
        assert {holder.workspace.host_id, other.workspace.host_id} <= set(hosts)
        assert hosts[running.host]["slots"] == {"demo": [0]} and hosts[running.host]["live"]
        assert abs(hosts[running.host]["clock_offset"]) < 1  # one machine, one clock
        refused = cli(config, "hosts", "--forget", running.host)
        assert refused.returncode == 2 and "is live" in refused.stderr, refused

        drained = cli(config, "hosts", "--drain", running.host)
        assert drained.returncode == 0 and "draining" in drained.stdout, drained.stderr
        [moved] = poll_for(lambda: [i for i in instances(tag) if i.host != running.host],
                           timeout=60, message="the other host to take the drained slot")
        assert moved.host == other.workspace.host_id and moved.token > running.token
        poll_for(lambda: (s := slot0(config))["host"] == moved.host and s["token"] == moved.token
                 and s["pid"] == psutil.Process(moved.pid).ppid(), timeout=30,
                 message="status --cluster to show the new holder and its instance")
        # The drained host's record drops the slot at its next renewal round, which can come
        # after the new holder's instance is up: polled, not read once.
        poll_for(lambda: (h := {v["host"]: v for v in as_json(config, "hosts")["hosts"]}
                          .get(running.host, {})).get("draining")
                 and h.get("slots") in ({}, {"demo": []}), timeout=10,
                 message="the drain mark, and the slot gone from the drained host's record")
        table = cli(config, "hosts").stdout
        assert running.host in table and "yes" in table
    assert sampler.most == 1, f"{sampler.most} instances of a max_workers=1 cluster profile"
    assert [i.host for i in instances(tag)] == [moved.host]  # the drained host claims nothing
    assert cli(config, "hosts", "--undrain", running.host).returncode == 0
    assert running.host not in {v["host"] for v in as_json(config, "hosts")["hosts"]
                                if v["draining"]}
