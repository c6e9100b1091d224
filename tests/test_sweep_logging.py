"""The quiet-sweeps log filter: pure code, unit-tested on hand-made log records."""

from __future__ import annotations

import logging

from celery.utils.saferepr import saferepr

from workerguard.tasks.routing import SWEEP_TASK
from workerguard.tasks.sweep_logging import QuietSweeps


def _record(msg: str, args: object) -> logging.LogRecord:
    return logging.LogRecord("celery.app.trace", logging.INFO, __file__, 1, msg, args, None)  # type: ignore[arg-type]


def test_an_idle_sweep_is_dropped_and_an_acting_one_shows_its_message():
    idle = _record("Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s",
                   {"name": SWEEP_TASK, "id": "1", "runtime": 0.01,
                    "return_value": "[{'action': 'already_running', 'message': 'demo: running'}]"})
    assert not QuietSweeps().filter(idle)
    acting = _record("Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s",
                     {"name": SWEEP_TASK, "id": "2", "runtime": 0.01,
                      "return_value": "[{'action': 'started', 'message': 'demo: started (PIDs: 7)'}]"})
    assert QuietSweeps().filter(acting)
    assert acting.getMessage().endswith("demo: started (PIDs: 7)")


def test_a_record_the_filter_cannot_read_is_passed_unchanged():
    broken = _record("Task %(name)s succeeded: %(return_value)s",
                     {"name": "workerguard.ensure", "return_value": "{'message': '\\x'}"})
    assert QuietSweeps().filter(broken)  # the bad escape makes literal_eval raise: kept as is
    odd = _record("%s %s", ("only one",))  # getMessage() raises TypeError
    assert QuietSweeps().filter(odd)


def _succeeded(result: object) -> logging.LogRecord:
    """Celery's "succeeded" line as ``celery.app.trace`` logs it (a dict of fields)."""
    fields = {"id": "1", "name": "workerguard.status", "return_value": saferepr(result, 1024),
              "runtime": 0.1}
    record = logging.LogRecord("celery.app.trace", logging.INFO, __file__, 1,
                               "Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s",
                               None, None)
    record.args = fields
    return record


def test_a_result_whose_message_has_several_lines_is_logged_as_its_message():
    """saferepr leaves newlines raw (no Python literal): the filter once raised on it
    (which failed the status task it was logging), then passed the whole dict."""
    record = _succeeded({"action": "status", "ok": True,
                         "message": "demo: running (PIDs: 1)\nold: orphaned (PID: 2; ...)"})
    assert QuietSweeps().filter(record)
    assert record.getMessage().endswith("demo: running (PIDs: 1)\nold: orphaned (PID: 2; ...)")

