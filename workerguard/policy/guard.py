"""The one place that combines the lock, the process table and the plan.

Each action runs discover -> plan -> act -> verify -> record under one Redis lock per
(host, profile) and, inside it, the host fence (``flock``): if the Redis lock is lost
(expiry during a long stall, a failover), a second guard on this host still waits for
the first to finish instead of acting on a stale view. Crash-loop state and the action
log entry are written before the lock is released, so the next holder reads them.

Why each mechanism around a converge is there (the rows of docs/benchmarks.md in brackets):

* the Redis lock: one converge per (host, profile) across every guard and CLI;
* the fence: the Redis lock is only as good as its TTL; the kernel's lock is not;
* the fast path (``Snapshots.read_if_unlocked`` + ``verify``): an ensure of a profile
  that is within bounds is answered in one Redis round trip and one ``/proc`` read per
  instance, without the lock or a process scan ["ensure, already running"];
* single-flight (``coalesce.Coalescer``): identical ensures that arrive while one waits
  share its converge instead of queueing on the lock one after another ["burst of 50"].

The guard takes a Redis client, a config and a process table (``HostProcesses``); it
knows nothing of Celery, so the CLI's ``--local`` mode, the Celery tasks and the tests
all call exactly this code. It holds one object per Redis record it uses (``store``),
each bound to its client and host. What it does is reported to its hooks
(``hooks.GuardHooks``). With ``watch_exits`` (the guard worker), every instance it sees is
watched, and an exit it did not cause is recorded and reported (``exited``,
``heal_requested``); with ``liveness``, every instance it sees is probed, and an unhealthy
one is recorded and reported (``unhealthy``, ``replace_requested``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import redis
import redis_lock

from workerguard.config.load import Config
from workerguard.config.schema import Profile, Settings
from workerguard.errors import BlindLocal, InvalidRequest, LockLost, LockTimeout, WorkerguardError
from workerguard.ops.connect import client_endpoint, unreachable
from workerguard.policy import reports
from workerguard.policy.cluster_side import ClusterSide
from workerguard.policy.coalesce import Coalescer
from workerguard.policy.hooks import GuardHooks
from workerguard.policy.outcome import Outcome
from workerguard.policy.plan import Plan, make_plan
from workerguard.policy.reports import PruneReport, StatusReport
from workerguard.probes.liveness import Health, Unhealthy
from workerguard.probes.readiness import await_ready, not_ready
from workerguard.probes.run import ProbeResult
from workerguard.store.backoff import Backoff, Backoffs
from workerguard.store.events import EventLog
from workerguard.store.exit_claims import ExitClaims
from workerguard.store.host_owner import HostOwner, Viewpoint, blind_spot
from workerguard.store.known_instances import KnownInstances, decode_known
from workerguard.store.lock import REDIS_ERRORS, ProfileLock
from workerguard.store.pause import Pauses
from workerguard.store.snapshot import Snapshots
from workerguard.store.sweep_claim import SweepClaims
from workerguard.timing import PRUNE_OLDER_THAN
from workerguard.workers import cgroups
from workerguard.workers.discover import Discovery
from workerguard.workers.fence import host_fence, profile_fence
from workerguard.workers.host import HostProcesses, SpawnOutcome
from workerguard.workers.identity import age_seconds, boot_id
from workerguard.workers.leashed import LeaseTerms, lease_dir
from workerguard.workers.logs import log_path
from workerguard.workers.model import Instance, Leftover
from workerguard.workers.rundir import checked_runtime_dir
from workerguard.workers.spawn import tail
from workerguard.workers.watch import Exit, describe_exit

log = logging.getLogger("workerguard.policy.guard")
Intent = Literal["ensure", "heal", "replace", "enforce", "stop_all"]
"""ensure: start and stop, clears a pause. heal: the same for sweeps and exit events,
but a paused profile stays stopped. replace: heal, after stopping one unhealthy instance
(counted toward backoff). enforce: only stop extras. stop_all: stop and pause."""
_PARALLEL_CONVERGES = 128
"""Converges of one sweep at once: mostly waiting out start windows, so cheap threads.
Enough for a cold start of 100 profiles to wait one window, not four as with 32 at a time
(``python benchmarks/run.py --only coldstart``); each still under its own lock."""


def refuse_a_blind_call(client: redis.Redis, settings: Settings) -> None:
    """Raise ``BlindLocal`` if the guard that runs this host's instances sees them from
    another uid or runtime dir than this process would (``store.host_owner``): a
    ``--local`` call from here would find none and start duplicates. Asked before a guard
    is made, so a refused call creates nothing, not even its runtime dir."""
    try:
        owner = HostOwner(client, settings.host_id).read()
    except REDIS_ERRORS as exc:
        raise unreachable(client_endpoint(client), exc, "; nothing was touched") from None
    problem = blind_spot(owner, Viewpoint.here(settings.runtime_dir), settings.host_id)
    if problem:
        raise BlindLocal(problem)


VACANCY_MARGIN = 5.0
"""Seconds beyond ``stop_timeout`` and two renew periods a cluster ``stop`` waits for its
slots to be given back."""


class Guard:
    def __init__(self, client: redis.Redis, config: Config, *, clock: Callable[[], float] = time.time,
                 table: HostProcesses | None = None, hooks: Sequence[GuardHooks] = (),
                 liveness: Health | None = None, watch_exits: bool = False) -> None:
        """``hooks`` are told what the guard does; they cannot change it.

        ``liveness`` is not a hook: it is a collaborator the guard drives, so it is an
        argument of its own. The guard hands it every instance it sees (``watch``), takes
        back the ones it stops (``forget``), pauses it with the profile and reads its
        ``snapshot`` into ``status``; it outlives the guard (config reloads build new
        guards; its probe threads go on). ``watch_exits``: watch every instance seen, and
        report an exit the guard did not cause (the guard worker; the CLI's ``--local``
        guard and most tests start no watcher).
        """
        self.client = client
        self.config = config
        self.settings = config.settings
        self.host = config.settings.host_id
        self.pauses = Pauses(client, self.host)
        self.backoffs = Backoffs(client, self.host)
        self.known = KnownInstances(client, self.host,
                                    ttl=max(2 * config.settings.sweep_interval, 10.0))
        self.snapshots = Snapshots(client, self.host)
        self.sweep_claims = SweepClaims(client, self.host)
        self.exit_claims = ExitClaims(client, self.host)
        self.events = EventLog(client, self.host, config.settings.events_maxlen)
        self.owner = HostOwner(client, self.host)
        self.viewpoint = Viewpoint.here(config.settings.runtime_dir)
        self._claimed = False
        self.clock = clock
        self.hooks = tuple(hooks)
        checked_runtime_dir(self.settings.runtime_dir)  # HostError naming the fix if not ours
        self.table = table or HostProcesses(
            self.host, registry_dir=self.settings.registry_dir, log_dir=self.settings.log_dir,
            fence_dir=self.settings.fence_dir, identity=self.settings.identity,
            cgroup_root=self.settings.cgroup_root,
            log_max_bytes=self.settings.log_max_bytes, log_backups=self.settings.log_backups)
        self.liveness = liveness
        self.watch_exits = watch_exits
        self.cluster = ClusterSide(client, self.host, lease_dir(self.settings.runtime_dir, self.host),
                                   config.cluster)
        self._flights: Coalescer[Outcome] = Coalescer(on_join=self._coalesced)
        # Exits and unhealthy instances are handled here, off the watcher's and prober's threads.
        self._handover = (ThreadPoolExecutor(1, thread_name_prefix="workerguard-exit")
                          if watch_exits or liveness else None)

    def __repr__(self) -> str:
        return f"Guard(host={self.host!r}, profiles={sorted(self.config.profiles)!r})"

    # public actions --------------------------------------------------------------------
    def ensure(self, profile: str, *, dry_run: bool = False, force: bool = False,
               requested_by: str = "unknown") -> Outcome:
        """Converge to min..max instances: start missing, stop extras; clears a pause.

        Identical ensures that arrive in this process while one is waiting to start
        share its result; the event log names the first requester.
        """
        spec = self.config.profile(profile)
        return self._flights.run(("ensure", profile, dry_run, force), lambda: self._observed(
            "ensure", self._converge(spec, "ensure", dry_run=dry_run, force=force,
                                     requested_by=requested_by)))

    def heal(self, profile: str, *, requested_by: str = "exit") -> Outcome:
        """Converge like a sweep does for one profile: a paused profile stays stopped."""
        return self._observed("heal", self._converge(self.config.profile(profile), "heal",
                                                     requested_by=requested_by))

    def replace(self, profile: str, instance_id: str, *, reason: str = "",
                requested_by: str = "probe") -> Outcome:
        """Stop the unhealthy instance ``instance_id`` (gracefully, then its whole group) and
        heal: a start follows unless backoff holds it. Counts toward crash-loop backoff.
        An instance already gone, or a paused profile, is just healed (or left paused)."""
        return self._observed("replace", self._converge(
            self.config.profile(profile), "replace", victim=instance_id, reason=reason,
            requested_by=requested_by))

    def enforce(self, profile: str, *, max_workers: int | None = None, dry_run: bool = False,
                requested_by: str = "unknown") -> Outcome:
        """Stop instances beyond ``max_workers`` (the profile's when None); never starts."""
        return self._observed("enforce", self._converge(
            self.config.profile(profile), "enforce", dry_run=dry_run, max_workers=max_workers,
            requested_by=requested_by))

    def stop_all(self, profile: str, *, dry_run: bool = False,
                 requested_by: str = "unknown") -> Outcome:
        """Stop every instance and pause the profile so sweeps leave it stopped. A cluster
        profile is paused fleet-wide: this waits (outside the lock, which a holder here
        needs) until every holder has stopped its instance and given its slot back."""
        spec = self.config.profile(profile)
        outcome = self._converge(spec, "stop_all", dry_run=dry_run, requested_by=requested_by)
        if spec.is_cluster and not dry_run:
            timeout = spec.stop_timeout + 2 * self.config.cluster.renew_period + VACANCY_MARGIN
            with self._redis():
                if not self.cluster.wait_vacant(spec, timeout):
                    log.warning("%s: slots still held %.0f s after the stop", spec.name, timeout)
        return self._observed("stop_all", outcome)

    def _claim_the_host(self) -> None:
        """Say from where this host's instances are seen (before a spawn, and at the first
        sweep of this guard); a failure to reach Redis is logged, never in the way."""
        try:
            self.owner.claim(self.viewpoint)
            self._claimed = True
        except REDIS_ERRORS as exc:
            log.warning("could not record this guard's uid and runtime dir: %s", exc)

    def status(self, profile: str | None = None) -> StatusReport:
        """Instances per profile on this host, with pause, backoff and orphans. No lock."""
        profiles = ([self.config.profile(profile)] if profile is not None
                    else list(self.config.profiles.values()))
        found = self._discover(profiles)
        names = [p.name for p in profiles]
        with self._redis():
            paused = self.pauses.read(names)
            backoffs = self.backoffs.read(names)
        return reports.status_report(self.host, profile, profiles, found.instances, paused,
                                     backoffs, self.clock(), orphans=found.orphans,
                                     identity=self.table.mode,
                                     identity_note=self.table.layout.note,
                                     health=self.liveness.snapshot() if self.liveness else None,
                                     exit_watch=self.table.watcher.mode if self.watch_exits else None)

    def sweep(self, *, requested_by: str = "beat", trigger: str = "beat") -> list[Outcome]:
        """Heal every profile of this host, with one process scan.

        A profile within bounds (or paused) is answered from the scan without its lock;
        the others converge in parallel, each under its own lock. Any error of one
        profile becomes that profile's error result; the rest of the sweep goes on.
        """
        began = time.monotonic()
        profiles = list(self.config.profiles.values())
        with self._redis():  # read before the scan: a converge that writes later wins
            paused, known = self.snapshots.paused_and_known([p.name for p in profiles])
        if not self._claimed:
            self._claim_the_host()
        found = self._discover(profiles)
        self._report_orphans(found)
        for instances in found.instances.values():
            self._watch(instances)
        results: dict[str, Outcome] = {}
        refresh = []
        pending = []
        for profile in profiles:
            instances = found.instances[profile.name]
            plan = self._plan(profile, "heal", instances)
            if self.liveness is not None:
                self.liveness.pause(profile.name, bool(paused[profile.name]))
            if paused[profile.name]:
                results[profile.name] = reports.paused_result(self.host, profile.name, instances,
                                                             paused[profile.name] or {})
            elif plan.is_noop and not self._leftovers(found, profile):
                results[profile.name] = self._already_running(profile, plan, instances)
                refresh.append((profile, known[profile.name], instances))
            else:
                pending.append(profile)
        if pending:
            with ThreadPoolExecutor(min(_PARALLEL_CONVERGES, len(pending)),
                                    thread_name_prefix="workerguard-sweep") as pool:
                for profile, result in zip(pending, pool.map(
                        lambda p: self._converge_or_error(p, requested_by), pending), strict=True):
                    results[profile.name] = result
            if len(pending) > 1:
                self._close_idle_connections()
        try:  # what this scan saw becomes the known instances (unless a converge wrote since)
            self.known.refresh(refresh)
        except REDIS_ERRORS as exc:
            log.warning("could not refresh known instances: %s", exc)
        self._collect_garbage()
        ordered = [results[p.name] for p in profiles]
        seconds = time.monotonic() - began
        for hook in self.hooks:
            hook.swept(ordered, seconds, trigger)
        return ordered

    def _close_idle_connections(self) -> None:
        """Close the connections that parallel converges opened and left idle in the pool.

        A pool keeps every connection it ever opened: after a cold start of 50 profiles a
        guard held 37 connections to Redis for good, and the fleet shares Redis's
        ``maxclients`` (docs/benchmarks.md, ``redis_idle``). Only idle ones are closed
        (one in use is untouched); the next command on one reconnects."""
        pool = getattr(self.client, "connection_pool", None)
        if pool is not None:
            pool.disconnect(inuse_connections=False)

    def _collect_garbage(self) -> None:
        """This host's leftovers (``workers.garbage``); a failure is logged, never raised."""
        try:
            collected = self.table.collect_garbage()
        except OSError as exc:
            log.warning("could not collect this host's garbage: %s", exc)
            return
        if collected.removed:
            log.info("removed %d leftovers: %s", len(collected.removed),
                     ", ".join(str(path) for path in collected.removed[:5])
                     + (" ..." if len(collected.removed) > 5 else ""))
        for hook in self.hooks:
            hook.collected(len(collected.removed), collected.stale_groups)

    def prune(self, *, dry_run: bool = False, requested_by: str = "unknown",
              older_than: float = PRUNE_OLDER_THAN) -> PruneReport:
        """Stop the orphans of this host (instances of profiles no longer configured), then
        remove leftovers: this host's, and the empty groups of host ids no guard has
        served for ``older_than`` seconds (``workers.garbage``)."""
        deadline = time.monotonic() + self.settings.lock_timeout
        with host_fence(self.settings.fence_dir, f"{self.host}.-orphans-", deadline):
            found = self._discover([])
            stopped: list[int] = []
            if found.orphans and not dry_run:
                self._claim_exits(found.orphans)
                stopped = self.table.stop(found.orphans, "SIGTERM", 10.0).stopped
                self._record("-", "pruned", stopped, requested_by,
                             ", ".join(sorted({i.profile for i in found.orphans})))
            collected = self.table.collect_garbage(unserved_for=older_than, dry_run=dry_run)
        return reports.prune_report(self.host, found.orphans, stopped, dry_run,
                                    [str(path) for path in collected.removed],
                                    collected.stale_groups)

    def claim_sweep(self, *, always: bool = False) -> bool:
        """True if this host's last sweep began long enough ago (``store.sweep_claim``);
        the claimed sweep becomes the last. ``always``: claim in any case (the startup
        sweep, which must run, and from which the next ones count)."""
        with self._redis():
            return self.sweep_claims.claim(self.settings.sweep_interval,
                                           **({"spacing": 0.0} if always else {}))

    # the converge ----------------------------------------------------------------------
    def _converge(self, profile: Profile, intent: Intent, *, dry_run: bool = False,
                  force: bool = False, max_workers: int | None = None,
                  victim: str | None = None, reason: str = "",
                  requested_by: str = "unknown") -> Outcome:
        if profile.is_cluster and intent == "enforce":
            raise InvalidRequest(
                f"profile {profile.name!r} has scope = \"cluster\": cluster profiles run exactly "
                f"max_workers across the fleet (ensure or stop it); nothing was touched")
        fast = (self._fast_path(profile) if intent == "ensure" and not dry_run
                and not profile.is_cluster else None)
        if fast is not None:
            return fast
        deadline = time.monotonic() + self.settings.lock_timeout  # the lock's, then the fence's
        with self._locked(profile) as lock:
            with self._redis():
                snapshot = self.snapshots.read(profile.name)
            if intent == "ensure" and not dry_run and not snapshot.paused and not profile.is_cluster:
                fast = self._known_within_bounds(profile, snapshot.known)
                if fast is not None:  # the converge we waited for has just done it
                    return fast
            lock.start_renewal()  # from here on the hold may take a while
            with host_fence(self.settings.fence_dir, profile_fence(self.host, profile.name),
                            deadline):
                found = self._discover([profile], full=False)
                instances = found.instances[profile.name]
                if intent in ("heal", "replace") and snapshot.paused:
                    return reports.paused_result(self.host, profile.name, instances, snapshot.paused)
                plan = self._plan(profile, intent, instances, max_workers, victim)
                now = self.clock()
                blocked_by = self._blocking_backoff(profile, intent, snapshot.backoff, plan, now,
                                                    force=force, dry_run=dry_run)
                if dry_run:
                    return reports.dry_run_result(self.host, profile.name, intent, plan, blocked_by)
                self._set_pause(profile, intent, snapshot.paused, requested_by)
                acted = self._act(lock, profile, plan.without_starts() if blocked_by else plan,
                                  self._leftovers(found, profile))
                after = (self._discover([profile], full=False).instances[profile.name]
                         if acted.changed else instances)
                if profile.is_cluster:
                    self._release_vacated(profile, after, stopping=intent == "stop_all")
                    self._publish_slots(profile, after)
                self._remember(lock, profile, after)
                return self._conclude(profile, intent, plan, acted, after, blocked_by, now,
                                      requested_by, reason)

    def _blocking_backoff(self, profile: Profile, intent: Intent, stored: Backoff, plan: Plan,
                          now: float, *, force: bool, dry_run: bool) -> Backoff | None:
        """The crash-loop backoff that holds this converge's starts back, or None.

        ``enforce`` never starts and ``force`` ignores it; a clock set back re-anchors it
        to now; a replacement counts as a failed start before the plan's start is judged.
        """
        backoff = stored if intent != "enforce" and not force else Backoff()
        if backoff.clock_went_back(now) and not dry_run:
            with self._redis():
                backoff = self.backoffs.reanchor(profile.name, backoff, now, profile.backoff_max)
        if intent == "replace" and plan.stop:
            backoff = self._count_replacement(profile, plan.stop[0], backoff, now)
        return backoff if plan.start and backoff.active(now, profile.backoff_max) else None

    def _plan(self, profile: Profile, intent: Intent, instances: list[Instance],
              max_workers: int | None = None, victim: str | None = None) -> Plan:
        if intent == "replace":  # the victim goes; the rest is planned as a heal
            gone = [i for i in instances if i.instance_id == victim]
            plan = self._plan(profile, "heal", [i for i in instances if i not in gone])
            return Plan(keep=plan.keep, stop=(*gone, *plan.stop), start=plan.start,
                        spare=plan.spare)
        if profile.is_cluster:
            with self._redis():
                return self.cluster.plan(profile, instances, stopping=intent == "stop_all").plan
        if intent in ("ensure", "heal"):
            return make_plan(instances, min_workers=profile.min_workers,
                             max_workers=profile.max_workers, keep=profile.keep,
                             stop_adopted=profile.stop_adopted)
        limit = 0 if intent == "stop_all" else (max_workers or profile.max_workers)
        return make_plan(instances, min_workers=0, max_workers=limit, keep=profile.keep,
                         may_start=False, stop_adopted=profile.stop_adopted or intent == "stop_all")

    def _act(self, lock: ProfileLock, profile: Profile, plan: Plan,
             leftovers: Sequence[Leftover]) -> Acted:
        acted = Acted()
        if plan.is_noop and not leftovers:
            return acted
        self._confirm_owned(lock)  # never act on a lock that expired under us
        if leftovers:
            acted.cleaned = self.table.clean(leftovers)
        unkilled: list[int] = []
        if plan.stop:
            self._claim_exits(plan.stop)
            if self.liveness is not None:
                self.liveness.forget(plan.stop)
            outcome = self.table.stop(plan.stop, profile.stop_signal, profile.stop_timeout)
            acted.stopped, unkilled = outcome.stopped, list(outcome.survivors)
            if outcome.survivors:
                log.error("%s: pids %s survived SIGKILL", profile.name, outcome.survivors)
        leases = self._confirm_leased(profile, plan)
        if profile.is_cluster and unkilled:
            leases = ()  # a slot starts again only once its previous instance is gone
        if plan.start and (leases or not profile.is_cluster):
            self._claim_the_host()
            survivors = [*plan.keep, *plan.spare]
            acted.spawned = self.table.spawn(profile, plan.start,
                                             taken=[i.index for i in survivors if i.instance_id],
                                             leases=leases)
            if profile.probe is not None:
                acted.spawned = self._ready(profile, acted.spawned)
        return acted

    def _ready(self, profile: Profile, spawned: SpawnOutcome) -> SpawnOutcome:
        """Keep the instances that passed their probe; stop the rest, as failed starts."""
        ready: list[Instance] = []
        late: list[Instance] = []
        failures = list(spawned.failures)

        def observed(result: ProbeResult) -> None:
            for hook in self.hooks:
                hook.probed(profile.name, result.ok, result.duration)

        for instance, result in await_ready(self.host, profile, spawned.started, observed):
            if result.ok:
                ready.append(instance)
            else:
                own_lines = tail(log_path(self.table.log_dir, profile.name, instance.index),
                                 since=spawned.log_starts.get(instance.instance_id or "", 0))
                failures.append(not_ready(profile, instance, result, own_lines))
                late.append(instance)
        if late:
            self._claim_exits(late)
            self.table.stop(late, profile.stop_signal, profile.stop_timeout)
        return SpawnOutcome(started=ready, failures=failures, log_starts=spawned.log_starts)

    def _count_replacement(self, profile: Profile, victim: Instance, backoff: Backoff,
                           now: float) -> Backoff:
        """A replacement counts as a failed start. An instance that ran ``backoff_max`` or
        longer starts the count afresh (as Kubernetes resets CrashLoopBackOff after a
        good run), so a worker that hangs once a week is replaced at once."""
        with self._redis():
            if age_seconds(victim.start) >= profile.backoff_max:
                self.backoffs.reset(profile.name)
            return self.backoffs.record_failure(profile.name, profile.start_retries,
                                                profile.backoff_max, now)

    def _conclude(self, profile: Profile, intent: Intent, plan: Plan, acted: Acted,
                  after: list[Instance], blocked_by: Backoff | None, now: float,
                  requested_by: str, reason: str = "") -> Outcome:
        """Crash-loop state and the action log, still under the lock; then the result."""
        name = profile.name
        started, failures = acted.spawned.started, acted.spawned.failures
        worker_failures = [f for f in failures if not f.host_error]
        backoff = blocked_by
        try:
            if worker_failures:  # the delay runs from the failure, not from the plan
                backoff = self.backoffs.record_failure(name, profile.start_retries,
                                                       profile.backoff_max, self.clock())
            elif started and intent != "replace":  # a replacement stays counted
                self.backoffs.reset(name)
        except REDIS_ERRORS as exc:
            log.warning("%s: could not update crash-loop state: %s", name, exc)
        action = reports.action_for(intent, plan, acted.stopped, started, failures, bool(after))
        if blocked_by is not None and not acted.stopped:
            action = "backoff"
        if intent == "replace" and acted.stopped:
            self._record(name, "replaced", [*acted.stopped, *(s.pid for s in started)],
                         requested_by, "; ".join([reason, *(f.describe() for f in failures)]))
        elif action in ("started", "stopped_extras", "stopped_all", "start_failed"):
            self._record(name, action, [*acted.stopped, *(s.pid for s in started)], requested_by,
                         "; ".join(f.describe() for f in failures))
        self._watch(after)
        return reports.result(self.host, name, action, running=after,
                             started=[s.pid for s in started], stopped=acted.stopped,
                             kept=[i.pid for i in plan.keep], failures=failures,
                             backoff=backoff, now=now, cleaned=acted.cleaned,
                             spare=[i.pid for i in plan.spare])

    # the fast path -------------------------------------------------------------------
    def _fast_path(self, profile: Profile) -> Outcome | None:
        with self._redis():
            unlocked = self.snapshots.read_if_unlocked(profile.name)
        if unlocked is None or unlocked.paused:
            return None
        return self._known_within_bounds(profile, unlocked.known)

    def _known_within_bounds(self, profile: Profile, raw: bytes | None) -> Outcome | None:
        """``already_running`` from the verified known instances, or None."""
        known = decode_known(profile, raw)
        verified = self.table.verify(known) if known else None
        if not verified:
            return None
        plan = self._plan(profile, "ensure", verified)
        if not plan.is_noop:
            return None
        self._watch(verified)
        return self._already_running(profile, plan, verified)

    def _already_running(self, profile: Profile, plan: Plan, running: list[Instance]) -> Outcome:
        return reports.result(self.host, profile.name, "already_running", running=running,
                             kept=[i.pid for i in plan.keep], spare=[i.pid for i in plan.spare],
                             now=self.clock())

    # exits ---------------------------------------------------------------------------
    def _watch(self, instances: Sequence[Instance]) -> None:
        """Watch (and probe) every instance this guard sees (the guard worker only)."""
        if self.liveness is not None and instances:
            profile = self.config.profiles.get(instances[0].profile)
            if profile is not None:
                self.liveness.watch(profile, instances)
        if not self.watch_exits:
            return
        for instance in instances:
            key = instance.instance_id or f"adopted-{instance.pid}-{instance.start}"
            self.table.watcher.watch(key, instance.pid, instance.start,
                                     self._exit_callback(instance))

    def _exit_callback(self, instance: Instance) -> Callable[[Exit], None]:
        def exited(event: Exit) -> None:  # in the watcher's thread: hand over, return at once
            if instance.cgroup is not None:
                cgroups.prime()  # a spawn into a new group is likely to follow
            if self._handover is not None:
                self._handover.submit(self._handle_exit, instance, event)

        return exited

    def _handle_exit(self, instance: Instance, event: Exit) -> None:
        """An exit this guard did not cause: record it once per host, then heal."""
        if self.liveness is not None:
            self.liveness.forget([instance])
        uptime = max(0.0, age_seconds(instance.start) - max(0.0, time.time() - event.at))
        reason = f"pid {instance.pid} {describe_exit(event.returncode)} after {uptime:.1f} s"
        try:
            if not self.exit_claims.claim(self._exit_key(instance)):
                return  # stopped on purpose, or another guard of this host took it
            self._record(instance.profile, "exited", [instance.pid], "exit watcher", reason)
        except REDIS_ERRORS as exc:
            log.warning("%s: could not record the exit of pid %s: %s", instance.profile,
                        instance.pid, exc)
        for hook in self.hooks:
            hook.exited(instance.profile)
        log.info("%s: %s", instance.profile, reason)
        if instance.profile in self.config.profiles:
            for hook in self.hooks:
                hook.heal_requested(instance.profile, reason)

    def unhealthy(self, event: Unhealthy) -> None:
        """The liveness probes found ``event``'s instance unhealthy: record it, ask for its
        replacement. Called on a probe thread: handed over at once."""
        if self._handover is not None:
            self._handover.submit(self._handle_unhealthy, event)

    def _handle_unhealthy(self, event: Unhealthy) -> None:
        spec = self.config.profiles.get(event.profile)
        threshold = spec.probe.failure_threshold if spec is not None and spec.probe else "?"
        reason = (f"pid {event.pid} failed its probe {threshold} times in a row: "
                  f"{event.output}")
        self._record(event.profile, "unhealthy", [event.pid], "probe", reason)
        for hook in self.hooks:
            hook.unhealthy(event.profile)
        log.warning("%s: %s", event.profile, reason)
        if spec is not None and spec.probe is not None:
            for hook in self.hooks:
                hook.replace_requested(event)

    def _claim_exits(self, instances: Sequence[Instance]) -> None:
        """Before stopping on purpose: no watcher of this host reports these exits."""
        try:
            for instance in instances:
                self.exit_claims.claim(self._exit_key(instance))
        except REDIS_ERRORS as exc:
            log.warning("could not mark stops as intended: %s", exc)

    @staticmethod
    def _exit_key(instance: Instance) -> str:
        """Which exit: the instance's process (pid, start ticks) of this boot."""
        return f"{instance.instance_id or 'adopted'}:{instance.pid}:{instance.start}:{boot_id()[:8]}"

    # helpers ---------------------------------------------------------------------------
    def _discover(self, profiles: Sequence[Profile], full: bool = True) -> Discovery:
        return self.table.discover(profiles, self.config.profiles.values(), full=full)

    @staticmethod
    def _leftovers(found: Discovery, profile: Profile) -> list[Leftover]:
        return [left for left in found.leftovers if left.profile == profile.name]

    def _converge_or_error(self, profile: Profile, requested_by: str) -> Outcome:
        """A sweep's heal of one profile; any error becomes that profile's error result,
        so one profile's failure never ends the sweep of the others."""
        try:
            return self._converge(profile, "heal", requested_by=requested_by)
        except WorkerguardError as exc:
            return reports.error_result(self.host, profile.name, exc)
        except Exception as exc:
            log.exception("%s: unexpected error in sweep", profile.name)
            return reports.error_result(self.host, profile.name, exc)

    def _report_orphans(self, found: Discovery) -> None:
        for hook in self.hooks:
            hook.orphaned(len(found.orphans))
        for orphan in found.orphans:
            try:
                if self.exit_claims.claim(f"orphan:{orphan.instance_id}", ttl=86_400):
                    self._record(orphan.profile, "orphaned", [orphan.pid], "sweep",
                                 f"profile {orphan.profile!r} is not configured; "
                                 "`workerguard prune` stops it")
            except REDIS_ERRORS:
                return

    def _confirm_leased(self, profile: Profile, plan: Plan) -> tuple[LeaseTerms, ...]:
        """A cluster profile's grants still more than a start window from their deadline,
        read again right before the start (beside ``_confirm_owned``: never start on a lease
        that lapses within the start window)."""
        if not plan.leases:
            return ()
        leased = self.cluster.still_leased(profile, plan.leases)
        if len(leased) < len(plan.leases):
            log.warning("%s: slots %s lapse within the start window; not started there",
                        profile.name, sorted({t.slot for t in plan.leases} - {t.slot for t in leased}))
        return leased

    def _release_vacated(self, profile: Profile, instances: list[Instance], stopping: bool) -> None:
        try:
            released = self.cluster.release_vacated(profile, instances, stopping=stopping)
        except REDIS_ERRORS as exc:  # the lease expires on its own; nothing runs for it
            log.warning("%s: could not release slots: %s", profile.name, exc)
            return
        if released:
            log.info("%s: released slots %s", profile.name, released)

    def _publish_slots(self, profile: Profile, instances: list[Instance]) -> None:
        """The pid and start of each cluster instance, for ``status --cluster`` (best effort:
        the next converge writes it again)."""
        try:
            self.cluster.publish_info(profile, instances)
        except REDIS_ERRORS as exc:
            log.warning("%s: could not publish the slots' instances: %s", profile.name, exc)

    def _set_pause(self, profile: Profile, intent: Intent, paused: Any, requested_by: str) -> None:
        if profile.is_cluster and intent in ("ensure", "stop_all"):
            with self._redis():
                self.cluster.pause(profile, intent == "stop_all")
        with self._redis():
            if intent == "ensure" and paused:
                self.pauses.unpause(profile.name)
            elif intent == "stop_all":
                self.pauses.pause(profile.name, requested_by)

    def _remember(self, lock: ProfileLock, profile: Profile, instances: list[Instance]) -> None:
        try:
            self.known.remember(profile, instances, lock.key, lock.lock_id)
        except REDIS_ERRORS as exc:
            log.warning("%s: could not remember instances: %s", profile.name, exc)

    def _confirm_owned(self, lock: ProfileLock) -> None:
        """The renewal thread dies silently when the key is lost (docs/pitfalls.md)."""
        with self._redis():
            if not lock.owned():
                raise LockLost(f"lost {lock.key} before acting; nothing was touched")

    @contextmanager
    def _locked(self, profile: Profile) -> Iterator[ProfileLock]:
        lock = ProfileLock(self.client, self.host, profile.name, self.settings.lock_expire)
        began = time.monotonic()
        with self._redis():
            acquired = lock.acquire_within(self.settings.lock_timeout, renew=False)
            waited = time.monotonic() - began
            for hook in self.hooks:
                hook.lock_waited(profile.name, waited)
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
            raise unreachable(client_endpoint(self.client), exc, "; nothing was touched") from None

    def _coalesced(self, key: Hashable) -> None:
        if isinstance(key, tuple):  # ("ensure", profile, dry_run, force)
            for hook in self.hooks:
                hook.coalesced(str(key[1]))

    def _observed(self, mode: str, result: Outcome) -> Outcome:
        for hook in self.hooks:
            hook.acted(mode, result)
        return result

    def _record(self, profile: str, action: str, pids: list[int], requested_by: str,
                detail: str) -> None:
        try:
            self.events.record(profile, action, pids, requested_by, detail)
        except REDIS_ERRORS as exc:
            log.warning("%s: could not record %s event: %s", profile, action, exc)


@dataclass
class Acted:
    """What ``_act`` did."""

    stopped: list[int] = field(default_factory=list)
    cleaned: list[int] = field(default_factory=list)
    spawned: SpawnOutcome = field(default_factory=SpawnOutcome)

    @property
    def changed(self) -> bool:
        return bool(self.stopped or self.cleaned or self.spawned.started or self.spawned.failures)
