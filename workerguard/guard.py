"""The one place that combines the lock, the process layer and the plan.

Each action runs discover -> plan -> act -> verify under one Redis lock per
(host, profile) and, inside it, a host-local fence (``flock``): if the Redis lock is
lost (expiry during a long stall, a failover), a second guard on this host still
waits for the first to finish instead of acting on a stale view. The guard takes a
Redis client and a config; it knows nothing of Celery, so the CLI's ``--local`` mode,
the Celery tasks and the tests all call exactly this code.

The fast path: every full scan under the lock is remembered in Redis as the profile's
known instances (pid + create_time). An ensure first reads them, with the pause flag,
in one atomic script that answers only while nobody holds the profile's lock (the same
as taking the lock, reading and releasing it; one round trip instead of three), then
verifies them (one ``/proc`` read each) and, if every one is still the same live process
and the profile is within bounds, answers ``already_running`` without scanning the
process table. A busy lock means a converge is running: the ensure waits for the lock
and tries the known instances again under it (the converge has just rewritten them).
Anything else (an instance gone or its PID reused, too few or too many, a pause, no or
stale record) falls back to the full scan. Instances started outside workerguard (found
only by ``match``) are not known until a full scan sees them: every sweep scans, and
refreshes the record; the record also expires after two sweep intervals.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import redis
import redis_lock

from . import report
from .config import Config, Profile
from .errors import LockLost, LockTimeout, RedisUnavailable
from .flight import Coalescer
from .known import decode_known
from .lock import REDIS_ERRORS, ProfileLock, host_fence, lock_key
from .observe import NULL_OBSERVER, Observer
from .plan import Plan, make_plan
from .state import State
from .workers import Instance, discover, scan_processes, spawn_instances, stop_instances, verify_known

__all__ = ["Guard", "discover", "scan_processes", "spawn_instances", "stop_instances"]
# (all but Guard re-exported for the fault tests, which wrap them with failpoints)

log = logging.getLogger("workerguard.guard")
Mode = Literal["ensure", "sweep", "enforce", "stop_all"]
Result = dict[str, Any]


class Guard:
    def __init__(self, client: redis.Redis, config: Config, *, clock: Any = time.time,
                 observer: Observer | None = None) -> None:
        self.client = client
        self.config = config
        self.settings = config.settings
        self.host = config.settings.host_id
        self.state = State(client, self.host, config.settings.events_maxlen,
                           known_ttl=max(2 * config.settings.sweep_interval, 10.0))
        self.clock = clock
        self.observer = observer or NULL_OBSERVER
        self._flights: Coalescer[Result] = Coalescer()

    def __repr__(self) -> str:
        return f"Guard(host={self.host!r}, profiles={sorted(self.config.profiles)!r})"

    # public actions --------------------------------------------------------------------
    def ensure(self, profile: str, *, dry_run: bool = False, force: bool = False,
               requested_by: str = "unknown") -> Result:
        """Converge to min..max instances: start missing, stop extras; clears a pause.

        Identical ensures that arrive in this process while one is waiting to start
        share its result (``flight.Coalescer``); the event log names the first requester
        and the observer sees the converge once.
        """
        spec = self.config.profile(profile)

        def converge() -> Result:
            return self._observed("ensure", self._converge(
                spec, "ensure", dry_run=dry_run, force=force, requested_by=requested_by))

        return self._flights.run(("ensure", profile, dry_run, force), converge)

    def enforce(self, profile: str, *, max_workers: int | None = None, dry_run: bool = False,
                requested_by: str = "unknown") -> Result:
        """Stop instances beyond ``max_workers`` (the profile's when None); never starts."""
        return self._observed("enforce", self._converge(
            self.config.profile(profile), "enforce", dry_run=dry_run, max_workers=max_workers,
            requested_by=requested_by))

    def stop_all(self, profile: str, *, dry_run: bool = False,
                 requested_by: str = "unknown") -> Result:
        """Stop every instance and pause the profile so sweeps leave it stopped."""
        return self._observed("stop_all", self._converge(
            self.config.profile(profile), "stop_all", dry_run=dry_run,
            requested_by=requested_by))

    def status(self, profile: str | None = None) -> Result:
        """Instances per profile on this host, with pause and backoff state. Takes no lock."""
        profiles = ([self.config.profile(profile)] if profile is not None
                    else list(self.config.profiles.values()))
        found = discover(profiles, self.host)
        names = [p.name for p in profiles]
        with self._redis():
            paused = self.state.paused(names)
            backoffs = self.state.backoffs(names)
        return report.status_result(self.host, profile, profiles, found, paused, backoffs,
                                    self.clock())

    def sweep(self, *, requested_by: str = "beat") -> list[Result]:
        """Ensure every profile of this host that is not paused, with one process scan.

        A profile already within bounds is answered from the scan without taking its
        lock; only profiles that need action converge under their lock.
        """
        began = time.monotonic()
        profiles = list(self.config.profiles.values())
        with self._redis():  # read before the scan: a converge that writes later wins
            paused, known = self.state.paused_and_known([p.name for p in profiles])
        found = discover(profiles, self.host, scan_processes())
        results = []
        refresh = []
        for profile in profiles:
            instances = found[profile.name]
            pause = paused[profile.name]
            if pause:
                results.append(report.paused_result(self.host, profile.name, instances, pause))
                continue
            if self._ensure_plan(profile, instances).is_noop:
                results.append(report.result(self.host, profile.name, "already_running",
                                             running=instances, kept=[i.pid for i in instances]))
                refresh.append((profile, known[profile.name], instances))
                continue
            try:
                results.append(self._converge(profile, "sweep", requested_by=requested_by))
            except (LockTimeout, LockLost, RedisUnavailable) as exc:
                results.append(report.error_result(self.host, profile.name, exc))
        try:  # what this scan saw becomes the known instances (unless a converge wrote since)
            self.state.refresh_known(refresh)
        except REDIS_ERRORS as exc:
            log.warning("could not refresh known instances: %s", exc)
        self.observer.swept(results, time.monotonic() - began)
        return results

    def claim_sweep(self) -> bool:
        """Deduplicate sweeps per host (see ``State.claim_sweep``)."""
        with self._redis():
            return self.state.claim_sweep(self.settings.sweep_interval)

    # the converge ----------------------------------------------------------------------
    def _ensure_plan(self, profile: Profile, instances: list[Instance]) -> Plan:
        return make_plan(instances, min_workers=profile.min_workers,
                         max_workers=profile.max_workers, keep=profile.keep)

    def _plan(self, profile: Profile, mode: Mode, instances: list[Instance],
              max_workers: int | None) -> Plan:
        if mode in ("ensure", "sweep"):
            return self._ensure_plan(profile, instances)
        limit = 0 if mode == "stop_all" else (max_workers or profile.max_workers)
        return make_plan(instances, min_workers=0, max_workers=limit, keep=profile.keep,
                         may_start=False)

    def _converge(self, profile: Profile, mode: Mode, *, dry_run: bool = False,
                  force: bool = False, max_workers: int | None = None,
                  requested_by: str = "unknown") -> Result:
        name = profile.name
        if mode == "ensure" and not dry_run:
            with self._redis():
                unlocked = self.state.snapshot_if_unlocked(name, lock_key(self.host, name))
            if unlocked is not None and not unlocked[0]:
                fast = self._known_within_bounds(profile, unlocked[1])
                if fast is not None:
                    return fast
        with self._locked(profile) as lock:
            with self._redis():
                snapshot = self.state.snapshot(name)
            pause, backoff = snapshot.paused, snapshot.backoff
            if mode == "ensure" and not dry_run and not pause:
                fast = self._known_within_bounds(profile, snapshot.known)
                if fast is not None:
                    return fast
            lock.start_renewal()  # from here on the hold may take a while
            with host_fence(self.settings.fence_dir, f"{self.host}.{name}"):
                instances = discover([profile], self.host)[name]
                if mode == "sweep" and pause:
                    return report.paused_result(self.host, name, instances, pause)
                plan = self._plan(profile, mode, instances, max_workers)
                now = self.clock()
                blocked_by_backoff = (plan.start and not force and backoff.active(now)
                                      and mode in ("ensure", "sweep"))
                if dry_run:
                    return report.dry_run_result(self.host, name, mode, plan,
                                                 backoff if blocked_by_backoff else None)
                if mode == "ensure" and pause:
                    with self._redis():
                        self.state.unpause(name)
                if mode == "stop_all":
                    with self._redis():
                        self.state.pause(name, requested_by)
                if blocked_by_backoff:
                    plan = Plan(keep=plan.keep, stop=plan.stop, start=0)
                stopped, started, failures = self._act(lock, profile, plan)
                # Nothing done: the scan above, under this lock, is still the truth.
                after = instances if plan.is_noop else discover([profile], self.host)[name]
                self._remember(lock, profile, after)

        action = report.action_for(mode, plan, stopped, started, failures, bool(after))
        new_backoff = None
        try:
            if failures:
                new_backoff = self.state.record_failure(name, profile.start_retries,
                                                        profile.backoff_max, now)
            elif started:
                self.state.reset_backoff(name)
        except REDIS_ERRORS as exc:
            log.warning("%s: could not update crash-loop state: %s", name, exc)
        if blocked_by_backoff and not stopped:
            action, new_backoff = "backoff", backoff
        if action in ("started", "stopped_extras", "stopped_all", "start_failed"):
            self._record(name, action, [*stopped, *(s.pid for s in started)], requested_by,
                         "; ".join(f.describe() for f in failures))
        return report.result(self.host, name, action, running=after,
                             started=[s.pid for s in started], stopped=stopped,
                             kept=[i.pid for i in plan.keep], failures=failures,
                             backoff=new_backoff, now=now)

    def _act(self, lock: ProfileLock, profile: Profile, plan: Plan,
             ) -> tuple[list[int], list[Any], list[Any]]:
        stopped: list[int] = []
        started: list[Any] = []
        failures: list[Any] = []
        if plan.is_noop:
            return stopped, started, failures
        self._confirm_owned(lock)
        if plan.stop:
            outcome = stop_instances(plan.stop, profile.stop_signal, profile.stop_timeout)
            stopped = outcome.stopped
            if outcome.survivors:
                log.error("%s: pids %s survived SIGKILL", profile.name, outcome.survivors)
        if plan.start:
            self._confirm_owned(lock)
            started, failures = spawn_instances(profile, plan.start, self.host,
                                                self.settings.log_dir)
        return stopped, started, failures

    def _known_within_bounds(self, profile: Profile, raw: bytes | None) -> Result | None:
        """The fast path: ``already_running`` from the verified known instances, or None."""
        known = decode_known(profile, raw)
        if not known:
            return None
        verified = verify_known(known)
        if verified is None:
            return None
        plan = self._ensure_plan(profile, verified)
        if not plan.is_noop:
            return None
        return report.result(self.host, profile.name, "already_running", running=plan.keep,
                             kept=[i.pid for i in plan.keep], now=self.clock())

    def _remember(self, lock: ProfileLock, profile: Profile, instances: list[Instance]) -> None:
        try:
            self.state.remember(profile, instances, lock.key, lock.lock_id)
        except REDIS_ERRORS as exc:
            log.warning("%s: could not remember instances: %s", profile.name, exc)

    # helpers ---------------------------------------------------------------------------
    def _confirm_owned(self, lock: ProfileLock) -> None:
        """Never act on a lock that expired under us (the renewal thread dies silently)."""
        with self._redis():
            if not lock.owned():
                raise LockLost(f"lost {lock.key} before acting; nothing was touched")

    @contextmanager
    def _locked(self, profile: Profile) -> Iterator[ProfileLock]:
        lock = ProfileLock(self.client, self.host, profile.name, self.settings.lock_expire)
        began = time.monotonic()
        with self._redis():
            acquired = lock.acquire_within(self.settings.lock_timeout, renew=False)
            self.observer.lock_waited(profile.name, time.monotonic() - began)
            if not acquired:
                raise LockTimeout(
                    f"{profile.name}: lock {lock.key} still held by another caller after "
                    f"{self.settings.lock_timeout:g} s"
                )
        try:
            yield lock
        finally:
            try:
                lock.release()
            except redis_lock.NotAcquired:
                log.warning("%s: lock expired before release", profile.name)
            except REDIS_ERRORS as exc:
                log.warning("%s: could not release lock (%s); it expires by itself",
                            profile.name, type(exc).__name__)

    @contextmanager
    def _redis(self) -> Iterator[None]:
        try:
            yield
        except REDIS_ERRORS as exc:
            raise RedisUnavailable(f"redis unreachable ({type(exc).__name__}); "
                                   "nothing was touched") from None

    def _observed(self, mode: Mode, result: Result) -> Result:
        self.observer.acted(mode, result)
        return result

    def _record(self, profile: str, action: str, pids: list[int], requested_by: str,
                detail: str) -> None:
        try:
            self.state.record(profile, action, pids, requested_by, detail)
        except REDIS_ERRORS as exc:
            log.warning("%s: could not record %s event: %s", profile, action, exc)
