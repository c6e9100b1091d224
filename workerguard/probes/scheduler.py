"""Probe many instances on time, so that a slow or hanging probe delays nobody else.

One timer thread keeps a heap of due times. A due probe goes to its profile's lane:
at most ``per_profile`` probes of one profile run at once, and the rest of that
profile's due probes wait in the lane, never in a shared queue. Worker threads are
started on demand, whenever a probe is handed over and no thread is idle, and end
after a minute without work. So a profile whose probes all hang holds at most
``per_profile`` threads until their timeouts, and every other profile's probes
still find a thread at once: probes of one profile never delay another's. No
thread is kept per instance; 50 instances of a fast probe need one or two.

Probes of one instance never overlap: the next one is scheduled when the last one
has finished, on the instance's fixed cadence (``interval`` after the previous due
time; at once if that has already passed).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Literal

from workerguard.probes.run import ProbeResult, cut, run_probe
from workerguard.probes.spec import AnyProbe, ProbeTarget

log = logging.getLogger("workerguard.probes")
State = Literal["starting", "healthy", "unhealthy"]
IDLE_EXIT = 60.0
"""Seconds a worker thread waits for work before it ends."""
SNAPSHOT_OUTPUT = 200
"""Characters of the last output shown per instance in a snapshot."""
TIMER_ERROR_PAUSE = 0.1
"""After an unexpected error in the timer (logged), or a probe thread that could not be
started, the timer pauses this long before it tries again, so an error that repeats cannot
spin a core."""


@dataclass
class _Watch:
    key: Hashable
    profile: str
    spec: AnyProbe
    target: ProbeTarget
    started_mono: float
    started_at: float
    generation: int
    state: State = "starting"
    failures: int = 0
    reported: bool = False
    last: ProbeResult | None = None
    due: float = 0.0
    parked: bool = False

    def in_start(self, now: float) -> bool:
        """Still starting and within its start timeout: failures do not count."""
        return self.state == "starting" and now < self.started_mono + self.spec.start_timeout

    def snapshot(self) -> dict[str, Any]:
        last = self.last
        return {
            "profile": self.profile,
            "pid": self.target.pid,
            "instance": self.target.instance,
            "index": self.target.index,
            "kind": self.spec.kind,
            "state": self.state,
            "failures": self.failures,
            "last_probe": last.started_at if last else None,
            "last_ok": last.ok if last else None,
            "last_output": cut(last.output, SNAPSHOT_OUTPUT) if last else None,
            "last_duration": round(last.duration, 4) if last else None,
            "started_at": self.started_at,
        }


@dataclass
class _Lane:
    """One profile's share of the workers."""

    running: int = 0
    waiting: deque[_Watch] = field(default_factory=deque)


UnhealthyCallback = Callable[[str, Hashable, ProbeResult], None]
ResultCallback = Callable[[str, Hashable | None, ProbeResult], None]


class Prober:
    """Watches instances with their profile's probe; tells the owner when one turns unhealthy.

    ``on_unhealthy(profile, key, result)`` is called once per watched instance, when its
    failures in a row reach the threshold (again only after it is watched anew).
    ``on_result(profile, key, result)`` is called after every probe, for metrics (``key``
    is None for a readiness probe of ``wait_ready``). Both run
    on a worker thread: they must return quickly and their exceptions are logged, not
    raised.
    """

    def __init__(self, on_unhealthy: UnhealthyCallback | None = None,
                 on_result: ResultCallback | None = None, per_profile: int = 4) -> None:
        if per_profile < 1:
            raise ValueError(f"per_profile must be >= 1, got {per_profile}")
        self._on_unhealthy = on_unhealthy
        self._on_result = on_result
        self._per_profile = per_profile
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, Hashable, int]] = []
        self._seq = itertools.count()
        self._watches: dict[Hashable, _Watch] = {}
        self._lanes: dict[str, _Lane] = {}
        self._paused: set[str] = set()
        self._jobs: queue.SimpleQueue[_Watch | None] = queue.SimpleQueue()
        self._queued = 0
        self._idle = 0
        self._understaffed = False
        self._workers: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._timer = threading.Thread(target=self._timer_loop, name="probe-timer", daemon=True)
        self._timer.start()

    # --- the owner's side ----------------------------------------------------------------
    def watch(self, key: Hashable, profile: str, spec: AnyProbe, target: ProbeTarget,
              started: float | None = None) -> None:
        """Probe ``target`` until ``forget(key)``. ``started`` is when the instance started,
        on the monotonic clock (``time.monotonic()``; default now): it places the initial
        delay and the start timeout. Watching a key again starts its record afresh."""
        now = time.monotonic()
        started_mono = now if started is None else min(started, now)
        started_at = time.time() - (now - started_mono)  # for the snapshot only
        with self._lock:
            old = self._watches.get(key)
            watch = _Watch(key, profile, spec, target, started_mono, started_at,
                           generation=(old.generation + 1) if old else 0)
            self._watches[key] = watch
            self._push(watch, max(now, started_mono + spec.initial_delay))

    def forget(self, key: Hashable) -> None:
        """Stop probing ``key`` (a probe in flight finishes; its result is dropped)."""
        with self._lock:
            self._watches.pop(key, None)

    def pause(self, profile: str) -> None:
        """Probe no instance of ``profile`` until ``resume``. A probe in flight finishes,
        unreported (unless it was already reporting when ``pause`` was called)."""
        with self._lock:
            self._paused.add(profile)

    def resume(self, profile: str) -> None:
        with self._lock:
            if profile not in self._paused:  # every sweep resumes: cheap when nothing was paused
                return
            self._paused.discard(profile)
            now = time.monotonic()
            for watch in self._watches.values():
                if watch.profile == profile and watch.parked:
                    watch.parked = False
                    self._push(watch, now)

    def snapshot(self) -> dict[Hashable, dict[str, Any]]:
        """Per watched instance: profile, pid, state, failures in a row, the last probe's
        time, result, output (cut) and duration. JSON-ready values."""
        with self._lock:
            return {key: watch.snapshot() for key, watch in self._watches.items()}

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the timer and the workers; running command probes are killed (as failures)."""
        self._stopping.set()
        with self._lock:
            self._wake.notify_all()
            workers = list(self._workers)
        for _ in workers:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for thread in [self._timer, *workers]:
            thread.join(max(0.0, deadline - time.monotonic()))

    # --- the timer -----------------------------------------------------------------------
    def _push(self, watch: _Watch, due: float) -> None:
        """Schedule ``watch`` at ``due`` (monotonic); the lock is held."""
        watch.due = due
        heapq.heappush(self._heap, (due, next(self._seq), watch.key, watch.generation))
        if self._heap[0][2] == watch.key:
            self._wake.notify()

    def _timer_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._hand_out_due()
            except Exception:  # a bug of ours: logged; probing goes on after a pause
                log.exception("the probe timer failed; it goes on")
                self._stopping.wait(TIMER_ERROR_PAUSE)

    def _hand_out_due(self) -> None:
        """Hand each due probe to its lane, until ``stop``."""
        with self._lock:
            while not self._stopping.is_set():
                now = time.monotonic()
                if self._understaffed:  # a thread could not be started: try again, paced
                    self._staff()
                pause = TIMER_ERROR_PAUSE if self._understaffed else None
                if not self._heap:
                    self._wake.wait(pause)
                    continue
                due, _seq, key, generation = self._heap[0]
                if due > now:
                    self._wake.wait(due - now if pause is None else min(pause, due - now))
                    continue
                heapq.heappop(self._heap)
                watch = self._watches.get(key)
                if watch is None or watch.generation != generation:
                    continue  # forgotten or watched anew
                if watch.profile in self._paused:
                    watch.parked = True
                    continue
                lane = self._lanes.setdefault(watch.profile, _Lane())
                if lane.running < self._per_profile:
                    lane.running += 1
                    self._hand_over(watch)
                else:
                    lane.waiting.append(watch)

    # --- the workers ---------------------------------------------------------------------
    def _hand_over(self, watch: _Watch) -> None:
        """Give ``watch`` to a worker, starting one if none is free; the lock is held."""
        self._queued += 1
        self._jobs.put(watch)
        self._staff()

    def _staff(self) -> None:
        """Start a worker if more probes are queued than workers are idle; the lock is held.
        A thread that cannot be started (the process is out of threads) leaves the probes
        queued, and the timer tries again every ``TIMER_ERROR_PAUSE``."""
        self._understaffed = False
        if self._queued > self._idle and not self._stopping.is_set():
            thread = threading.Thread(target=self._worker_loop, name="probe-worker", daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:
                log.warning("could not start a probe thread (%s); %d probes wait", exc, self._queued)
                self._understaffed = True
                return
            self._workers.append(thread)

    def _worker_loop(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            try:
                watch = self._jobs.get(timeout=IDLE_EXIT)
            except queue.Empty:
                with self._lock:
                    if self._queued < self._idle:  # the others can take what is queued
                        self._idle -= 1
                        self._workers.remove(threading.current_thread())
                        return
                    self._idle -= 1
                continue
            with self._lock:
                self._idle -= 1
                if watch is not None:
                    self._queued -= 1
            if watch is None:
                return
            try:
                self._probe(watch)
            except Exception:  # a bug of ours: logged; this thread and the others go on
                log.exception("probe of %r failed unexpectedly", watch.key)

    def _probe(self, watch: _Watch) -> None:
        """Run one due probe, then free its lane slot and schedule the next one, whatever
        happened (``run_probe`` turns any error of a probe into a failed result; the slot is
        freed in ``finally`` even so)."""
        result: ProbeResult | None = None
        recorded = fire = False
        try:
            with self._lock:
                live = self._live(watch)
            if live:
                result = run_probe(watch.spec, watch.target, cancel=self._stopping)
        finally:
            with self._lock:
                self._release(watch.profile)
                if result is not None and self._live(watch):
                    now = time.monotonic()
                    recorded, fire = True, self._record(watch, result, now)
                    step = watch.spec.start_interval if watch.in_start(now) else watch.spec.interval
                    self._push(watch, max(now, watch.due + step))
        if not recorded:
            return
        assert result is not None
        self._report(watch.profile, watch.key, result)
        if fire and self._on_unhealthy is not None:
            _call(self._on_unhealthy, watch.profile, watch.key, result)

    def _release(self, profile: str) -> None:
        """A probe of ``profile`` ended: its slot goes to the lane's next waiting probe; the
        lock is held."""
        lane = self._lanes[profile]
        lane.running -= 1
        while lane.waiting and lane.running < self._per_profile:
            lane.running += 1
            self._hand_over(lane.waiting.popleft())

    def _live(self, watch: _Watch) -> bool:
        """Whether ``watch`` is still to be probed and its result recorded; the lock is held.
        Not when it was forgotten or watched anew, nor when its profile was paused
        meanwhile (then it waits for ``resume``)."""
        if self._watches.get(watch.key) is not watch or self._stopping.is_set():
            return False
        if watch.profile in self._paused:
            watch.parked = True
            return False
        return True

    @staticmethod
    def _record(watch: _Watch, result: ProbeResult, now: float) -> bool:
        """Fold ``result`` into ``watch``; True if it just became unhealthy for the first time."""
        watch.last = result
        if result.ok:
            watch.state, watch.failures = "healthy", 0
            return False
        if watch.in_start(now):
            return False  # starting: failures do not count yet
        watch.failures += 1
        if watch.failures < watch.spec.failure_threshold:
            return False
        watch.state = "unhealthy"
        fire, watch.reported = not watch.reported, True
        return fire

    def _report(self, profile: str, key: Hashable | None, result: ProbeResult) -> None:
        if self._on_result is not None:
            _call(self._on_result, profile, key, result)


def _call(callback: Callable[..., None], *args: Any) -> None:
    """Run an owner's callback; its failure is logged and never stops the prober."""
    try:
        callback(*args)
    except Exception:
        log.exception("probe callback %r failed", getattr(callback, "__name__", callback))
