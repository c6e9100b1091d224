"""Health probes against real processes: each kind, timeouts, the scheduler's promises."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from tests.support import LineReader, ProcessTracker, alive, free_port, poll_for
from workerguard.probes.run import ProbeResult, run_probe, wait_ready
from workerguard.probes.scheduler import Prober
from workerguard.probes.spec import AnyProbe, ProbeSpec, ProbeTarget

WORKERS = Path(__file__).resolve().parent / "probe_workers.py"
SPEC: TypeAdapter[AnyProbe] = TypeAdapter(ProbeSpec)
MARGIN = 1.0
"""Seconds of slack for a loaded 2-core machine on top of every computed bound."""


def probe(**fields: Any) -> AnyProbe:
    return SPEC.validate_python(fields)


def target(pid: int, index: int = 0, instance: str = "") -> ProbeTarget:
    return ProbeTarget(pid=pid, instance=instance or f"{index:02x}" * 8, index=index)


def start(tracker: ProcessTracker, *args: str) -> subprocess.Popen[str]:
    """Start a stand-in worker and wait until it says it serves."""
    proc = tracker.popen([sys.executable, str(WORKERS), *args], stdout=subprocess.PIPE, text=True)
    LineReader(proc.stdout).until(lambda line: line == "ready", timeout=20, message=f"{args[0]} ready")
    return proc


def failure(spec: AnyProbe, tgt: ProbeTarget) -> ProbeResult | None:
    """The result of one probe if it failed."""
    result = run_probe(spec, tgt)
    return None if result.ok else result


def consecutive_free_ports(count: int) -> int:
    """A base port such that base .. base+count-1 are all free right now."""
    for _ in range(100):
        base = free_port()
        with contextlib.ExitStack() as stack:
            try:
                for offset in range(count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", base + offset))
            except OSError:
                continue
            return base
    raise AssertionError("no run of free ports")


@dataclass
class Recorder:
    """What a Prober told its owner, with the monotonic time it was told."""

    results: list[tuple[float, str, Hashable | None, ProbeResult]] = field(default_factory=list)
    unhealthy: list[tuple[float, str, Hashable, ProbeResult]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_result(self, profile: str, key: Hashable | None, result: ProbeResult) -> None:
        with self.lock:
            self.results.append((time.monotonic(), profile, key, result))

    def on_unhealthy(self, profile: str, key: Hashable, result: ProbeResult) -> None:
        with self.lock:
            self.unhealthy.append((time.monotonic(), profile, key, result))

    def of(self, key: Hashable) -> list[ProbeResult]:
        with self.lock:
            return [r for _, _, k, r in self.results if k == key]

    def count(self, profile: str) -> int:
        with self.lock:
            return sum(1 for _, p, _, _ in self.results if p == profile)


@pytest.fixture
def prober() -> Iterator[Callable[..., tuple[Prober, Recorder]]]:
    made: list[Prober] = []

    def make(**kwargs: Any) -> tuple[Prober, Recorder]:
        recorder = Recorder()
        made.append(Prober(on_unhealthy=recorder.on_unhealthy, on_result=recorder.on_result, **kwargs))
        return made[-1], recorder

    yield make
    for each in made:
        each.stop()


# --- the definition --------------------------------------------------------------------
class _Profile(BaseModel):
    """How the profile model embeds a probe."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    command: list[str]
    probe: ProbeSpec | None = None


def _load(body: str) -> _Profile:
    table = tomllib.loads('[profiles.rpa]\ncommand = ["rpa"]\n[profiles.rpa.probe]\n' + body)
    return _Profile.model_validate(table["profiles"]["rpa"])


@pytest.mark.parametrize(("body", "names"), [
    ('kind = "http"\nurl = "http://127.0.0.1:{prot}/health"\nport = 8000', ["probe.http", "{prot}", "url"]),
    ('kind = "http"\nurl = "http://127.0.0.1:8000/"\ninterval = "10"', ["probe.http.interval"]),
    ('kind = "tcp"\nport = 8000\ntimout = 2', ["probe.tcp.timout", "Extra inputs"]),
    ('kind = "tcp"\nport = 70000', ["probe.tcp.port"]),
    ('kind = "heartbeat"\npath = "/run/rpa/{instance}"', ["probe.heartbeat.max_age", "Field required"]),
    ('kind = "heartbeat"\npath = "beat"\nmax_age = 60', ["probe.heartbeat.path", "absolute"]),
    ('kind = "command"\ncommand = ["check", "{pid.__class__}"]', ["probe.command.command", "placeholder"]),
    ('kind = "command"\ncommand = ["check"]\nfailure_threshold = 0', ["probe.command.failure_threshold"]),
    ('kind = "htpp"\nurl = "http://x/"', ["probe", "'htpp'", "'http'"]),
    ('url = "http://x/"', ["probe", "kind"]),
    ('kind = "http"\nurl = "http://x:{port}/"', ["url", "{port} is the instance's port", "port = "]),
    ('kind = "http"\nurl = "http://x/"\nport = 8000', ["url", "no {port}"]),
])
def test_a_bad_probe_table_is_rejected_with_an_error_naming_the_field(body: str, names: list[str]) -> None:
    with pytest.raises(ValidationError) as caught:
        _load(body)
    for name in names:
        assert name in str(caught.value)


def test_a_probe_table_takes_kubernetes_like_defaults_and_is_frozen() -> None:
    loaded = _load('kind = "tcp"\nport = 8000').probe
    assert loaded is not None and loaded.kind == "tcp"
    assert (loaded.interval, loaded.timeout, loaded.failure_threshold, loaded.initial_delay,
            loaded.start_interval, loaded.start_timeout, loaded.host) == (10, 5, 3, 0, 1, 60, "127.0.0.1")
    with pytest.raises(ValidationError):
        loaded.port = 9000


# --- each kind, once -------------------------------------------------------------------
def test_a_command_probe_gets_the_instance_in_placeholders_and_environment() -> None:
    spec = probe(kind="command", command=[
        sys.executable, "-c",
        "import os, sys; print(sys.argv[1:], os.environ['WORKERGUARD_PID'], "
        "os.environ['WORKERGUARD_PROBED_INSTANCE'], os.environ['WORKERGUARD_INDEX'], "
        "os.environ['WORKERGUARD_HELPER'], sorted(k for k in os.environ if k in "
        "('WORKERGUARD_PROFILE', 'WORKERGUARD_HOST_ID', 'WORKERGUARD_INSTANCE')), "
        "'WORKERGUARD_REDIS_URL' in os.environ); sys.exit(int(sys.argv[-1]) % 2)",
        "{pid}", "{instance}", "{index}"])
    instance_env = {"PATH": os.environ["PATH"], "WORKERGUARD_PROFILE": "bot",
                    "WORKERGUARD_HOST_ID": "h1", "WORKERGUARD_INSTANCE": "beef"}
    ok = run_probe(spec, ProbeTarget(pid=os.getpid(), instance="beef", index=2, env=instance_env))
    assert ok.ok, ok
    # a probe is not its instance: none of the instance's marks, a helper's instead
    assert ok.output == f"['{os.getpid()}', 'beef', '2'] {os.getpid()} beef 2 probe [] False"
    failed = run_probe(spec, target(os.getpid(), index=3, instance="beef"))
    assert not failed.ok
    assert failed.output.startswith("exit code 1: ")


def test_a_command_probe_output_is_cut() -> None:
    result = run_probe(probe(kind="command", command=[sys.executable, "-c", "print('x' * 100000)"]),
                       target(os.getpid()))
    assert result.ok
    assert len(result.output) == 500


def test_an_http_probe_passes_on_200_and_fails_on_500(tracker: ProcessTracker, tmp_path: Path) -> None:
    port, flag = free_port(), tmp_path / "sick"
    worker = start(tracker, "http", str(port), str(flag))
    spec = probe(kind="http", url="http://127.0.0.1:{port}/health?i={instance}", port=port, timeout=2)
    healthy = run_probe(spec, target(worker.pid))
    assert healthy.ok, healthy
    assert healthy.output.startswith(f"HTTP 200 from http://127.0.0.1:{port}/health")
    flag.touch()
    sick = run_probe(spec, target(worker.pid))
    assert not sick.ok
    assert sick.output.startswith("HTTP 500 from") and f"status 500 from {worker.pid}" in sick.output
    worker.kill()
    worker.wait()
    down = run_probe(spec, target(worker.pid))
    assert not down.ok and "refused" in down.output


def test_an_http_probe_that_gets_no_answer_fails_at_its_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # listens, never answers
        port = silent.getsockname()[1]
        result = run_probe(probe(kind="http", url=f"http://127.0.0.1:{port}/", timeout=0.5),
                           target(os.getpid()))
    assert not result.ok and "timed out" in result.output
    assert 0.4 < result.duration < 0.5 + MARGIN


def test_a_tcp_probe_fails_once_the_worker_closes_its_port(tracker: ProcessTracker, tmp_path: Path) -> None:
    port, flag = free_port(), tmp_path / "close"
    worker = start(tracker, "tcp", str(port), str(flag))
    spec = probe(kind="tcp", port=port, timeout=1)
    assert run_probe(spec, target(worker.pid)).ok
    flag.touch()
    failed = poll_for(lambda: failure(spec, target(worker.pid)), 10, message="the port to close")
    assert failed is not None
    assert f"connect to 127.0.0.1:{port}" in failed.output
    assert worker.poll() is None, "the worker lives on: only its port is gone"


def test_a_heartbeat_probe_fails_once_touching_stops(tracker: ProcessTracker, tmp_path: Path) -> None:
    beat, stop = tmp_path / "beat-{instance}", tmp_path / "stop"
    tgt = target(os.getpid(), instance="abc")
    spec = probe(kind="heartbeat", path=str(beat), max_age=0.5)
    missing = run_probe(spec, tgt)
    assert not missing.ok and missing.output.startswith("no heartbeat file")
    worker = start(tracker, "heartbeat", str(tmp_path / "beat-abc"), str(stop), "0.1")
    tgt = target(worker.pid, instance="abc")
    assert run_probe(spec, tgt).ok
    stop.touch()
    stopped = time.monotonic()
    stale = poll_for(lambda: failure(spec, tgt), 10, message="a stale beat")
    assert stale is not None
    assert time.monotonic() - stopped >= 0.5 - 0.15
    assert "max_age 0.5 s" in stale.output


def adopt_pids(tracker: ProcessTracker, pidfile: Path) -> None:
    """Let the tracker end what a hanging probe started, should the test have failed."""
    if pidfile.exists():
        for pid in pidfile.read_text().split():
            tracker.adopt(int(pid))


def _hang_pids(pidfile: Path) -> list[int]:
    def written() -> list[int]:
        return [int(p) for p in pidfile.read_text().split()] if pidfile.exists() else []

    return poll_for(written, 10, message="the hanging probe's pids")


def test_a_hanging_probe_is_killed_with_its_whole_group_at_its_timeout(
        tracker: ProcessTracker, tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    spec = probe(kind="command", command=[sys.executable, str(WORKERS), "hang", str(pidfile)], timeout=1.5)
    try:
        result = run_probe(spec, target(os.getpid()))
        pids = _hang_pids(pidfile)
        assert not result.ok
        assert result.output.startswith("timed out after 1.5 s")
        assert 1.5 <= result.duration < 1.5 + MARGIN
        assert len(pids) == 2
        poll_for(lambda: all(not alive(pid) for pid in pids), 5, message="the probe and its child to be gone")
    finally:
        adopt_pids(tracker, pidfile)


# --- the scheduler ---------------------------------------------------------------------
def test_the_unhealthy_callback_fires_within_interval_times_threshold_and_only_once(
        tracker: ProcessTracker, prober: Callable[..., tuple[Prober, Recorder]], tmp_path: Path) -> None:
    port, flag = free_port(), tmp_path / "sick"
    worker = start(tracker, "http", str(port), str(flag))
    spec = probe(kind="http", url="http://127.0.0.1:{port}/", port=port, interval=0.3, timeout=1,
                 failure_threshold=3)
    watcher, seen = prober()
    watcher.watch("i0", "web", spec, target(worker.pid))
    poll_for(lambda: watcher.snapshot()["i0"]["state"] == "healthy", 10, message="healthy")
    flag.touch()
    flipped = time.monotonic()
    poll_for(lambda: seen.unhealthy, 10, message="the unhealthy callback")
    took = seen.unhealthy[0][0] - flipped
    assert took <= 0.3 * 3 + MARGIN, took
    # A probe already in flight at the touch can be the first failure (it began before
    # ``flipped``): the third then comes up to one probe's duration short of 2 intervals.
    assert took >= 0.3 * 2 - 0.1, "three failures in a row, not one"
    _, profile, key, result = seen.unhealthy[0]
    assert (profile, key, result.ok) == ("web", "i0", False) and "HTTP 500" in result.output
    later = len(seen.of("i0"))
    poll_for(lambda: len(seen.of("i0")) >= later + 4, 10, message="four more probes")
    assert len(seen.unhealthy) == 1
    shot = watcher.snapshot()["i0"]
    assert shot["state"] == "unhealthy" and shot["failures"] >= 3 + 4
    assert shot["last_output"].startswith("HTTP 500") and shot["last_ok"] is False
    assert shot["pid"] == worker.pid and shot["kind"] == "http"
    flag.unlink()
    poll_for(lambda: watcher.snapshot()["i0"]["state"] == "healthy", 10, message="healthy again")
    assert watcher.snapshot()["i0"]["failures"] == 0
    watcher.watch("i0", "web", spec, target(worker.pid))  # the replacement: a fresh record
    assert watcher.snapshot()["i0"]["state"] == "starting"
    poll_for(lambda: watcher.snapshot()["i0"]["state"] == "healthy", 10, message="the replacement healthy")
    flag.touch()
    poll_for(lambda: len(seen.unhealthy) == 2, 10, message="the replacement's unhealthy callback")


def test_nothing_is_probed_before_the_initial_delay(
        prober: Callable[..., tuple[Prober, Recorder]], tmp_path: Path) -> None:
    spec = probe(kind="heartbeat", path=str(tmp_path / "none"), max_age=1, interval=0.1,
                 initial_delay=1.0, start_timeout=0.1, failure_threshold=1)
    watcher, seen = prober()
    begun = time.monotonic()
    watcher.watch("i0", "bot", spec, target(os.getpid()))
    poll_for(lambda: seen.unhealthy, 10, message="unhealthy after the delay")
    with seen.lock:
        first = seen.results[0][0]
    assert first - begun >= 1.0
    assert seen.unhealthy[0][0] - begun < 1.0 + MARGIN


def test_failures_while_starting_do_not_count_until_the_start_timeout(
        tracker: ProcessTracker, prober: Callable[..., tuple[Prober, Recorder]], tmp_path: Path) -> None:
    beat = tmp_path / "beat"
    spec = probe(kind="heartbeat", path=str(beat), max_age=5, interval=0.2, start_interval=0.1,
                 start_timeout=2.0, failure_threshold=2)
    watcher, seen = prober()
    begun, begun_wall = time.monotonic(), time.time()
    watcher.watch("late", "bot", spec, target(os.getpid()))
    watcher.watch("never", "bot", spec.model_copy(update={"path": str(tmp_path / "never")}),
                  target(os.getpid(), index=1))
    poll_for(lambda: len(seen.of("late")) >= 5, 10, message="probes while starting")
    shot = watcher.snapshot()["late"]
    assert (shot["state"], shot["failures"], shot["last_ok"]) == ("starting", 0, False)
    start(tracker, "heartbeat", str(beat), str(tmp_path / "stop"), "0.1")  # ready at last
    poll_for(lambda: watcher.snapshot()["late"]["state"] == "healthy", 10, message="late is healthy")
    poll_for(lambda: seen.unhealthy, 10, message="never is unhealthy")
    when, _, key, _ = seen.unhealthy[0]
    assert key == "never"
    assert 2.0 <= when - begun <= 2.0 + 2 * 0.2 + MARGIN
    assert [k for _, _, k, _ in seen.unhealthy] == ["never"]
    starting = [r for r in seen.of("never") if r.started_at < begun_wall + 1.9]
    assert len(starting) >= 8, "probed every start_interval while starting"


def test_a_paused_profile_is_not_probed_until_resumed(
        prober: Callable[..., tuple[Prober, Recorder]], tmp_path: Path) -> None:
    (tmp_path / "beat").touch()
    spec = probe(kind="heartbeat", path=str(tmp_path / "beat"), max_age=3600, interval=0.1)
    watcher, seen = prober()
    for i in range(3):
        watcher.watch(f"a{i}", "paused", spec, target(os.getpid(), index=i))
        watcher.watch(f"b{i}", "running", spec, target(os.getpid(), index=i))
    poll_for(lambda: seen.count("paused") >= 6, 10, message="probes of both")
    watcher.pause("paused")
    before, others = seen.count("paused"), seen.count("running")
    poll_for(lambda: seen.count("running") >= others + 30, 10, message="the other profile probed on")
    assert seen.count("paused") <= before + 1, "at most a report already under way at pause()"
    before, others = seen.count("paused"), seen.count("running")
    poll_for(lambda: seen.count("running") >= others + 30, 10, message="the other profile probed on")
    assert seen.count("paused") == before
    assert all(s["state"] == "healthy" for s in watcher.snapshot().values())
    watcher.resume("paused")
    poll_for(lambda: seen.count("paused") >= before + 6, 10, message="probes after resume")


def test_of_three_instances_only_the_unhealthy_one_is_reported(
        tracker: ProcessTracker, prober: Callable[..., tuple[Prober, Recorder]], tmp_path: Path) -> None:
    base = consecutive_free_ports(3)
    workers = [start(tracker, "http", str(base + i), str(tmp_path / f"sick{i}")) for i in range(3)]
    spec = probe(kind="http", url="http://127.0.0.1:{port}/", port=base, interval=0.2, timeout=1,
                 failure_threshold=2)
    watcher, seen = prober()
    for i, worker in enumerate(workers):
        watcher.watch(f"i{i}", "web", spec, target(worker.pid, index=i))
    poll_for(lambda: all(s["state"] == "healthy" for s in watcher.snapshot().values()), 10,
             message="three healthy")
    assert [f"status 200 from {w.pid}" in seen.of(f"i{i}")[-1].output for i, w in enumerate(workers)] \
        == [True] * 3, "each instance was probed on its own port"
    (tmp_path / "sick1").touch()
    poll_for(lambda: seen.unhealthy, 10, message="the unhealthy one")
    counts = {k: len(seen.of(k)) for k in ("i0", "i1", "i2")}
    poll_for(lambda: all(len(seen.of(k)) >= n + 3 for k, n in counts.items()), 10,
             message="three more probes of each")
    assert [(p, k) for _, p, k, _ in seen.unhealthy] == [("web", "i1")]
    assert {k: s["state"] for k, s in watcher.snapshot().items()} == \
        {"i0": "healthy", "i1": "unhealthy", "i2": "healthy"}


def _lateness(results: list[ProbeResult], watched_at: float, interval: float) -> float:
    """How far the latest probe of an instance ran behind its fixed cadence from the
    moment it was watched (probe n is due ``n * interval`` after that)."""
    starts = sorted(r.started_at for r in results)
    return max(t - watched_at - n * interval for n, t in enumerate(starts))


def test_hanging_probes_do_not_delay_the_other_instances_or_profiles(
        tracker: ProcessTracker, prober: Callable[..., tuple[Prober, Recorder]], tmp_path: Path) -> None:
    (tmp_path / "beat").touch()
    interval = 0.2
    fast = probe(kind="heartbeat", path=str(tmp_path / "beat"), max_age=3600, interval=interval)
    watcher, seen = prober(per_profile=4)
    pidfiles = [tmp_path / f"hang{i}" for i in range(7)]
    try:
        for i, pidfile in enumerate(pidfiles):  # one hangs among the fast, six in a profile of their own
            hanging = probe(kind="command", command=[sys.executable, str(WORKERS), "hang", str(pidfile)],
                            timeout=30, interval=interval)
            watcher.watch(f"hang{i}", "fast" if i == 0 else "hung", hanging, target(os.getpid(), index=i))
        poll_for(lambda: sum(p.exists() for p in pidfiles) == 5, 20, message="the hanging probes to run")
        watched_at = {}
        for i in range(1, 50):
            watched_at[i] = time.time()
            watcher.watch(f"fast{i}", "fast", fast, target(os.getpid(), index=i))
        poll_for(lambda: min(len(seen.of(f"fast{i}")) for i in range(1, 50)) >= 15, 30,
                 message="15 probes of each fast instance")
        late = max(_lateness(seen.of(f"fast{i}")[:15], watched_at[i], interval) for i in range(1, 50))
        print(f"worst lateness of 49 instances over 15 probes each: {late * 1000:.1f} ms")
        assert late < 0.25 + MARGIN, late  # a hung probe would delay them by its 30 s timeout
        assert not seen.of("hang0") and not seen.unhealthy, "the hanging probes are still running"
        assert sum(p.exists() for p in pidfiles) == 5, "the hung profile runs 4 at once, never more"
        pids = [int(p) for f in pidfiles if f.exists() for p in f.read_text().split()]
        begun = time.monotonic()
        watcher.stop()
        assert time.monotonic() - begun < 2.0, "stop() cancels probes that would run for 30 s"
        poll_for(lambda: all(not alive(pid) for pid in pids), 5, message="stop() to kill running probes")
    finally:
        for pidfile in pidfiles:
            adopt_pids(tracker, pidfile)


def test_wait_ready_returns_at_the_first_pass(tracker: ProcessTracker, tmp_path: Path) -> None:
    port = free_port()
    spec = probe(kind="http", url=f"http://127.0.0.1:{port}/", start_interval=0.2, start_timeout=20)
    seen = Recorder()
    begun = time.monotonic()
    worker = tracker.popen([sys.executable, str(WORKERS), "http", str(port), str(tmp_path / "f"),
                            "--delay", "3"])
    result = wait_ready(spec, target(worker.pid), started=begun,
                        on_result=lambda r: seen.on_result("web", None, r))
    took = time.monotonic() - begun
    assert result.ok, result
    assert 3.0 <= took <= 3.0 + 0.2 + MARGIN, took
    assert seen.count("web") >= 10 and all(k is None for _, _, k, _ in seen.results)


def test_wait_ready_gives_up_at_the_start_timeout_with_the_last_output(
        tracker: ProcessTracker, tmp_path: Path) -> None:
    """Probes before the deadline are clipped to it; the last one starts at the deadline
    with its own timeout (so the wait never gives up before the deadline)."""
    pidfile = tmp_path / "pids"
    spec = probe(kind="command", command=[sys.executable, str(WORKERS), "hang", str(pidfile)],
                 timeout=1.0, start_timeout=1.5, start_interval=1.0)
    seen: list[ProbeResult] = []
    begun = time.monotonic()
    try:
        result = wait_ready(spec, target(os.getpid()), started=begun, on_result=seen.append)
        took = time.monotonic() - begun
        assert not result.ok and result.output.startswith("timed out after 1 s")
        assert took >= 1.5 + 1.0, "the last probe starts at the deadline, with its whole timeout"
        assert len(seen) >= 2 and seen[-1].output.startswith("timed out after 1 s")
        assert not any(r.ok for r in seen)
        pids = _hang_pids(pidfile)
        poll_for(lambda: all(not alive(pid) for pid in pids), 5, message="the probe and its child to be gone")
    finally:
        adopt_pids(tracker, pidfile)


def test_forget_drops_an_instance_and_a_failing_callback_stops_nothing(
        prober: Callable[..., tuple[Prober, Recorder]], tmp_path: Path) -> None:
    calls: list[str] = []

    def boom(profile: str, key: Hashable | None, result: ProbeResult) -> None:
        calls.append(str(key))
        raise RuntimeError("a metrics backend that fails")

    (tmp_path / "beat").touch()
    spec = probe(kind="heartbeat", path=str(tmp_path / "beat"), max_age=3600, interval=0.05)
    watcher = Prober(on_result=boom)
    try:
        watcher.watch("a", "p", spec, target(os.getpid()))
        watcher.watch("b", "p", spec, target(os.getpid(), index=1))
        poll_for(lambda: calls.count("a") >= 3, 10, message="probes of a")
        watcher.forget("a")
        seen_a, seen_b = calls.count("a"), calls.count("b")
        poll_for(lambda: calls.count("b") >= seen_b + 10, 10, message="more probes of b")
        assert calls.count("a") <= seen_a + 1, "at most a report already under way at forget()"
        assert set(watcher.snapshot()) == {"b"}
    finally:
        watcher.stop()
