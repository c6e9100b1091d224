"""No beat is a single point of failure: each host is swept once per interval, whoever asks.

The claim (``store.sweep_claim``) runs on the Redis clock; the timer
(``tasks.sweep_timer``) sweeps a host that no beat swept. The soak tests run three real
guard workers with one beat, three beats and none, and read each host's sweeps from
outside: the host's last-sweep key in Redis, polled every 50 ms.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from tests.conftest import CeleryHarness, Workspace
from tests.support import (
    ProcessTracker,
    cli_env,
    free_port,
    poll_for,
    redis_in_tmpdir,
    short_tmpdir,
)
from workerguard.store import keys
from workerguard.store.sweep_claim import SweepClaims
from workerguard.tasks.sweep_timer import SweepTimer, due_in


def test_the_timer_is_due_one_drawn_interval_after_the_last_sweep():
    assert due_in(None, 30, 1.0) == 0.0  # never swept (or forgotten): now
    assert due_in(10.0, 30, 1.0) == 20.0
    assert due_in(10.0, 30, 0.9) == pytest.approx(17.0)
    assert due_in(40.0, 30, 1.1) == 0.0


def test_a_claim_holds_the_host_for_most_of_an_interval_on_the_redis_clock(redis_client):
    claims = SweepClaims(redis_client, f"h{uuid.uuid4().hex[:8]}")
    assert claims.age() is None
    assert claims.claim(2.0)  # an interval a stalled test process does not outlast
    assert not claims.claim(2.0)  # a second beat's copy, a timer just behind: dropped
    began = time.monotonic()
    assert claims.claim(2.0, spacing=0.0)  # the startup sweep always runs
    assert 0 <= (claims.age() or 0) <= time.monotonic() - began + 0.05  # counted from it
    poll_for(lambda: (claims.age() or 0) >= 1.8, timeout=10, interval=0.01,
             message="0.9 of the interval to pass")
    assert claims.claim(2.0)
    assert redis_client.pttl(keys.sweep(claims.host)) > 0  # forgotten after a few intervals


def test_an_unreachable_redis_is_said_once_without_its_password(caplog: pytest.LogCaptureFixture):
    port = free_port()  # nothing listens
    client = redis.Redis.from_url(f"redis://:s3cret-pw@127.0.0.1:{port}/0", socket_timeout=0.5,
                                  socket_connect_timeout=0.5)
    timer = SweepTimer(app=None, claims=SweepClaims(client, "h1"), host="h1", interval=2.0)
    with caplog.at_level(logging.INFO, logger="workerguard.sweep_timer"):
        assert timer._turn() == 2.0  # retry after min(SWEEP_TIMER_RETRY, interval)
        assert timer._turn() == 2.0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "cannot reach Redis" in warnings[0].getMessage()
    assert "s3cret-pw" not in caplog.text
    client.close()


@pytest.mark.celery
def test_with_no_beat_the_guard_sweeps_its_host_on_its_own_and_flower_shows_why(
        workspace: Workspace, harness: CeleryHarness):
    workspace.add_profile()
    workspace.guard_settings.update(sweep_interval=1.0, sweep_timer=True)
    harness.start_worker()
    events = harness.watch_events()

    def timer_sweeps() -> list[dict[str, Any]]:
        received = events.of("workerguard.sweep", "task-received")
        return [e for e in received if "timer" in str(e.get("kwargs"))]

    poll_for(lambda: len(timer_sweeps()) >= 2, timeout=60, interval=0.2,
             message="two timer sweeps, no beat running")
    [pid] = poll_for(lambda: workspace.running(), timeout=30, message="a timer sweep to start demo")
    os.kill(pid, signal.SIGKILL)
    poll_for(lambda: [p for p in workspace.running() if p != pid], timeout=60, interval=0.1,
             message="demo restarted with no beat")
    assert not [e for e in events.of("workerguard.sweep", "task-failed")]


# The soak: three guards, one Redis, beats coming and going --------------------------------

@dataclass
class SweepWatch:
    """Every sweep of some hosts as Redis records them (the start of each claimed sweep),
    read every 50 ms from outside the guards."""

    client: redis.Redis
    hosts: list[str]
    seen: dict[str, list[int]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.seen = {host: [] for host in self.hosts}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for host in self.hosts:
                value = self.client.get(keys.sweep(host))
                if value is not None and (not self.seen[host] or self.seen[host][-1] != int(value)):
                    self.seen[host].append(int(value))

    def now_ms(self) -> int:
        seconds, micros = self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def between(self, host: str, start: int, end: int) -> list[int]:
        return [t for t in self.seen[host] if start <= t < end]

    def report(self, start: int, end: int) -> dict[str, tuple[int, float]]:
        """Per host: sweeps in [start, end) and the longest gap (s), edges included."""
        out = {}
        for host in self.hosts:
            stamps = [start, *self.between(host, start, end), end]
            out[host] = (len(stamps) - 2, max(b - a for a, b in itertools.pairwise(stamps)) / 1000)
        return out

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _guards(workspace: Workspace, harness: CeleryHarness, count: int) -> tuple[list[str], list[Any]]:
    """``count`` guard workers of their own host ids, on the workspace's Redis and config."""
    workspace.add_profile()
    workspace.guard_settings.update(sweep_interval=2.0, sweep_timer=True)
    workers = [harness.start_worker()]
    hosts = [workspace.host_id]
    config = str(workspace.write_config())
    for _ in range(count - 1):
        host = f"t{uuid.uuid4().hex[:10]}"
        workspace.tracker.host_ids.add(host)
        log = (workspace.home / f"guard-{host}.log").open("ab")
        workers.append(workspace.tracker.popen(
            [sys.executable, "-m", "workerguard.cli", "worker", "--config", config, "--loglevel", "INFO"],
            stdout=log, stderr=log, env=cli_env(WORKERGUARD_HOST_ID=host)))
        log.close()
        hosts.append(host)
    app = harness.client_app()
    for host in hosts[1:]:
        node = f"workerguard@{host}"
        poll_for(lambda: bool(app.control.ping(destination=[node], timeout=0.5)),  # noqa: B023
                 timeout=90, interval=0.2, message=f"guard {host} to answer ping")
    return hosts, workers


def _assert_cadence(report: dict[str, tuple[int, float]], seconds: float, label: str) -> None:
    print(f"\n{label}: " + ", ".join(f"{h}: {n} sweeps, max gap {g:.2f} s" for h, (n, g) in report.items()))
    expected = seconds / 2.0
    for host, (count, gap) in report.items():
        assert expected - 4 <= count <= expected + 4, (label, host, count)
        assert gap <= 3.5, (label, host, gap)


@dataclass
class World:
    """Three guard workers on a redis-server of their own (a beat's sweeps reach every guard
    of its broker, so side-by-side cases need a Redis each), watched from outside."""

    harness: CeleryHarness
    hosts: list[str]
    workers: list[Any]
    watch: SweepWatch


def _world(stack: contextlib.ExitStack, like: Workspace, tracker: ProcessTracker,
           beats: int = 0) -> World:
    server = stack.enter_context(redis_in_tmpdir("wg-sweep-"))
    world = Workspace(redis_url=server.url, home=short_tmpdir(), tracker=tracker,
                      guard_settings=dict(like.guard_settings))
    stack.callback(world.remove)
    stack.callback(tracker.end_all)  # LIFO: the processes end before all that
    harness = CeleryHarness(world)
    stack.callback(harness.close)
    hosts, workers = _guards(world, harness, 3)
    for _ in range(beats):
        harness.start_beat()
    client = server.client()
    stack.callback(client.close)
    watch = SweepWatch(client, hosts)
    stack.callback(watch.stop)
    return World(harness, hosts, workers, watch)


def _soak_side_by_side(watches: list[SweepWatch], seconds: float) -> list[dict[str, tuple[int, float]]]:
    starts = [watch.now_ms() for watch in watches]
    time.sleep(seconds)  # the soak's length, not a synchronisation: the watch threads sample
    return [watch.report(start, watch.now_ms()) for watch, start in zip(watches, starts, strict=True)]


@pytest.mark.slow
@pytest.mark.celery
def test_three_guards_are_each_swept_once_per_interval_with_one_beat_three_beats_or_none(
        workspace: Workspace, tracker: ProcessTracker):
    """The three cases side by side, for the same minute."""
    with contextlib.ExitStack() as stack:
        cases = {"no beat": 0, "one beat": 1, "three beats": 3}
        worlds = [_world(stack, workspace, tracker, beats) for beats in cases.values()]
        reports = _soak_side_by_side([world.watch for world in worlds], 60)
        for label, report in zip(cases, reports, strict=True):
            _assert_cadence(report, 60, label)


@pytest.mark.slow
@pytest.mark.celery
def test_a_killed_beat_or_guard_leaves_every_other_host_swept_on_time(
        workspace: Workspace, tracker: ProcessTracker):
    """Side by side: a trio whose beat is SIGKILLed mid-run, and a trio (no beat, its
    timers sweep) one of whose guards is SIGKILLed."""
    with contextlib.ExitStack() as stack:
        beaten = _world(stack, workspace, tracker, beats=1)
        lessened = _world(stack, workspace, tracker)
        _soak_side_by_side([beaten.watch], 10)
        beaten.harness.beats[0].send_signal(signal.SIGKILL)  # mid-run, mid-interval
        lessened.workers[1].send_signal(signal.SIGKILL)
        survivors = SweepWatch(lessened.watch.client, [lessened.hosts[0], lessened.hosts[2]])
        stack.callback(survivors.stop)
        after_beat, after_guard = _soak_side_by_side([beaten.watch, survivors], 30)
        _assert_cadence(after_beat, 30, "beat killed")
        _assert_cadence(after_guard, 30, "one guard killed")
