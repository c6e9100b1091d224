"""Readiness and liveness count from the instance's exact start, on the monotonic clock.

The exact start is the moment ``spawn.launch`` started the process (``spawn.launched_at``),
not psutil's create time (built on a boot time in whole seconds, it was 0.77 s early on
one VM, and follows the wall clock). A worker's own view of its start is the kernel's
(``/proc/self/stat``, ``tests/probe_workers.py process_age``). Only lower bounds on
latency are asserted.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.conftest import CeleryHarness, Workspace
from tests.support import ProcessTracker, free_port, poll_for
from tests.test_health import pids, probed_profile
from tests.test_probes import Recorder, probe, target
from workerguard.probes.readiness import instance_start
from workerguard.probes.run import ProbeResult, wait_ready
from workerguard.probes.scheduler import Prober
from workerguard.workers import spawn
from workerguard.workers.model import Instance

START_TIMEOUT = 3.0


def _web(workspace: Workspace, *args: str) -> int:
    """An http worker probed every second (the default start_interval: a wait that gave up
    once the next probe would be late gave up up to a second early) for 3 s."""
    port = free_port()
    probed_profile(workspace, "web", "http", str(port), str(workspace.home / "web-never"), *args,
                   probe={"kind": "http", "url": f"http://127.0.0.1:{port}/", "timeout": 1.0,
                          "start_interval": 1.0, "start_timeout": START_TIMEOUT})
    return port


@pytest.mark.celery
def test_a_worker_listening_2_5_s_after_its_start_with_start_timeout_3_is_ready(
        workspace: Workspace, harness: CeleryHarness) -> None:
    _web(workspace, "--listen-at", "2.5")
    harness.start_worker()
    done = harness.call("workerguard.ensure", "web")
    assert done.state == "SUCCESS", done.result  # not given up before start_timeout
    result = done.result
    assert result["action"] == "started", result
    assert result["started"] == pids(workspace, "web")


@pytest.mark.celery
def test_a_worker_that_never_listens_is_given_up_no_sooner_than_3_s_after_its_start(
        workspace: Workspace, harness: CeleryHarness) -> None:
    _web(workspace, "--listen-at", "3600", "--term-file", str(workspace.home / "web-{instance}.term"))
    harness.start_worker()
    asked = time.monotonic()  # before the spawn: the start is later
    failed = harness.call("workerguard.ensure", "web")
    assert failed.state == "FAILURE", failed.result
    assert f"not ready within start_timeout {START_TIMEOUT:g} s" in str(failed.result)
    [term] = workspace.home.glob("web-*.term")
    signalled, age = (float(x) for x in term.read_text().split())
    assert signalled - asked >= START_TIMEOUT, "given up before start_timeout (spawn side)"
    assert age >= START_TIMEOUT, "given up before start_timeout (the kernel's start, to the tick)"


def test_a_wall_clock_set_back_an_hour_does_not_stretch_a_readiness_wait(
        monkeypatch: pytest.MonkeyPatch) -> None:
    spec = probe(kind="tcp", port=free_port(), timeout=0.5, start_interval=0.1, start_timeout=1.0)
    real = time.time
    done: list[ProbeResult] = []

    def set_back(_result: ProbeResult) -> None:
        monkeypatch.setattr(time, "time", lambda: real() - 3600)

    begun = time.monotonic()
    waiter = threading.Thread(target=lambda: done.append(
        wait_ready(spec, target(1), started=begun, on_result=set_back)), daemon=True)
    waiter.start()
    poll_for(lambda: done, timeout=30, message="the wait to end (not an hour later)")
    assert not done[0].ok
    assert time.monotonic() - begun >= 1.0


def test_a_liveness_start_window_counts_from_the_start_given_on_the_monotonic_clock(
        tmp_path: Path) -> None:
    """An instance that started 2 s ago with a 3 s start window: its failures count from
    1 s after the watch, not from the watch (nor from a wall-clock time)."""
    spec = probe(kind="heartbeat", path=str(tmp_path / "never"), max_age=1, interval=0.1,
                 start_interval=0.1, start_timeout=START_TIMEOUT, failure_threshold=1)
    seen = Recorder()
    prober = Prober(on_unhealthy=seen.on_unhealthy, on_result=seen.on_result)
    try:
        started = time.monotonic() - 2.0
        prober.watch("i0", "bot", spec, target(1), started=started)
        poll_for(lambda: seen.unhealthy, timeout=30, message="the unhealthy verdict")
        assert seen.unhealthy[0][0] - started >= START_TIMEOUT
        assert len(seen.of("i0")) >= 2, "probed while starting, failures not counted"
    finally:
        prober.stop()


def test_an_instance_this_process_launched_starts_when_launch_started_it(
        workspace: Workspace, tracker: ProcessTracker, tmp_path: Path) -> None:
    name = workspace.add_profile()
    profile = workspace.config().profiles[name]
    before = time.monotonic()
    launched = spawn.launch(profile, workspace.host_id, tmp_path / "log", None)
    after = time.monotonic()
    tracker.popens.append(launched.popen)
    exact = spawn.launched_at(launched.instance_id)
    assert exact is not None and before <= exact <= after
    instance = Instance(profile=name, pid=launched.popen.pid, start=launched.start,
                        instance_id=launched.instance_id)
    assert instance_start(instance) == exact
    refound = Instance(profile=name, pid=launched.popen.pid, start=launched.start,
                       instance_id="f" * 32)  # not launched here: from its age
    assert instance_start(refound) <= exact + 0.01, "a start from the process table is never late"
