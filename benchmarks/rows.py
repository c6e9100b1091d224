"""The benchmark rows. Each returns a ``Row``: the baseline and workerguard, measured now."""

from __future__ import annotations

import datetime
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from celery.result import ResultSet

from benchmarks import scriptlock
from benchmarks.harness import Bench, kill_and_wait, median, percentile, poll_for, summary_ms
from workerguard.policy.guard import Guard
from workerguard.store.lock import ProfileLock
from workerguard.workers.discover import scan_processes

HERE = Path(__file__).resolve().parent
CALLERS = 20
RESULTREPR_MAXSIZE = 1024
"""Celery's ``Task.resultrepr_maxsize`` (the default; workerguard keeps it)."""


@dataclass
class Row:
    name: str
    baseline: str
    workerguard: str
    target: str
    met: bool | None

    def cells(self) -> list[str]:
        verdict = {True: "yes", False: "**no**", None: "n/a"}[self.met]
        return [self.name, self.baseline, self.workerguard, self.target, verdict]


_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"  .. {time.monotonic() - _T0:5.1f} s {message}", file=sys.stderr, flush=True)


# duplicate starts ----------------------------------------------------------------------
def _rounds(rounds: int, argv: list[str], call: Callable[[int], Any],
            cleanup: Callable[[], None] = lambda: None) -> tuple[int, int, int]:
    """Run ``rounds`` rounds of CALLERS simultaneous ``call(i)``; return
    (duplicate rounds, workers started in total, failed calls)."""
    duplicates = total = failed = 0
    barrier = threading.Barrier(CALLERS)

    def caller(i: int) -> None:
        barrier.wait()
        call(i)

    with ThreadPoolExecutor(CALLERS) as pool:
        for _ in range(rounds):
            futures = [pool.submit(caller, i) for i in range(CALLERS)]
            for future in futures:
                if future.exception() is not None:
                    failed += 1
            pids = scriptlock.running_workers(argv)
            total += len(pids)
            duplicates += len(pids) > 1
            kill_and_wait(pids)
            cleanup()
    return duplicates, total, failed


def duplicate_starts(b: Bench, rounds: int, port_rounds: int, celery_app: Any) -> Row:
    # Baseline: the script's file lock, 20 threads calling its ensure at once.
    argv = b.worker_argv(1)
    lock_path = b.root / "rpa_worker_lock.tmp"
    popens: list[subprocess.Popen[bytes]] = []

    def reap() -> None:
        for proc in popens:
            proc.wait()
        popens.clear()

    t0 = time.monotonic()
    port = _rounds(port_rounds, argv, lambda i: scriptlock.ensure(lock_path, argv, popens), reap)
    log(f"port: {port} in {time.monotonic() - t0:.1f} s")

    # workerguard --local: 20 guards (each its own Redis connection, like 20 CLI processes).
    path = b.write_config("dups", {"dup": b.profile(2)})
    guards = [b.guard(path) for _ in range(CALLERS)]
    argv2 = b.worker_argv(2)
    t0 = time.monotonic()
    local = _rounds(rounds, argv2, lambda i: guards[i].ensure("dup", requested_by="bench"))
    log(f"local: {local} in {time.monotonic() - t0:.1f} s")

    # workerguard via Celery: 20 ensure tasks sent at once to the real guard worker.
    argv3 = b.worker_argv(3)

    def send_round(i: int) -> None:
        if i == 0:  # one client sends the 20 messages back to back, then waits for all
            requests = [celery_app.send_task("workerguard.ensure", args=["dupc"], queue=b.queue)
                        for _ in range(CALLERS)]
            for request in requests:
                request.get(timeout=60)

    t0 = time.monotonic()
    via = _rounds(rounds, argv3, send_round)
    log(f"celery: {via} in {time.monotonic() - t0:.1f} s")

    def fmt(r: tuple[int, int, int], n: int = rounds) -> str:
        extra = f", {r[2]} failed calls" if r[2] else ""
        return f"{r[0]} / {n} duplicate rounds ({r[1]} workers started{extra})"

    return Row(
        f"duplicate starts: {rounds} rounds x {CALLERS} simultaneous ensure callers"
        + (" (--quick: scaled down from 1,000)" if b.quick else ""),
        fmt(port, port_rounds) + (" (each round ~1 s of 100 ms polling)" if port_rounds < rounds
                                  else ""), f"`--local`: {fmt(local)}; Celery: {fmt(via)}",
        "0 duplicate rounds", local[0] == 0 and via[0] == 0 and not local[2] and not via[2])


# lock handoff ----------------------------------------------------------------------------
def _port_handoff(path: Path) -> float:
    scriptlock.acquire(path)
    waiting = threading.Event()
    acquired: list[float] = []

    def waiter() -> None:
        scriptlock.acquire(path, on_wait=waiting.set)
        acquired.append(time.perf_counter())
        scriptlock.release(path)

    thread = threading.Thread(target=waiter)
    thread.start()
    waiting.wait(5)
    time.sleep(random.uniform(0, 0.1))  # release at a random phase of the waiter's polling
    released = time.perf_counter()
    scriptlock.release(path)
    thread.join()
    return acquired[0] - released


def _blocked_in_blpop(b: Bench, client: Any) -> bool:
    return any(c.get("cmd") == "blpop" for c in client.client_list())


def _wg_handoff(b: Bench, holder_client: Any, waiter_client: Any) -> float:
    holder = ProfileLock(holder_client, b.host_id, "handoff", 10)
    assert holder.acquire_within(5, renew=False)
    acquired: list[float] = []

    def waiter() -> None:
        lock = ProfileLock(waiter_client, b.host_id, "handoff", 10)
        assert lock.acquire_within(10, renew=False)  # as the guard takes it
        acquired.append(time.perf_counter())
        lock.release()

    thread = threading.Thread(target=waiter)
    thread.start()
    poll_for(lambda: _blocked_in_blpop(b, holder_client), 5, interval=0.001,
             message="waiter to block")
    time.sleep(random.uniform(0, 0.1))  # same random release phase as the baseline
    released = time.perf_counter()
    holder.release()
    thread.join()
    return acquired[0] - released


def lock_handoff(b: Bench, trials: int) -> Row:
    path = b.root / "handoff.tmp"
    port = [_port_handoff(path) for _ in range(trials)]
    holder_client, waiter_client = b.client(), b.client()
    wg = [_wg_handoff(b, holder_client, waiter_client) for _ in range(trials)]
    ratio = percentile(port, 50) / percentile(wg, 50)
    return Row(f"lock handoff, holder releases -> blocked waiter proceeds ({trials} trials)",
               summary_ms(port), f"{summary_ms(wg)} ({ratio:.0f}x lower p50)",
               ">= 30x lower p50", ratio >= 30)


# crashed holder ----------------------------------------------------------------------------
_WG_HOLDER = """
import sys, time
from workerguard.config import Settings
from workerguard.ops.connect import redis_client
from workerguard.store.lock import ProfileLock
lock = ProfileLock(redis_client(sys.argv[1], Settings()), sys.argv[2], "crash", int(sys.argv[3]))
assert lock.acquire_within(10)
print("locked", flush=True)
time.sleep(3600)
"""


def _crash_trial(b: Bench, holder_argv: list[str], wait: Callable[[threading.Event], None],
                 kill_within: float) -> float:
    holder = b.tracker.popen(holder_argv, stdout=subprocess.PIPE)
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == b"locked"
    waiting = threading.Event()
    proceeded: list[float] = []

    def waiter() -> None:
        wait(waiting)
        proceeded.append(time.monotonic())

    thread = threading.Thread(target=waiter)
    thread.start()
    assert waiting.wait(10)
    time.sleep(random.uniform(0, kill_within))  # crash at a random point of the hold
    holder.kill()
    killed = time.monotonic()
    holder.wait()
    thread.join()
    return proceeded[0] - killed


class PortCrash:
    """The baseline's crashed-holder trials (10 s each), run in the background of the
    other rows: the waiting caller only polls a file every 100 ms."""

    def __init__(self, b: Bench, trials: int) -> None:
        self.path = b.root / "crash.tmp"
        self.times: list[float] = []
        self.thread = threading.Thread(target=self._run, args=(b, trials), daemon=True)
        self.thread.start()

    def _wait(self, waiting: threading.Event) -> None:
        scriptlock.acquire(self.path, on_wait=waiting.set)
        scriptlock.release(self.path)

    def _run(self, b: Bench, trials: int) -> None:
        argv = [sys.executable, str(HERE / "scriptlock.py"), str(self.path)]
        self.times.extend(_crash_trial(b, argv, self._wait, 0.0) for _ in range(trials))

    def result(self) -> list[float]:
        self.thread.join()
        return self.times


def crashed_holder(b: Bench, trials: int, port: PortCrash, expire: int = 2) -> Row:
    client = b.client()

    def wg_wait(waiting: threading.Event) -> None:
        lock = ProfileLock(b.client(), b.host_id, "crash", expire)

        def signal_when_blocked() -> None:
            poll_for(lambda: _blocked_in_blpop(b, client), 10, interval=0.001)
            waiting.set()

        threading.Thread(target=signal_when_blocked, daemon=True).start()
        assert lock.acquire_within(30, renew=False)
        lock.release()

    argv = [sys.executable, "-c", _WG_HOLDER, b.url, b.host_id, str(expire)]
    wg = [_crash_trial(b, argv, wg_wait, expire) for _ in range(trials)]
    baseline = port.result()
    return Row(f"crashed holder: SIGKILL -> next caller proceeds (lock_expire = {expire} s; "
               f"{trials} trials, baseline {len(baseline)})",
               f"median {median(baseline):.2f} s, max {max(baseline):.2f} s",
               f"median {median(wg):.2f} s, max {max(wg):.2f} s",
               f"<= lock_expire + 0.5 s = {expire + 0.5:g} s", max(wg) <= expire + 0.5)


# Celery round trip and drain --------------------------------------------------------------
def ensure_round_trip(b: Bench, app: Any, n: int) -> Row:
    load = _start_load(b, 100)  # ~100 processes on the host, as the target says
    try:
        return _ensure_round_trip(b, app, n)
    finally:
        kill_and_wait([p.pid for p in load])
        for proc in load:
            proc.wait()


def _ensure_round_trip(b: Bench, app: Any, n: int) -> Row:
    noop: list[float] = []
    ensure: list[float] = []
    for _ in range(20):  # warm both paths up
        b.call("celery.accumulate", 1)
        assert b.call("workerguard.ensure", "rt")["action"] == "already_running"
    for _ in range(n):
        t0 = time.perf_counter()
        app.send_task("celery.accumulate", args=[1], queue=b.queue).get(timeout=10)
        t1 = time.perf_counter()
        result = app.send_task("workerguard.ensure", args=["rt"], queue=b.queue).get(timeout=10)
        t2 = time.perf_counter()
        assert result["action"] == "already_running", result
        noop.append(t1 - t0)
        ensure.append(t2 - t1)
    extra = (percentile(ensure, 50) - percentile(noop, 50)) * 1000
    procs = len(psutil.pids())
    return Row(f"ensure, worker already running: Celery round trip ({n} each, interleaved, "
               f"{procs} processes on the host)",
               f"no-op `celery.accumulate`: {summary_ms(noop)}",
               f"{summary_ms(ensure)} (p50 +{extra:.2f} ms)", "p50 <= no-op + 3 ms", extra <= 3)


@dataclass(frozen=True)
class Drained:
    rate: float
    """Requests per second between the first and the last completion."""
    guard_cpu: float
    """CPU seconds (user + system) of the guard worker per request, while draining."""
    redis_cpu: float
    """CPU seconds of redis-server per request, while draining."""
    commands: float
    """Redis commands per request (every client's: the worker's and the caller's)."""


def _commands(client: Any) -> int:
    return sum(int(stats["calls"]) for stats in client.info("commandstats").values())


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _drain(b: Bench, app: Any, task: str, args: list[Any], n: int) -> Drained:
    """Queue ``n`` requests while the guard does not consume its host queue, then let it
    consume; the rate is (n - 1) / (last date_done - first date_done), stamped by the
    worker: the worker's rate, not the sender's, and without the consumer's restart.
    Beside it, what the guard worker and redis-server spent per request meanwhile (CPU
    time: what a loaded machine inflates far less than a rate)."""
    node = [f"workerguard@{b.host_id}"]
    assert app.control.cancel_consumer(b.queue, destination=node, reply=True, limit=1)
    requests = [app.send_task(task, args=args, queue=b.queue) for _ in range(n)]
    worker, server, client = b.worker_process, b.server, b.client()
    assert worker is not None and server is not None
    before = _cpu(worker.pid), _cpu(server.process.pid), _commands(client)
    assert app.control.add_consumer(b.queue, destination=node, reply=True, limit=1)
    # The worker takes the queue in order, 4 at a time: once the last request is done, the
    # drain is over. Only that one is read meanwhile (one GET every 50 ms): collecting all
    # 1000 results as they come (join_native) took a third of a core from the worker on a
    # 2-core machine, and its share moved the rate from one run to the next.
    poll_for(requests[-1].ready, timeout=300, interval=0.05, message="the drain to end")
    after = _cpu(worker.pid), _cpu(server.process.pid), _commands(client)
    ResultSet(requests, app=app).join_native(timeout=300)
    done = [_as_datetime(r.date_done) for r in requests]
    return Drained((n - 1) / (max(done) - min(done)).total_seconds(),
                   *((a - b) / n for a, b in zip(after, before, strict=True)))


def _as_datetime(value: Any) -> datetime.datetime:
    return value if isinstance(value, datetime.datetime) else datetime.datetime.fromisoformat(value)


def drain(b: Bench, app: Any, n: int, repeats: int) -> Row:
    """``repeats`` pairs of drains, a no-op drain then an ensure drain; the share is the
    median of the pairs' ratios. One drain's rate moves by +-10 % from one run to the next
    on this 2-core machine, quiet or not (the worker, Redis and the sender share two
    cores), so one lucky no-op drain decided a best-of-3 against best-of-3 ratio: it read
    68 % and 86 % for the same code within minutes."""
    noop: list[Drained] = []
    ensure: list[Drained] = []
    for _ in range(repeats):  # taking turns, so that a change of the load hits both
        noop.append(_drain(b, app, "celery.accumulate", [1], n))
        ensure.append(_drain(b, app, "workerguard.ensure", ["rt"], n))
    ratios = sorted(e.rate / o.rate for o, e in zip(noop, ensure, strict=True))
    share = median(ratios)
    noop_rate, ensure_rate = median([d.rate for d in noop]), median([d.rate for d in ensure])
    kinds = (("noop", noop), ("ensure", ensure))
    guard = {kind: median([d.guard_cpu for d in runs]) for kind, runs in kinds}
    server = {kind: median([d.redis_cpu for d in runs]) for kind, runs in kinds}
    commands = {kind: median([d.commands for d in runs]) for kind, runs in kinds}
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())

    def cpu(kind: str) -> str:
        return (f"guard worker {guard[kind] * 1e6:.0f} µs CPU, redis-server "
                f"{server[kind] * 1e6:.0f} µs, {commands[kind]:.1f} Redis commands per request "
                "(median)")

    spread = f"{ratios[0]:.0%}-{ratios[-1]:.0%}" if len(ratios) > 1 else f"{ratios[0]:.0%}"
    return Row(f"{n} requests queued at once, then drained: rate between the first and the last "
               f"completion ({repeats} pairs of a no-op drain and an ensure drain; rates and "
               f"the share are medians; load average at the end {load})",
               f"{n} no-op tasks: {noop_rate:.0f}/s; {cpu('noop')}",
               f"{ensure_rate:.0f} ensure/s; share of the no-op rate {share:.0%} (pairs: "
               f"{spread}); {cpu('ensure')}: the ensure's own "
               f"{(guard['ensure'] - guard['noop']) * 1e6:+.0f} µs in the guard worker "
               f"(CPU ratio {guard['noop'] / guard['ensure']:.0%})",
               ">= 80 % of the no-op rate", share >= 0.8)


# sweep cost ---------------------------------------------------------------------------------
def _sweep_times(guards: dict[int, Guard], repeats: int) -> dict[int, float]:
    """Median sweep time per profile count; the counts take turns, so drift hits all alike."""
    times: dict[int, list[float]] = {size: [] for size in guards}
    for _ in range(repeats):
        for size, guard in guards.items():
            t0 = time.perf_counter()
            results = guard.sweep(requested_by="bench")
            times[size].append(time.perf_counter() - t0)
            assert all(r.action == "already_running" for r in results), results
    return {size: median(values) for size, values in times.items()}


def _start_load(b: Bench, total: int) -> list[subprocess.Popen[bytes]]:
    missing = max(0, total - len(psutil.pids()))
    return [b.tracker.popen(["sleep", "600"]) for _ in range(missing)]


def sweep_cost(b: Bench, repeats: int) -> list[Row]:
    sizes = (1, 10, 50)
    profiles = {f"s{i:02d}": b.profile(100 + i) for i in range(max(sizes))}
    guards = {}
    for size in sizes:
        chosen = dict(list(profiles.items())[:size])
        guards[size] = b.guard(b.write_config(f"sweep{size}", chosen))
    for name in profiles:  # one running instance per profile, started by workerguard
        assert guards[max(sizes)].ensure(name).action == "started"
    rows = []
    loads: list[subprocess.Popen[bytes]] = []
    for load in (100, 1000):
        loads += _start_load(b, load)
        procs = len(psutil.pids())
        scan = median([_timed_scan() for _ in range(repeats)])
        costs = _sweep_times(guards, repeats)
        ratio = costs[50] / costs[1]
        rows.append(Row(
            f"sweep cost, {procs} processes on the host (median of {repeats}; one scan alone "
            f"{scan * 1000:.1f} ms)",
            f"1 profile: {costs[1] * 1000:.1f} ms",
            f"10 profiles: {costs[10] * 1000:.1f} ms; 50 profiles: {costs[50] * 1000:.1f} ms "
            f"({ratio:.2f}x)", "50 profiles <= 1.3x one profile", ratio <= 1.3))
        log(rows[-1].workerguard)
    kill_and_wait([p.pid for p in loads], timeout=60)
    for proc in loads:
        proc.wait()
    return rows


def _timed_scan() -> float:
    t0 = time.perf_counter()
    scan_processes()
    return time.perf_counter() - t0


# where an ensure's time goes --------------------------------------------------------------
def breakdown(b: Bench, n: int) -> list[tuple[str, str]]:
    """In-process costs of one ensure with the worker running (p50 / p99 of ``n``)."""
    from celery.utils.saferepr import saferepr

    from workerguard.store.known_instances import decode_known
    from workerguard.tasks.result_repr import saferepr as guard_saferepr
    from workerguard.workers.discover import verify_known

    path = b.write_config("breakdown", {"bd": b.profile(5)})
    guard = b.guard(path)
    assert guard.ensure("bd").action == "started"
    answer = guard.ensure("bd").contract()
    profile = guard.config.profile("bd")
    snapshot = guard.snapshots.read_if_unlocked("bd")
    assert snapshot is not None
    known = decode_known(profile, snapshot.known)
    assert known

    def lock_cycle() -> None:
        lock = ProfileLock(guard.client, b.host_id, "bd-cycle", 10)
        lock.acquire_within(1, renew=False)
        lock.release()

    def measure(fn: Callable[[], Any]) -> str:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return summary_ms(times)

    return [
        ("`Guard.ensure`, fast path (what a request costs the guard now)",
         measure(lambda: guard.ensure("bd"))),
        ("  of which: the atomic read of lock, pause + known instances (1 MGET)",
         measure(lambda: guard.snapshots.read_if_unlocked("bd"))),
        ("  of which: verifying the known instance (pid + start ticks, /proc)",
         measure(lambda: verify_known(known))),
        ("  of which: decode + verify + plan + result dict (all but the round trip)",
         measure(lambda: guard._known_within_bounds(profile, snapshot.known))),
        ("before: one full scan + discovery of one profile (ensure did 2)",
         measure(lambda: guard.table.discover([profile], [profile]))),
        ("before: lock acquire + release with no waiter (2 round trips)", measure(lock_cycle)),
        ("Redis PING round trip (redis-py)", measure(guard.client.ping)),
        ("Celery, after every task: the repr of its result for the task-succeeded event and "
         "log line (`saferepr`), of an ensure's result dict",
         measure(lambda: saferepr(answer, RESULTREPR_MAXSIZE))),
        ("  the same text as the guard worker writes it (`tasks/result_repr.py`)",
         measure(lambda: guard_saferepr(answer, RESULTREPR_MAXSIZE))),
        ("  the same of a no-op's result (an int)", measure(lambda: saferepr(2, RESULTREPR_MAXSIZE))),
    ]


def table(results: list[Row]) -> str:
    lines = ["| row | baseline | workerguard | target | met |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in results]
    return "\n".join(lines)
