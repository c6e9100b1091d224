"""Probes in the guard: readiness at start, and replacement of hung workers by a real guard
worker (issue: "Health probes and readiness").

The ground truth is the process table: live processes of ``tests/probe_workers.py`` whose
command line names this test's home directory, never what workerguard reports.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import CeleryHarness, Workspace
from tests.support import HERE, events, free_port, poll_for

WORKER = HERE / "probe_workers.py"
FAST = {"interval": 0.3, "timeout": 1.0, "failure_threshold": 3, "start_interval": 0.1,
        "start_timeout": 10.0}
"""Probe timings short enough for tests (the defaults are 10 s / 5 s / 3)."""


def probed_profile(ws: Workspace, name: str, mode: str, *args: str, probe: dict[str, Any],
                   **overrides: Any) -> None:
    ws.profiles[name] = {"command": [sys.executable, str(WORKER), mode, *args],
                         "start_seconds": 0.2, "stop_timeout": 3, "probe": {**FAST, **probe},
                         **overrides}


def workers(ws: Workspace, name: str | None = None) -> list[psutil.Process]:
    """Live probe workers of this test (of profile ``name``: its log is in the command line)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = proc.info["cmdline"] or []
        if (len(cmd) > 1 and cmd[1] == str(WORKER) and str(ws.home) in " ".join(cmd)
                and (name is None or f"/{name}-" in " ".join(cmd))
                and proc.info["status"] != psutil.STATUS_ZOMBIE):
            found.append(proc)
    return found


def pids(ws: Workspace, name: str | None = None) -> list[int]:
    return sorted(p.pid for p in workers(ws, name))


def heartbeat_profile(ws: Workspace, name: str = "bot", **overrides: Any) -> None:
    """Touches ``<home>/<name>-{instance}.beat`` every 0.1 s until ``<name>-{instance}.stop``."""
    beat, stop = ws.home / f"{name}-{{instance}}.beat", ws.home / f"{name}-{{instance}}.stop"
    probed_profile(ws, name, "heartbeat", str(beat), str(stop), "0.1",
                   probe={"kind": "heartbeat", "path": str(beat), "max_age": 1.0}, **overrides)


def hang(ws: Workspace, name: str, instance_id: str) -> Path:
    flag = ws.home / f"{name}-{instance_id}.stop"
    flag.touch()
    return flag


def healthy_bot(ws: Workspace, harness: CeleryHarness) -> tuple[int, dict[str, Any]]:
    """A real guard worker keeping one heartbeat bot, probed healthy: its pid and status entry."""
    heartbeat_profile(ws)
    harness.start_worker()
    [pid] = harness.call("workerguard.ensure", "bot").result["started"]
    [entry] = harness.call("workerguard.status", "bot").result["profiles"]["bot"]["instances"]
    poll_for(lambda: (harness.call("workerguard.status", "bot").result["profiles"]["bot"]
                      ["instances"][0].get("health", {}).get("state")) == "healthy",
             timeout=10, message="the instance to be probed healthy")
    return pid, entry


# readiness (the guard alone: no queue involved) ------------------------------------------
def test_a_worker_that_takes_3_s_to_listen_is_reported_started_only_then(
        workspace: Workspace, redis_client):
    port = free_port()
    probed_profile(workspace, "web", "http", str(port), str(workspace.home / "web-never"),
                   "--delay", "3", probe={"kind": "http", "url": f"http://127.0.0.1:{port}/"})
    guard = workspace.guard(redis_client)
    began = time.monotonic()
    result = guard.ensure("web").contract()
    took = time.monotonic() - began
    assert result["action"] == "started", result
    assert took >= 3.0, f"answered after {took:.2f} s, before the worker listened"
    assert result["started"] == pids(workspace, "web")


def test_a_worker_that_never_becomes_ready_fails_its_start_is_stopped_and_backs_off(
        workspace: Workspace, redis_client):
    port = free_port()
    always_500 = workspace.home / "web-500"
    always_500.touch()
    probed_profile(workspace, "web", "http", str(port), str(always_500), start_retries=1,
                   probe={"kind": "http", "url": f"http://127.0.0.1:{port}/", "start_timeout": 2.0})
    guard = workspace.guard(redis_client)
    result = guard.ensure("web").contract()
    assert result["action"] == "start_failed", result
    assert "not ready within start_timeout 2 s" in result["error"]
    assert "HTTP 500" in result["error"]  # the probe's last output
    assert pids(workspace, "web") == []  # stopped, nothing left
    assert result["backoff"]["failures"] == 1
    again = guard.ensure("web")
    assert again.action == "backoff" and pids(workspace, "web") == []


def test_replacing_one_of_three_counts_toward_backoff_and_keeps_its_slot(
        workspace: Workspace, redis_client):
    heartbeat_profile(workspace, min_workers=3, max_workers=3, start_retries=2)
    guard = workspace.guard(redis_client)
    started = guard.ensure("bot")
    assert started.action == "started" and len(started.started) == 3
    instances = guard.status("bot").profiles["bot"]["instances"]
    assert sorted(i["index"] for i in instances) == [0, 1, 2]
    victim = next(i for i in instances if i["index"] == 1)
    others = sorted(i["pid"] for i in instances if i["index"] != 1)

    done = guard.replace("bot", victim["instance_id"], reason="test").contract()
    assert done["action"] == "replaced" and done["stopped"] == [victim["pid"]], done
    [new] = done["started"]
    assert sorted(pids(workspace, "bot")) == sorted([*others, new])
    after = guard.status("bot").profiles["bot"]["instances"]
    assert next(i["index"] for i in after if i["pid"] == new) == 1
    assert [e[b"pids"] for e in events(redis_client, "replaced")] == [
        f"{victim['pid']},{new}".encode()]

    # Replacements count: with start_retries = 2 the second one in a row waits its backoff.
    second = guard.replace("bot", next(i["instance_id"] for i in after if i["pid"] == new)).contract()
    assert second["action"] == "replaced" and second["started"] == [], second
    assert second["backoff"]["failures"] == 2
    assert sorted(pids(workspace, "bot")) == others
    assert guard.status("bot").profiles["bot"]["state"] == "backoff"


def test_replacing_an_instance_that_is_gone_only_heals(workspace: Workspace, redis_client):
    heartbeat_profile(workspace)
    guard = workspace.guard(redis_client)
    [pid] = guard.ensure("bot").started
    done = guard.replace("bot", "0" * 32).contract()
    assert done["action"] == "already_running" and done["running"] == [pid]
    assert events(redis_client, "replaced") == []


# liveness (a real guard worker) -----------------------------------------------------------
@pytest.mark.celery
def test_a_bot_that_stops_its_heartbeat_is_replaced_within_the_bound(
        workspace: Workspace, harness: CeleryHarness, redis_client):
    old, entry = healthy_bot(workspace, harness)

    hang(workspace, "bot", entry["instance_id"])
    hung = time.monotonic()
    [new] = poll_for(lambda: [p for p in pids(workspace, "bot") if p != old], timeout=30,
                     interval=0.05, message="a replacement")
    took = time.monotonic() - hung
    poll_for(lambda: old not in pids(workspace, "bot"), timeout=10, message="the hung one to go")
    spec = FAST
    bound = 1.0 + spec["interval"] * spec["failure_threshold"] + 3 + 5  # max_age + probes + stop + margin
    assert took <= bound, f"replaced after {took:.1f} s (bound {bound} s)"
    [unhealthy] = poll_for(lambda: events(redis_client, "unhealthy", "bot"), timeout=10)
    assert b"heartbeat" in unhealthy[b"detail"] and unhealthy[b"pids"] == str(old).encode()
    [replaced] = poll_for(lambda: events(redis_client, "replaced", "bot"), timeout=10)
    assert replaced[b"pids"] == f"{old},{new}".encode()
    assert b"task " in replaced[b"requested_by"]  # a request like any other (Flower shows it)
    assert pids(workspace, "bot") == [new]
    status = harness.call("workerguard.status", "bot").result["profiles"]["bot"]
    assert [i["pid"] for i in status["instances"]] == [new]
    assert status["backoff"]["failures"] == 1  # the replacement counted


@pytest.mark.celery
def test_http_500_is_replaced_http_200_never_touched_and_a_closed_tcp_port_replaced(
        workspace: Workspace, harness: CeleryHarness, redis_client):
    bad_port, good_port, tcp_port = free_port(), free_port(), free_port()
    probed_profile(workspace, "bad", "http", str(bad_port), str(workspace.home / "bad-{instance}.500"),
                   probe={"kind": "http", "url": f"http://127.0.0.1:{bad_port}/"})
    probed_profile(workspace, "good", "http", str(good_port), str(workspace.home / "good-never"),
                   probe={"kind": "http", "url": f"http://127.0.0.1:{good_port}/"})
    probed_profile(workspace, "tcp", "tcp", str(tcp_port), str(workspace.home / "tcp-{instance}.close"),
                   probe={"kind": "tcp", "port": tcp_port})
    harness.start_worker()
    first = {name: harness.call("workerguard.ensure", name).result for name in ("bad", "good", "tcp")}
    assert all(r["action"] == "started" for r in first.values()), first
    status = harness.call("workerguard.status").result["profiles"]
    ids = {name: status[name]["instances"][0]["instance_id"] for name in ("bad", "tcp")}
    (workspace.home / f"bad-{ids['bad']}.500").touch()
    (workspace.home / f"tcp-{ids['tcp']}.close").touch()
    for name in ("bad", "tcp"):
        [old] = first[name]["started"]
        poll_for(lambda: (len(events(redis_client, "replaced", name)) == 1  # noqa: B023
                          and old not in pids(workspace, name)),  # noqa: B023
                 timeout=30, message=f"{name} to be replaced")
        assert len(pids(workspace, name)) == 1
    assert pids(workspace, "good") == first["good"]["started"]
    assert events(redis_client, "unhealthy", "good") == []
    health = harness.call("workerguard.status", "good").result["profiles"]["good"]["instances"][0]
    assert health["health"]["state"] == "healthy" and health["health"]["failures"] == 0
    assert "HTTP 200" in health["health"]["last_output"]


@pytest.mark.celery
def test_of_three_instances_only_the_hung_one_is_replaced_and_a_flood_never_doubles_a_slot(
        workspace: Workspace, harness: CeleryHarness, redis_client):
    heartbeat_profile(workspace, min_workers=3, max_workers=3)
    harness.start_worker()
    assert len(harness.call("workerguard.ensure", "bot").result["started"]) == 3
    instances = harness.call("workerguard.status", "bot").result["profiles"]["bot"]["instances"]
    victim = next(i for i in instances if i["index"] == 1)
    others = sorted(i["pid"] for i in instances if i["index"] != 1)

    most, stop = [0], threading.Event()

    def sample() -> None:  # the ground truth, as often as the machine allows
        while not stop.is_set():
            most[0] = max(most[0], len(pids(workspace, "bot")))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    client = harness.client_app()
    hang(workspace, "bot", victim["instance_id"])
    flood = [client.send_task("workerguard.ensure", args=["bot"], queue=harness.queue, expires=60)
             for _ in range(30)]
    poll_for(lambda: len(events(redis_client, "replaced", "bot")) == 1, timeout=30,
             message="the hung instance to be replaced")
    for request in flood:
        request.get(timeout=60, propagate=False)
    stop.set()
    sampler.join(10)
    assert most[0] <= 3, f"{most[0]} instances of a max_workers=3 profile at once"
    now = pids(workspace, "bot")
    assert len(now) == 3 and set(others) <= set(now) and victim["pid"] not in now
    assert len(events(redis_client, "unhealthy", "bot")) == 1


@pytest.mark.celery
def test_a_stopped_profile_is_not_probed(workspace: Workspace, harness: CeleryHarness):
    counter = workspace.home / "probes.count"
    probe = [sys.executable, "-c",
             f"open({str(counter)!r}, 'a').write('x')"]
    heartbeat_profile(workspace)
    workspace.profiles["bot"]["probe"] = {**FAST, "kind": "command", "command": probe}
    harness.start_worker()
    harness.call("workerguard.ensure", "bot")
    poll_for(lambda: counter.exists() and len(counter.read_text()) >= 3, timeout=20,
             message="the probe to run a few times")
    assert harness.call("workerguard.stop_all", "bot").result["action"] == "stopped_all"
    settled = len(counter.read_text())
    quiet_until = time.monotonic() + 5 * FAST["interval"] + 1
    while time.monotonic() < quiet_until:  # nothing may happen: watch for a while
        assert len(counter.read_text()) <= settled + 1, "probed after the profile was stopped"
        time.sleep(0.1)
    assert pids(workspace, "bot") == []


@pytest.mark.celery
def test_a_reload_that_removes_the_probe_stops_the_probing(
        workspace: Workspace, harness: CeleryHarness, redis_client):
    old, entry = healthy_bot(workspace, harness)
    del workspace.profiles["bot"]["probe"]
    workspace.write_config()
    assert harness.call("workerguard.reload").result["action"] == "reloaded"
    hang(workspace, "bot", entry["instance_id"])
    bound = time.monotonic() + 1.0 + FAST["interval"] * FAST["failure_threshold"] + 2
    while time.monotonic() < bound:  # nothing may happen: watch past the replacement bound
        assert pids(workspace, "bot") == [old]
        time.sleep(0.2)
    assert events(redis_client, "unhealthy", "bot") == []
    [now] = harness.call("workerguard.status", "bot").result["profiles"]["bot"]["instances"]
    assert "health" not in now
