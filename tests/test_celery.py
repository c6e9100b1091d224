"""Across the queue: a real guard worker (and beat) as subprocesses, real processes."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from typing import Any

import psutil
import pytest

from tests.conftest import CeleryHarness, Workspace
from tests.support import HERE, cli_env, events, poll_for, run_cli, running_the_worker
from workerguard.store import keys
from workerguard.tasks.routing import SWEEP_TASK

pytestmark = pytest.mark.celery


def instances(harness: CeleryHarness) -> list[int]:
    request = harness.call("workerguard.status", "demo")
    assert request.state == "SUCCESS", request.result
    return list(request.result["running"])


def test_two_hundred_requests_from_ten_plain_celery_clients_leave_exactly_one_instance(
        workspace: Workspace, harness: CeleryHarness):
    workspace.add_profile(start_seconds=0.5)
    harness.start_worker()
    clients = [
        workspace.tracker.popen(
            [sys.executable, str(HERE / "celery_client.py"), workspace.redis_url, harness.queue,
             "20", "demo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
        for _ in range(10)
    ]
    answers = []
    for client in clients:
        out, err = client.communicate(timeout=240)
        assert client.returncode == 0, err
        answers += json.loads(out)
    assert len(answers) == 200
    assert all(a["state"] == "SUCCESS" for a in answers), [a for a in answers if a["state"] != "SUCCESS"][:3]
    actions = [a["result"]["action"] for a in answers]
    assert actions.count("started") == 1
    assert actions.count("already_running") == 199
    [pid] = next(a["result"]["started"] for a in answers if a["result"]["action"] == "started")
    assert instances(harness) == [pid]


def test_stop_survives_sweeps_until_an_explicit_ensure(workspace: Workspace,
                                                       harness: CeleryHarness):
    workspace.add_profile()
    workspace.guard_settings["sweep_interval"] = 0.5
    harness.start_worker()
    started = harness.call("workerguard.ensure", "demo")
    assert started.result["action"] == "started"
    stopped = harness.call("workerguard.stop_all", "demo")
    assert stopped.result["action"] == "stopped_all"
    events = harness.watch_events()
    harness.start_beat()
    poll_for(lambda: len(events.of("workerguard.sweep", "task-succeeded")) >= 3, timeout=30,
             interval=0.2, message="three sweeps")
    assert instances(harness) == []
    again = harness.call("workerguard.ensure", "demo")
    assert again.result["action"] == "started"


def test_a_killed_worker_is_restarted_by_the_next_sweep(workspace: Workspace,
                                                         harness: CeleryHarness):
    interval, start_seconds = 1.0, 0.3
    workspace.add_profile(start_seconds=start_seconds)
    workspace.guard_settings["sweep_interval"] = interval
    harness.start_worker()
    harness.start_beat()
    [first] = poll_for(lambda: instances(harness), timeout=30, message="the first sweep to start it")
    psutil.Process(first).kill()
    killed_at = time.monotonic()
    replacement = poll_for(lambda: [p for p in instances(harness) if p != first], timeout=30,
                           interval=0.05, message="a sweep to restart the worker")
    took = time.monotonic() - killed_at
    assert len(replacement) == 1
    assert took <= interval + start_seconds + 2.0, f"restart took {took:.2f} s"


BAD_REQUESTS: list[tuple[str, list[Any], dict[str, Any], str]] = [
    ("workerguard.ensure", ["nope"], {}, "unknown profile 'nope'"),
    ("workerguard.ensure", [42], {}, "profile must be a string"),
    ("workerguard.ensure", ["../demo"], {}, "profile must match"),
    ("workerguard.ensure", ["demo"], {"dry_run": "yes"}, "dry_run must be true or false"),
    ("workerguard.ensure", ["demo"], {"command": ["rm", "-rf", "/"]},
     "unexpected keyword argument 'command'"),
    ("workerguard.enforce", ["demo"], {"max_workers": 0}, "max_workers must be between 1"),
    ("workerguard.enforce", ["demo"], {"max_workers": 10**30}, "max_workers must be between 1"),
    ("workerguard.enforce", ["demo"], {"max_workers": "1"}, "max_workers must be an integer"),
    ("workerguard.enforce", ["demo"], {"max_workers": True}, "max_workers must be an integer"),
    ("workerguard.stop_all", [], {}, "missing 1 required positional argument"),
    ("workerguard.stop_all", ["demo", False, None, "extra"], {}, "positional argument"),
]


def test_bad_requests_fail_with_a_clear_message_and_touch_nothing(workspace: Workspace,
                                                                   harness: CeleryHarness):
    workspace.add_profile(max_workers=1)
    manual = [workspace.hand_started() for _ in range(2)]  # two: any enforce would stop one
    harness.start_worker()
    for task, args, kwargs, expected in BAD_REQUESTS:
        request = harness.call(task, *args, **kwargs)
        assert request.state == "FAILURE", (task, args, kwargs, request.result)
        assert expected in str(request.result), (expected, str(request.result))
    assert all(p.poll() is None for p in manual)
    assert harness.worker.poll() is None
    assert sorted(instances(harness)) == sorted(p.pid for p in manual)


def test_arguments_a_task_does_not_take_are_refused_in_the_task_s_own_words(
        workspace: Workspace, harness: CeleryHarness):
    workspace.add_profile()
    harness.start_worker()
    unknown = harness.call("workerguard.ensure", "demo", command=["rm", "-rf", "/"])
    assert str(unknown.result) == ("workerguard.ensure: unexpected keyword argument 'command'; it takes "
                                   "(profile, dry_run=False, force=False, requested_by=None)")
    missing = harness.call("workerguard.stop_all")
    assert str(missing.result) == ("workerguard.stop_all: missing 1 required positional argument: "
                                   "'profile'; it takes (profile, dry_run=False, requested_by=None)")
    assert type(unknown.result).__name__ == type(missing.result).__name__ == "InvalidRequest"
    assert "<locals>" not in str(unknown.result) + str(missing.result)


def test_a_pickle_message_is_refused_and_the_guard_keeps_serving(workspace: Workspace,
                                                                  harness: CeleryHarness):
    workspace.add_profile()
    manual = [workspace.hand_started() for _ in range(2)]
    harness.start_worker()
    app = harness.client_app()
    app.conf.accept_content = ["json", "pickle"]
    request = app.send_task("workerguard.stop_all", args=["demo"], queue=harness.queue,
                            serializer="pickle")
    request.get(timeout=10, propagate=False)
    assert request.state == "FAILURE"  # answered, and it never ran:
    assert "content type 'application/x-python-serialize' is not accepted" in str(request.result)
    assert all(p.poll() is None for p in manual)
    assert sorted(instances(harness)) == sorted(p.pid for p in manual)


def test_a_guard_sigkilled_while_holding_the_lock_leaves_no_duplicate(workspace: Workspace,
                                                                       harness: CeleryHarness,
                                                                       redis_client):
    workspace.add_profile(start_seconds=5)
    harness.start_worker()
    app = harness.client_app()
    app.send_task("workerguard.ensure", args=["demo"], queue=harness.queue)
    key = keys.lock(workspace.host_id, "demo")
    guard = workspace.guard(redis_client)
    poll_for(lambda: redis_client.exists(key) and running_the_worker(guard), timeout=30,
             message="the guard to hold the lock with its worker running")
    [spawned] = guard.status("demo").running
    harness.worker.send_signal(signal.SIGKILL)
    harness.worker.wait(10)
    assert psutil.pid_exists(spawned)  # the worker outlives its guard
    harness.start_worker()
    again = harness.call("workerguard.ensure", "demo")
    assert again.result["action"] == "already_running"
    assert again.result["running"] == [spawned]


def test_the_cli_without_local_goes_through_the_queue(workspace: Workspace,
                                                       harness: CeleryHarness):
    workspace.add_profile()
    harness.start_worker()
    config = str(workspace.config_path)
    started = run_cli("ensure", "demo", "--config", config, env=cli_env())
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("demo: started (PIDs: ")
    again = run_cli("ensure", "demo", "--config", config, env=cli_env())
    assert again.stdout.startswith("demo: already running (PIDs: ")
    status = json.loads(run_cli("status", "--json", "--config", config, env=cli_env()).stdout)
    assert status["profiles"]["demo"]["state"] == "running"
    unknown = run_cli("ensure", "nope", "--config", config, env=cli_env())
    assert unknown.returncode == 2 and "unknown profile 'nope'" in unknown.stderr


def test_the_cli_says_when_no_guard_answers(workspace: Workspace):
    workspace.add_profile()
    config = str(workspace.write_config())
    done = run_cli("ensure", "demo", "--config", config, "--timeout", "1", env=cli_env())
    assert done.returncode == 1
    assert f"no guard answered on workerguard.{workspace.host_id} within 1 s" in done.stderr


def test_a_failed_start_is_a_failed_task_with_the_guard_s_message(workspace: Workspace,
                                                                   harness: CeleryHarness):
    workspace.add_profile("demo", "--exit-code", "5")
    harness.start_worker()
    request = harness.call("workerguard.ensure", "demo")
    assert request.state == "FAILURE"
    assert "demo: start failed" in str(request.result) and "exited with code 5" in str(request.result)
    # --force: the exit watcher's heals may have met the failed start again meanwhile and
    # put the profile in backoff (a loaded machine gives them the time)
    done = run_cli("ensure", "demo", "--force", "--config", str(workspace.config_path),
                   env=cli_env())
    assert done.returncode == 1 and "exited with code 5" in done.stdout


def test_two_beats_by_mistake_do_not_double_the_sweeps(workspace: Workspace,
                                                       harness: CeleryHarness):
    workspace.add_profile()
    workspace.guard_settings["sweep_interval"] = 1.0
    harness.start_worker()
    events = harness.watch_events()
    harness.start_beat()
    harness.start_beat()

    def skipped() -> int:  # a skipped sweep returns [] (the host has a profile)
        return sum(e.get("result") == "[]" for e in events.of("workerguard.sweep", "task-succeeded"))

    poll_for(lambda: skipped() >= 3, timeout=30, interval=0.2,
             message="duplicate sweeps to be skipped")
    received = len(events.of("workerguard.sweep", "task-received"))
    skips = skipped()
    # Every sweep that ran had a twin that was skipped (allowing one in flight).
    assert received - skips <= skips + 2, (received, skips)
    assert instances(harness) != []


def test_a_lock_held_elsewhere_is_retried_with_backoff_then_fails_clearly(
        workspace: Workspace, harness: CeleryHarness, redis_client):
    from workerguard.store.lock import ProfileLock

    workspace.add_profile()
    workspace.guard_settings["lock_timeout"] = 0.5
    harness.start_worker()
    events = harness.watch_events()
    holder = ProfileLock(redis_client, workspace.host_id, "demo", expire=30)
    assert holder.acquire_within(1)
    try:
        request = harness.call("workerguard.ensure", "demo", timeout=120)
    finally:
        holder.release()
    assert request.state == "FAILURE"
    assert "still held by another caller" in str(request.result)
    [failed] = poll_for(lambda: events.of("workerguard.ensure", "task-failed"), timeout=10)
    retried = events.of("workerguard.ensure", "task-retried")  # all sent before task-failed
    assert len(retried) == 3
    stamps = [e["timestamp"] for e in [*retried, failed]]
    # Between two attempts: the countdown (1, 2, 4 s), then the 0.5 s lock wait. The
    # stamps are taken when each event is sent, not when the wait began: a few ms of
    # jitter either way (once measured 0.99992 s for the first), more on a loaded machine:
    # a retry's event is sent after its traceback is formatted and its state written.
    waits = [b - a - 0.5 for a, b in itertools.pairwise(stamps)]
    assert all(c - 0.3 <= w < c + 1 for c, w in zip([1, 2, 4], waits, strict=True)), waits
    assert instances(harness) == []


def test_a_starting_guard_sweeps_its_host_at_once_without_beat(workspace: Workspace,
                                                                harness: CeleryHarness,
                                                                redis_client):
    workspace.add_profile()
    workspace.guard_settings["sweep_interval"] = 3600  # beat would not sweep for an hour
    workspace.guard_settings["sweep_on_start"] = True
    harness.start_worker()
    [pid] = poll_for(lambda: instances(harness), timeout=30, message="the startup sweep")
    # The sweep records its start after the start window, a moment after the spawn.
    [started] = poll_for(lambda: events(redis_client, "started"), timeout=10,
                         message="the startup sweep's start in the action log")
    assert started[b"requested_by"].startswith(b"guard startup (task ")  # a task, in the pool
    assert started[b"pids"] == str(pid).encode()
    assert psutil.pid_exists(pid)


def test_a_sweep_that_changes_nothing_writes_no_info_line_and_results_are_logged_as_messages(
        workspace: Workspace, harness: CeleryHarness):
    workspace.add_profile(stop_adopted=True)
    workspace.guard_settings["sweep_interval"] = 0.5  # one sweep per host and 0.25 s counts
    harness.start_worker()
    log = workspace.home / "guard-worker.log"
    started = harness.call("workerguard.ensure", "demo")
    [pid] = started.result["started"]
    events = harness.watch_events()

    def idle_sweeps() -> bool:  # one more each look: a loaded machine may drop none, or some
        harness.client_app().send_task(SWEEP_TASK)
        return len(events.of(SWEEP_TASK, "task-succeeded")) >= 3

    poll_for(idle_sweeps, timeout=60, interval=0.3, message="three idle sweeps")
    # A request's line says what it did, as the CLI would (not the whole result dict);
    # Celery logs it after it stores the result: polled.
    poll_for(lambda: f": demo: started (PIDs: {pid})" in log.read_text(), timeout=10,
             message="the ensure's line in the guard's log")
    assert "succeeded in " in log.read_text()
    assert f"{SWEEP_TASK}[" not in log.read_text()  # idle sweeps: neither received nor succeeded
    extra = workspace.hand_started()  # adopted beyond max_workers, stop_adopted: a sweep acts

    def logged_sweep() -> str | None:
        harness.client_app().send_task(SWEEP_TASK)
        return next((x for x in log.read_text().splitlines()
                     if f"{SWEEP_TASK}[" in x and "succeeded" in x), None)

    line = poll_for(logged_sweep, timeout=30, interval=0.5, message="the sweep that acted to be logged")
    assert line is not None and f"demo: keeping {pid}, stopping {extra.pid}" in line
