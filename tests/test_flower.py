"""Flower (a real `workerguard flower` process) shows each request with its arguments and result."""

from __future__ import annotations

import ast
import base64
import json
import re
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.conftest import CeleryHarness, Workspace
from tests.support import cli_env, free_port, poll_for, run_cli

pytestmark = pytest.mark.celery
USER, PASSWORD = "ops", "flower-secret"


def get(port: int, path: str, auth: tuple[str, str] | None = (USER, PASSWORD)) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code, None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def answers(port: int) -> bool:
    try:
        return get(port, "/healthcheck", auth=None)[0] == 200
    except OSError:
        return False


def test_flower_lists_ensure_enforce_and_stop_all_with_arguments_and_results(
        workspace: Workspace, harness: CeleryHarness):
    workspace.add_profile()
    harness.start_worker()
    port = free_port()
    log = (workspace.home / "flower.log").open("ab")
    flower = workspace.tracker.popen(
        [sys.executable, "-m", "workerguard.cli", "flower", "--config", str(workspace.config_path),
         "--port", str(port), f"--basic-auth={USER}:{PASSWORD}"],
        stdout=log, stderr=log, env=cli_env())
    log.close()
    poll_for(lambda: flower.poll() is None and answers(port), timeout=60, interval=0.2,
             message="Flower to answer /healthcheck")

    # /api/* needs the password; /healthcheck and /metrics are open whatever the auth.
    assert get(port, "/api/tasks", auth=None)[0] == 401
    assert get(port, "/api/tasks", auth=(USER, "wrong"))[0] == 401
    assert get(port, "/metrics", auth=None)[0] == 200
    # The task list shows each request's arguments, result and runtime.
    page = get(port, "/tasks")[1]
    assert re.findall(r'<th data-column="(\w+)">', page) == [
        "name", "uuid", "state", "args", "kwargs", "result", "received", "runtime", "worker"]

    poll_for(lambda: harness.node in get(port, "/api/workers?refresh=1")[1], timeout=30,
             interval=0.5, message="Flower to see the guard worker")
    # Flower only shows tasks whose events it received: probe until one shows up.
    probes: set[str] = set()

    def flower_saw_a_probe() -> bool:
        probes.add(harness.call("workerguard.status", "demo").id)
        return bool(probes & set(get(port, "/api/tasks")[1]))

    poll_for(flower_saw_a_probe, timeout=30, interval=0.3, message="Flower to receive task events")

    requests = {
        "workerguard.ensure": harness.call("workerguard.ensure", "demo", requested_by="flower-test"),
        "workerguard.enforce": harness.call("workerguard.enforce", "demo", max_workers=1),
        "workerguard.stop_all": harness.call("workerguard.stop_all", "demo"),
    }
    assert [r.result["action"] for r in requests.values()] == [
        "started", "already_running", "stopped_all"]

    def shown() -> dict[str, Any] | None:
        tasks = get(port, "/api/tasks")[1]
        found = {r.id: tasks.get(r.id) for r in requests.values()}
        ready = all(t and t["state"] == "SUCCESS" and t["result"] for t in found.values())
        return found if ready else None

    tasks = poll_for(shown, timeout=30, interval=0.3, message="Flower to show the three tasks")
    assert tasks is not None
    for name, request in requests.items():
        task = tasks[request.id]
        assert task["name"] == name
        assert task["worker"] == harness.node
        assert task["routing_key"] == harness.queue
        assert ast.literal_eval(task["args"]) == ["demo"]
        assert ast.literal_eval(task["result"]) == request.result  # the whole result dict
    assert ast.literal_eval(tasks[requests["workerguard.ensure"].id]["kwargs"])["requested_by"] == \
        "flower-test"
    assert ast.literal_eval(tasks[requests["workerguard.enforce"].id]["kwargs"])["max_workers"] == 1


def test_ping_answers_for_a_running_guard_only(workspace: Workspace, harness: CeleryHarness):
    workspace.add_profile()
    config = str(workspace.write_config())
    silent = run_cli("ping", "--timeout", "0.5", "--config", config, env=cli_env())
    assert silent.returncode == 1 and "did not answer" in silent.stderr
    harness.start_worker()
    done = run_cli("ping", "--config", config, env=cli_env())
    assert done.returncode == 0 and done.stdout == f"{harness.node}: pong\n"
