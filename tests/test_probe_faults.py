"""Probes that cannot break the prober: a port that answers garbage, resets, or trickles.

Each bad answer is a failed probe with its reason, within the probe's timeout; the prober
goes on probing (its lane slot is freed, its thread lives) and sees the port heal; a
readiness wait takes a bad answer as a failed attempt, and a real guard's converge goes
on. The servers are real sockets (``tests/misbehaving.py``); no latency upper bound is
asserted: a trickled answer is long enough that only a probe bound by one deadline fails.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import CeleryHarness, Workspace
from tests.misbehaving import MisbehavingServer, Mode
from tests.support import events, free_port, poll_for
from tests.test_health import pids, probed_profile
from tests.test_probes import Recorder, probe, target
from workerguard.probes.deadline import MAX_REDIRECTS
from workerguard.probes.run import ProbeResult, run_probe, wait_ready
from workerguard.probes.scheduler import Prober

BAD: list[Mode] = ["garbage", "reset", "trickle-head", "trickle-body"]
REASON = {"garbage": "BadStatusLine", "reset": "", "trickle-head": "timed out",
          "trickle-body": "timed out"}
"""What the failed probe's output says (``reset``: the kernel's word varies with timing)."""
TIMEOUT = 2.0


@pytest.fixture
def server() -> Iterator[Callable[[Mode], MisbehavingServer]]:
    made: list[MisbehavingServer] = []

    def make(mode: Mode) -> MisbehavingServer:
        made.append(MisbehavingServer(mode))
        return made[-1]

    yield make
    for each in made:
        each.close()


def http_probe(url: str, **timings: Any) -> Any:
    return probe(kind="http", url=url, timeout=TIMEOUT, **timings)


@pytest.mark.parametrize("mode", BAD)
def test_a_port_that_misbehaves_is_a_failed_probe_with_its_reason(
        server: Callable[[Mode], MisbehavingServer], mode: Mode) -> None:
    bad = server(mode)
    result = run_probe(http_probe(bad.url), target(1))
    assert not result.ok, result
    assert REASON[mode] in result.output, result.output
    assert bad.url in result.output


def test_redirects_are_followed_up_to_five_and_a_loop_fails(
        server: Callable[[Mode], MisbehavingServer]) -> None:
    healthy, hop = server("healthy"), server("redirect")
    hop.redirect_to = healthy.url
    result = run_probe(http_probe(hop.url), target(1))
    assert result.ok and f"HTTP 200 from {healthy.url}" in result.output, result
    loop = server("redirect")
    result = run_probe(http_probe(loop.url), target(1))
    assert not result.ok and "more than 5 redirects" in result.output, result
    assert loop.connections == 1 + MAX_REDIRECTS


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_port_that_never_answers_fails_at_its_deadline(
        server: Callable[[Mode], MisbehavingServer], scheme: str) -> None:
    """Plain HTTP waits for the status line, HTTPS for the TLS handshake: both end at the
    probe's one deadline."""
    silent = server("silent")
    result = run_probe(http_probe(f"{scheme}://127.0.0.1:{silent.port}/"), target(1))
    assert not result.ok and f"timed out after {TIMEOUT:g} s" in result.output, result


@pytest.mark.parametrize("mode", BAD)
def test_probing_goes_on_after_a_misbehaving_answer_and_sees_the_port_heal(
        server: Callable[[Mode], MisbehavingServer], mode: Mode) -> None:
    bad = server(mode)
    recorder = Recorder()
    # One slot per profile: a slot leaked by a probe that raised would stop all probing.
    prober = Prober(on_unhealthy=recorder.on_unhealthy, on_result=recorder.on_result, per_profile=1)
    try:
        prober.watch("web-0", "web", http_probe(bad.url, interval=0.2, start_interval=0.2,
                                                start_timeout=0.01, failure_threshold=2),
                     target(1))
        poll_for(lambda: len(recorder.of("web-0")) >= 3, timeout=60,
                 message="three probes of the misbehaving port")
        assert not any(r.ok for r in recorder.of("web-0"))
        poll_for(lambda: recorder.unhealthy, timeout=30, message="the unhealthy verdict")
        bad.mode = "healthy"
        poll_for(lambda: any(r.ok for r in recorder.of("web-0")), timeout=60,
                 message="a healthy answer once the port heals")
        assert prober.snapshot()["web-0"]["state"] == "healthy"
    finally:
        prober.stop()


def test_a_probe_thread_that_cannot_be_started_is_tried_again(
        server: Callable[[Mode], MisbehavingServer], monkeypatch: pytest.MonkeyPatch) -> None:
    """A process out of threads (``RuntimeError: can't start new thread``): the due probe
    waits in its queue, the timer lives and tries again, and probing begins once it can."""
    healthy = server("healthy")
    refused: list[str] = []
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if thread.name == "probe-worker" and len(refused) < 3:
            refused.append(thread.name)
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    recorder = Recorder()
    prober = Prober(on_unhealthy=recorder.on_unhealthy, on_result=recorder.on_result)
    try:
        prober.watch("web-0", "web", http_probe(healthy.url, interval=0.2), target(1))
        poll_for(lambda: len(recorder.of("web-0")) >= 2, timeout=30,
                 message="probes once a thread could be started")
        assert len(refused) == 3 and all(r.ok for r in recorder.of("web-0"))
    finally:
        prober.stop()


@pytest.mark.parametrize("mode", BAD)
def test_a_readiness_wait_takes_a_misbehaving_answer_as_a_failed_attempt(
        server: Callable[[Mode], MisbehavingServer], mode: Mode) -> None:
    bad = server(mode)
    seen: list[ProbeResult] = []
    done: list[ProbeResult] = []
    spec = http_probe(bad.url, start_interval=0.2, start_timeout=120)
    waiter = threading.Thread(target=lambda: done.append(
        wait_ready(spec, target(1), on_result=seen.append)))
    waiter.start()
    try:
        poll_for(lambda: len(seen) >= 2, timeout=60, message="two failed attempts")
        assert not any(r.ok for r in seen)
        bad.mode = "healthy"
        waiter.join(60)
        assert done and done[0].ok, done
    finally:
        bad.mode = "healthy"
        waiter.join(60)


def test_a_worker_answering_garbage_at_first_is_started_once_it_answers_http(
        workspace: Workspace, redis_client: Any) -> None:
    """A real guard: the bad answers are failed attempts; the converge goes on and starts it."""
    port = free_port()
    probed_profile(workspace, "web", "http", str(port), str(workspace.home / "web-never"),
                   "--garbage-first", "3",
                   probe={"kind": "http", "url": f"http://127.0.0.1:{port}/"})
    result = workspace.guard(redis_client).ensure("web").contract()
    assert result["action"] == "started", result
    assert result["started"] == pids(workspace, "web")


@pytest.mark.celery
def test_a_worker_whose_port_starts_answering_garbage_is_replaced(
        workspace: Workspace, harness: CeleryHarness, redis_client: Any) -> None:
    """A real guard worker: its prober lives through ``BadStatusLine`` and replaces the worker."""
    port = free_port()
    probed_profile(workspace, "web", "http", str(port), str(workspace.home / "web-never"),
                   "--garbage", str(workspace.home / "web-{instance}.garbage"),
                   probe={"kind": "http", "url": f"http://127.0.0.1:{port}/"})
    harness.start_worker()
    [old] = harness.call("workerguard.ensure", "web").result["started"]
    [entry] = harness.call("workerguard.status", "web").result["profiles"]["web"]["instances"]
    (workspace.home / f"web-{entry['instance_id']}.garbage").touch()
    poll_for(lambda: (len(events(redis_client, "replaced", "web")) == 1
                      and old not in pids(workspace, "web") and len(pids(workspace, "web")) == 1),
             timeout=60, message="the worker answering garbage to be replaced")
    [unhealthy] = events(redis_client, "unhealthy", "web")
    assert b"BadStatusLine" in unhealthy[b"detail"]
    [new] = pids(workspace, "web")
    status = harness.call("workerguard.status", "web").result["profiles"]["web"]["instances"]
    poll_for(lambda: (harness.call("workerguard.status", "web").result["profiles"]["web"]
                      ["instances"][0].get("health", {}).get("state")) == "healthy",
             timeout=30, message="the replacement to be probed healthy")
    assert [i["pid"] for i in status] == [new]
