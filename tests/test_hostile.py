"""Hostile input: bad tasks from plain Celery and bad messages from raw kombu.

Each gets a clear error — a failed task naming the problem, or a logged rejection —
the guard keeps serving, and no process is touched.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from kombu.connection import Connection
from kombu.entity import Exchange

from tests.conftest import CeleryHarness, Workspace
from tests.support import poll_for

pytestmark = pytest.mark.celery

NAME_10K = "d" * 10_240

# (task, args, kwargs, text the failure must contain)
BAD_TASKS: list[tuple[str, list[Any], dict[str, Any], str]] = [
    ("workerguard.ensure", [None], {}, "profile must be a string, got NoneType"),
    ("workerguard.ensure", [42], {}, "profile must be a string, got int"),
    ("workerguard.ensure", [["demo"]], {}, "profile must be a string, got list"),
    ("workerguard.ensure", [{"name": "demo"}], {}, "profile must be a string, got dict"),
    ("workerguard.ensure", [""], {}, "profile must match"),
    ("workerguard.ensure", [NAME_10K], {}, "profile must match"),
    ("workerguard.ensure", ["../demo"], {}, "profile must match"),
    ("workerguard.ensure", ["demo/../../etc/passwd"], {}, "profile must match"),
    ("workerguard.ensure", ["de*mo"], {}, "profile must match"),
    ("workerguard.ensure", ["dem(o|x)"], {}, "profile must match"),
    ("workerguard.ensure", ["demo\x00"], {}, "profile must match"),
    ("workerguard.ensure", ["demo\n"], {}, "profile must match"),
    ("workerguard.ensure", ["nope"], {}, "unknown profile 'nope'"),
    ("workerguard.ensure", ["DEMO"], {}, "unknown profile 'DEMO'"),
    ("workerguard.ensure", ["demo"], {"dry_run": "true"}, "dry_run must be true or false"),
    ("workerguard.ensure", ["demo"], {"dry_run": 1}, "dry_run must be true or false"),
    ("workerguard.ensure", ["demo"], {"force": "yes"}, "force must be true or false"),
    ("workerguard.ensure", ["demo"], {"command": ["sh", "-c", "id"]},
     "unexpected keyword argument 'command'"),
    ("workerguard.ensure", ["demo"], {"env": {"LD_PRELOAD": "x"}}, "unexpected keyword argument 'env'"),
    ("workerguard.ensure", ["demo"], {"cwd": "/"}, "unexpected keyword argument 'cwd'"),
    ("workerguard.ensure", ["demo", False, False, None, "x"], {}, "positional argument"),
    ("workerguard.ensure", [], {}, "missing 1 required positional argument"),
    ("workerguard.ensure", ["demo"], {"requested_by": "x" * 1000}, "requested_by must be a string"),
    ("workerguard.enforce", ["demo"], {"max_workers": 0}, "max_workers must be between 1 and 1000"),
    ("workerguard.enforce", ["demo"], {"max_workers": -1}, "max_workers must be between 1 and 1000"),
    ("workerguard.enforce", ["demo"], {"max_workers": 10**30}, "max_workers must be between 1 and 1000"),
    ("workerguard.enforce", ["demo"], {"max_workers": 1.5}, "max_workers must be an integer"),
    ("workerguard.enforce", ["demo"], {"max_workers": "2"}, "max_workers must be an integer"),
    ("workerguard.enforce", ["demo"], {"max_workers": True}, "max_workers must be an integer"),
    ("workerguard.stop_all", [123], {}, "profile must be a string, got int"),
    ("workerguard.stop_all", ["demo"], {"dry_run": None}, "dry_run must be true or false"),
    ("workerguard.status", [[]], {}, "profile must be a string, got list"),
    ("workerguard.status", ["demo"], {"verbose": True}, "unexpected keyword argument 'verbose'"),
]


def raw_message(harness: CeleryHarness, body: bytes, content_type: str,
                headers: dict[str, Any]) -> None:
    """Publish bytes straight to the guard's host queue, bypassing Celery's client."""
    with Connection(harness.workspace.redis_url) as conn:
        producer = conn.Producer()
        queue = harness.queue
        producer.publish(body, exchange=Exchange(queue, type="direct"), routing_key=queue,
                         content_type=content_type, content_encoding="utf-8", headers=headers,
                         serializer=None)


def task_headers(task: str) -> dict[str, Any]:
    return {"lang": "py", "task": task, "id": str(uuid.uuid4()), "argsrepr": "", "kwargsrepr": ""}


# (body, content type, headers, text the worker log must show)
BAD_MESSAGES: list[tuple[bytes, str, dict[str, Any], str]] = [
    (b"\x80\x04\x95not really pickle", "application/x-python-serialize",
     task_headers("workerguard.stop_all"), "untrusted content of type pickle"),
    (b"{not json", "application/json", task_headers("workerguard.stop_all"),
     "Can't decode message body"),
    (json.dumps([["demo"], {}, {}]).encode(), "application/json",
     task_headers("workerguard.exec"), "Received unregistered task of type 'workerguard.exec'"),
    (b"profile: demo", "application/x-yaml", task_headers("workerguard.stop_all"),
     "untrusted content of type yaml"),
    (json.dumps([["demo"], {}, {}]).encode(), "application/json", {},
     "Received and deleted unknown message"),
]


def test_thirty_odd_bad_tasks_fail_with_a_message_naming_the_problem(workspace: Workspace,
                                                                      harness: CeleryHarness):
    workspace.add_profile(max_workers=1)
    manual = [workspace.hand_started() for _ in range(2)]  # any real action would stop one
    harness.start_worker()
    assert len(BAD_TASKS) >= 30
    app = harness.client_app()
    requests = [(app.send_task(task, args=args, kwargs=kwargs, queue=harness.queue), expected)
                for task, args, kwargs, expected in BAD_TASKS]
    for request, expected in requests:
        request.get(timeout=60, propagate=False)
        assert request.state == "FAILURE", (expected, request.result)
        assert expected in str(request.result), (expected, str(request.result)[:300])
        assert len(str(request.result)) < 1000  # a 10 kB name is not echoed back whole
    assert all(p.poll() is None for p in manual)
    status = harness.call("workerguard.status", "demo")
    assert status.state == "SUCCESS"
    assert sorted(status.result["running"]) == sorted(p.pid for p in manual)


def test_malformed_messages_are_rejected_in_the_log_and_the_guard_keeps_serving(
        workspace: Workspace, harness: CeleryHarness):
    workspace.add_profile(max_workers=1)
    manual = [workspace.hand_started() for _ in range(2)]
    harness.start_worker()
    for body, content_type, headers, expected in BAD_MESSAGES:
        raw_message(harness, body, content_type, headers)
        poll_for(lambda expected=expected: expected in harness.log_tail(40_000), timeout=20,  # type: ignore[misc]
                 message=f"the guard to log {expected!r}")
        assert harness.worker.poll() is None
    status = harness.call("workerguard.status", "demo")
    assert status.state == "SUCCESS"
    assert sorted(status.result["running"]) == sorted(p.pid for p in manual)
    assert all(p.poll() is None for p in manual)
