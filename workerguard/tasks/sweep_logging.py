"""A quiet guard log: a sweep that changed nothing writes no INFO line.

Celery logs every task twice at INFO ("received", then "succeeded in …: <result>"). With
a sweep every ``sweep_interval`` that is most of an idle guard's log, each "succeeded"
line carrying every profile's whole result dict. Here, on the guard worker's Celery
loggers:

* a sweep's "received" and "succeeded" lines, and its "skipped" line, are dropped
  unless the worker logs at DEBUG, when the sweep acted on nothing (every profile
  ``already_running``, ``paused``, ``backoff`` or ``nothing_to_do``);
* the "succeeded" line of every workerguard task shows the result's ``message`` (what
  the CLI prints: ``rpa: started (PIDs: 4242)``), not the whole dict.

Task events (Flower) and results are untouched: only log lines change.
"""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Mapping

from workerguard.tasks.routing import SWEEP_TASK

IDLE_ACTIONS = frozenset({"already_running", "paused", "backoff", "nothing_to_do"})
LOGGERS = ("celery.app.trace", "celery.worker.strategy", "workerguard.tasks")
_ACTION = re.compile(r"'action': '(\w+)'")
_MESSAGE = re.compile(r"'message': ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")")


def acted(shown: str) -> bool:
    """True if a sweep's result, as Celery's log line shows it (the ``repr`` of one
    contract dict per profile, maybe cut short), has any action that is not idle."""
    return any(action not in IDLE_ACTIONS for action in _ACTION.findall(shown))


def _text(literal: str) -> str:
    """The string a quoted literal of Celery's ``saferepr`` stands for. ``saferepr`` leaves
    a newline in a string as it is (a status with orphans has several lines), which is
    no Python literal; anything that still does not parse is shown as it is."""
    try:
        return str(ast.literal_eval(literal.replace("\r", "\\r").replace("\n", "\\n")))
    except (ValueError, SyntaxError):
        return literal


def _said(shown: str) -> str:
    """A workerguard result's line(s) as the CLI prints them: the messages of what acted
    (all of them for one request's dict); anything else as it is."""
    actions, messages = _ACTION.findall(shown), _MESSAGE.findall(shown)
    if not messages:
        return shown
    if shown.startswith("{"):
        return _text(messages[0])
    return "; ".join(_text(m) for a, m in zip(actions, messages, strict=False)
                     if a not in IDLE_ACTIONS)


class QuietSweeps(logging.Filter):
    """Never raises and never loses a line: a record it cannot read is passed unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return self._quiet(record)
        except Exception:  # a log filter that raises would drop the line it was given
            return True

    @staticmethod
    def _quiet(record: logging.LogRecord) -> bool:
        fields = record.args if isinstance(record.args, Mapping) else None
        debug = logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        if fields is None or not str(fields.get("name", "")).startswith("workerguard."):
            return debug or not record.getMessage().startswith(f"{SWEEP_TASK}[")
        if "return_value" in fields:
            shown = str(fields["return_value"])
            if fields["name"] == SWEEP_TASK and not acted(shown) and not debug:
                return False
            record.args = {**fields, "return_value": _said(shown)}
            return True
        return not (fields["name"] == SWEEP_TASK and not debug)  # "received": the result tells


def install() -> None:
    """Add the filter to the loggers of the guard worker (idempotent)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, QuietSweeps) for f in logger.filters):
            logger.addFilter(QuietSweeps())
