"""The result's text that Flower shows is Celery's own, however it is written
(``workerguard/tasks/result_repr.py``): generated values against Celery's saferepr, the
values it must leave to saferepr, and a real guard worker's task-succeeded events."""

from __future__ import annotations

from collections import OrderedDict
from decimal import Decimal
from typing import Any

import pytest
from celery.utils.saferepr import saferepr as celery_saferepr
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import CeleryHarness, Workspace
from tests.support import poll_for
from workerguard.tasks import result_repr
from workerguard.tasks.result_repr import saferepr

scalars = (st.none() | st.booleans() | st.integers() | st.floats()
           | st.text(alphabet=st.characters(), max_size=12)
           | st.sampled_from(["it's", "\\", "'", "\"'\"", "a\nb", "é", ""]))
keys = st.text(max_size=6) | st.integers(-5, 5) | st.booleans() | st.none()
values = st.recursive(
    scalars,
    lambda inner: (st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4)
                   | st.lists(inner, max_size=3).map(tuple)),
    max_leaves=30)
caps = st.none() | st.integers(0, 120) | st.just(1024)


@settings(max_examples=3000, deadline=None)
@given(values, caps)
def test_generated_values_get_celerys_text(value: Any, maxlen: int | None) -> None:
    assert saferepr(value, maxlen) == celery_saferepr(value, maxlen)


def an_ensure_result() -> dict[str, Any]:
    return {"profile": "rpa-bot", "host": "host-7", "action": "already_running",
            "running": [4242], "started": [], "stopped": [], "kept": [4242],
            "dry_run": False, "time": 1765000000.123, "spare": [], "cleaned": [],
            "backoff": {"failures": 2, "next_attempt": 1765000004.5}, "ok": True,
            "message": "rpa-bot: already running (pid 4242)"}


def deep() -> dict[str, Any]:
    return {"a": [{"b": [1, {"c": 2}], "t": (1,), "u": ((),)}], "e": {}}


@pytest.mark.parametrize("value", [
    an_ensure_result(), deep(), [[[[1]]]], ((((1,),),),), {(1, "x"): 2}, [], {}, (),
    float("nan"), float("-inf"), 10 ** 30, -0.0, True,
])
@pytest.mark.parametrize("maxlen", [None, 0, 1, 25, 1024])
def test_the_shapes_a_guard_returns_get_celerys_text(value: Any, maxlen: int | None) -> None:
    assert saferepr(value, maxlen) == celery_saferepr(value, maxlen)


def cyclic() -> list[Any]:
    loop: list[Any] = [1]
    loop.append(loop)
    return loop


class Tagged(dict[str, Any]):
    pass


@pytest.mark.parametrize("value", [
    cyclic(), {"s": {1, 2}}, frozenset(), b"bytes", Decimal("1.5"), 1 + 2j,
    Tagged(a=1), OrderedDict(a=1), [object()], {"x": "y" * 2000},
])
def test_values_it_does_not_write_go_to_celerys_saferepr(value: Any) -> None:
    assert saferepr(value, 1024) == celery_saferepr(value, 1024)


def test_install_puts_it_in_celerys_tracer_and_uninstall_takes_it_out() -> None:
    import celery.app.trace

    try:
        result_repr.install()
        assert celery.app.trace.saferepr is saferepr
    finally:
        result_repr.uninstall()
    assert celery.app.trace.saferepr is celery_saferepr


@pytest.mark.celery
def test_a_guard_workers_succeeded_events_carry_celerys_text(
        workspace: Workspace, harness: CeleryHarness) -> None:
    workspace.add_profile()
    harness.start_worker()
    events = harness.watch_events()
    requests = [harness.call("workerguard.ensure", "demo"),
                harness.call("workerguard.status", "demo")]
    for request in requests:
        assert request.successful(), request.result

    def texts() -> dict[str, str]:
        return {e["uuid"]: e["result"] for name in ("workerguard.ensure", "workerguard.status")
                for e in events.of(name, "task-succeeded")}

    poll_for(lambda: len(texts()) == 2, timeout=30, message="both task-succeeded events")
    shown = texts()
    for request in requests:
        # the result as the guard returned it: JSON keeps dicts, lists, strings and numbers
        assert shown[request.id] == celery_saferepr(request.result, 1024)
