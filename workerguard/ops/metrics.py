"""Prometheus metrics of a guard worker (``metrics_port`` / ``WORKERGUARD_METRICS_PORT``).

The guard reports to its hooks (``policy.hooks.GuardHooks``); ``GuardMetrics`` is one:
it turns those calls into metrics in a registry of its own, served over HTTP from the
guard worker's main process. That is right for the ``threads`` and ``solo`` pools
(one process). With ``prefork`` the tasks run in pool children whose counters the
main process never sees, so ``runners.run_worker`` refuses metrics with prefork
rather than serve numbers that are silently wrong.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from workerguard.config.load import Config
from workerguard.policy.hooks import (
    LEASE_CLAIMS,
    LEASE_RENEWALS,
    SELF_FENCES,
    SWEEP_TRIGGERS,
    GuardHooks,
)
from workerguard.policy.outcome import Outcome

LABELS = ("host", "profile")
LOCK_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PROBE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RENEW_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SWEEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GuardMetrics(GuardHooks):
    """A guard hook: one registry per guard worker."""

    def __init__(self, config: Config, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.host = config.settings.host_id
        r = self.registry
        self.instances = Gauge("workerguard_instances", "Instances running after the last "
                               "result or sweep.", LABELS, registry=r)
        self.min_workers = Gauge("workerguard_min_workers", "Configured min_workers.", LABELS,
                                 registry=r)
        self.max_workers = Gauge("workerguard_max_workers", "Configured max_workers.", LABELS,
                                 registry=r)
        self.paused = Gauge("workerguard_paused", "1 while the profile is paused by stop_all.",
                            LABELS, registry=r)
        self.backoff = Gauge("workerguard_backoff", "1 while starts are delayed by crash-loop "
                             "backoff.", LABELS, registry=r)
        self.starts = Counter("workerguard_starts", "Instances started.", LABELS, registry=r)
        self.stops = Counter("workerguard_stops", "Instances stopped.", LABELS, registry=r)
        self.failed_starts = Counter("workerguard_start_failures", "Converges in which a "
                                     "started instance died within start_seconds.", LABELS,
                                     registry=r)
        self.errors = Counter("workerguard_errors", "Converges that failed without acting "
                              "(lock timeout, Redis unreachable) during sweeps.", LABELS,
                              registry=r)
        self.pauses = Counter("workerguard_pauses", "stop_all requests (each pauses the "
                              "profile).", LABELS, registry=r)
        self.exits = Counter("workerguard_exits", "Instances that exited without the guard "
                             "stopping them (each is restarted at once unless paused or in "
                             "backoff).", LABELS, registry=r)
        self.orphans = Gauge("workerguard_orphaned_instances", "Instances of profiles that are no "
                             "longer configured, seen by the last status or sweep.", ("host",),
                             registry=r)
        self.stale_groups = Gauge("workerguard_stale_groups", "Empty instance cgroups left "
                                  "under the cgroup root after the last sweep: of host ids "
                                  "served recently, or younger than the spawn grace "
                                  "(`workerguard prune` removes those of unserved host ids).",
                                  ("host",), registry=r)
        self.garbage_removed = Counter("workerguard_garbage_removed", "Leftovers removed by "
                                       "sweeps: empty instance groups, temp records, probe dirs.",
                                       ("host",), registry=r)
        self.probes = Counter("workerguard_probes", "Probes run (readiness and liveness), by "
                              "result (ok / failed).", (*LABELS, "result"), registry=r)
        self.probe_duration = Histogram("workerguard_probe_duration_seconds", "Duration of a "
                                        "probe.", LABELS, buckets=PROBE_BUCKETS, registry=r)
        self.coalesced_requests = Counter("workerguard_coalesced_requests", "ensure requests "
                                          "answered by an identical request's converge "
                                          "(single-flight) instead of their own.", LABELS,
                                          registry=r)
        self.unhealthy_instances = Counter("workerguard_unhealthy", "Instances that failed their "
                                           "probe failure_threshold times in a row (each is "
                                           "replaced).", LABELS, registry=r)
        self.lock_wait = Histogram("workerguard_lock_wait_seconds", "Time a request waited "
                                   "for its profile's lock.", LABELS, buckets=LOCK_BUCKETS,
                                   registry=r)
        self.sweep_duration = Histogram("workerguard_sweep_duration_seconds", "Duration of a "
                                        "sweep of this host.", ("host",), buckets=SWEEP_BUCKETS,
                                        registry=r)
        self.last_sweep = Gauge("workerguard_last_sweep_timestamp_seconds", "Unix time the "
                                "last sweep of this host finished.", ("host",), registry=r)
        self.sweeps = Counter("workerguard_sweeps", "Sweeps of this host, by what triggered "
                              "them (beat, timer, startup).", ("host", "trigger"), registry=r)
        for trigger in SWEEP_TRIGGERS:
            self.sweeps.labels(self.host, trigger)
        self.sweep_interval = Gauge("workerguard_sweep_interval_seconds", "Configured "
                                    "sweep_interval.", ("host",), registry=r)
        self.sweep_interval.labels(self.host).set(config.settings.sweep_interval)
        self.broker_up = Gauge("workerguard_broker_up", "1 while this guard reaches its Redis "
                               "broker (the Redis watch's reading every few seconds answered "
                               "within the socket timeout), else 0.", ("host",), registry=r)
        self.redis_failovers = Counter("workerguard_redis_failovers", "Times the Redis "
                                       "primary changed (a failover or a restart: run_id or "
                                       "master_replid).", ("host",), registry=r)
        self.redis_clock_jumps = Counter("workerguard_redis_clock_jumps", "Times the Redis "
                                         "clock jumped against this host's clock.", ("host",),
                                         registry=r)
        self.redis_clock_offset_seconds = Gauge("workerguard_redis_clock_offset_seconds",
                                                "Redis TIME minus this host's wall clock at "
                                                "the last reading.", ("host",), registry=r)
        for family in (self.redis_failovers, self.redis_clock_jumps):
            family.labels(self.host)  # at 0 from the start
        self._cluster_metrics(config)
        # Every series an alert reads exists from the start, for every profile: a rule
        # joined on a series that appears only later (``and workerguard_paused == 0``)
        # would match nothing until then. The startup sweep sets the real values at once.
        self.last_sweep.labels(self.host).set(time.time())  # until the first sweep: the start
        self.stale_groups.labels(self.host).set(0)
        self.garbage_removed.labels(self.host)
        for profile in config.profiles.values():
            labels = (self.host, profile.name)
            self.min_workers.labels(*labels).set(profile.min_workers)
            self.max_workers.labels(*labels).set(profile.max_workers)
            for gauge in (self.instances, self.paused, self.backoff):
                gauge.labels(*labels).set(0)
            for family in (self.starts, self.stops, self.failed_starts, self.errors, self.pauses,
                           self.exits, self.unhealthy_instances):
                family.labels(*labels)  # present at 0 from the start: rate() needs a base
            if profile.probe is not None:
                for outcome in ("ok", "failed"):
                    self.probes.labels(*labels, outcome)
        self._lock = threading.Lock()

    def _cluster_metrics(self, config: Config) -> None:
        """The metrics of cluster profiles (FLEET design 4.4), fed by the cluster loop."""
        r = self.registry
        self.cluster_slots = Gauge("workerguard_cluster_slots", "Slots of a cluster profile "
                                   "across the fleet (its max_workers).", LABELS, registry=r)
        self.leases_held = Gauge("workerguard_leases_held", "Slots of a cluster profile this "
                                 "host holds (the sum over hosts is the fleet's instances).",
                                 LABELS, registry=r)
        self.cluster_paused = Gauge("workerguard_cluster_paused", "1 while a cluster profile is "
                                    "stopped fleet-wide (stop), as this host's last lease round "
                                    "saw it.", LABELS, registry=r)
        self.cluster_spec_mismatch = Gauge(
            "workerguard_cluster_spec_mismatch", "1 while this host's definition of a cluster "
            "profile differs from the fleet's spec (it claims nothing until the fleet agrees).",
            LABELS, registry=r)
        self.lease_renewals = Counter("workerguard_lease_renewals", "Renewals of held slots, "
                                      "by result (ok / lost / released / not_replicated / error).",
                                      (*LABELS, "result"), registry=r)
        self.lease_claims = Counter("workerguard_lease_claims", "Claims of slots, by result "
                                    "(won / lost / held_off / not_replicated / refused / "
                                    "error).", (*LABELS, "result"), registry=r)
        self.self_fences = Counter("workerguard_self_fences", "Instances fenced for their "
                                   "lease, by reason (deadline: no renewal acknowledged "
                                   "for the renew deadline; lost: the lease found lost).",
                                   (*LABELS, "reason"), registry=r)
        self.lease_renew_seconds = Histogram("workerguard_lease_renew_seconds", "Round trip "
                                             "of a renewal pipeline, WAIT included.", ("host",),
                                             buckets=RENEW_BUCKETS, registry=r)
        self.lease_remaining = Gauge("workerguard_lease_remaining_seconds", "Hard deadline "
                                     "minus now for each held slot after the last round "
                                     "(0: not held here).", (*LABELS, "slot"), registry=r)
        self.fencing_token = Gauge("workerguard_fencing_token", "The fencing token of each "
                                   "slot held here (0: not held here).", (*LABELS, "slot"),
                                   registry=r)
        self.claim_holdoff = Gauge("workerguard_claim_holdoff_seconds", "Claim hold-off left "
                                   "after a Redis primary change or clock jump (0 normally).",
                                   ("host",), registry=r)
        cluster = [p for p in config.profiles.values() if p.is_cluster]
        if cluster:
            self.claim_holdoff.labels(self.host).set(0)
        for profile in cluster:
            labels = (self.host, profile.name)
            self.cluster_slots.labels(*labels).set(profile.max_workers)
            self.leases_held.labels(*labels).set(0)
            self.cluster_paused.labels(*labels).set(0)
            self.cluster_spec_mismatch.labels(*labels).set(0)
            for result in LEASE_RENEWALS:
                self.lease_renewals.labels(*labels, result)
            for result in LEASE_CLAIMS:
                self.lease_claims.labels(*labels, result)
            for reason in SELF_FENCES:
                self.self_fences.labels(*labels, reason)

    # GuardHooks --------------------------------------------------------------------------
    def lock_waited(self, profile: str, seconds: float) -> None:
        self.lock_wait.labels(self.host, profile).observe(seconds)

    def acted(self, mode: str, result: Outcome) -> None:
        if result.dry_run:
            return
        labels = (result.host, result.profile)
        with self._lock:
            self._refresh(labels, result)
            self.starts.labels(*labels).inc(len(result.started))
            self.stops.labels(*labels).inc(len(result.stopped))
            if result.action == "start_failed":
                self.failed_starts.labels(*labels).inc()
            elif result.action == "error":
                self.errors.labels(*labels).inc()
            if mode == "stop_all":
                self.pauses.labels(*labels).inc()
                self.paused.labels(*labels).set(1)
            elif mode == "ensure":
                self.paused.labels(*labels).set(0)
            elif mode in ("sweep", "heal", "replace") and result.action != "error":
                # these answer "paused" for a paused profile: anything else means it is not
                self.paused.labels(*labels).set(1 if result.action == "paused" else 0)

    def exited(self, profile: str) -> None:
        self.exits.labels(self.host, profile).inc()

    def orphaned(self, count: int) -> None:
        self.orphans.labels(self.host).set(count)

    def collected(self, removed: int, stale_groups: int) -> None:
        self.garbage_removed.labels(self.host).inc(removed)
        self.stale_groups.labels(self.host).set(stale_groups)

    def coalesced(self, profile: str) -> None:
        self.coalesced_requests.labels(self.host, profile).inc()

    def probed(self, profile: str, ok: bool, seconds: float) -> None:
        self.probes.labels(self.host, profile, "ok" if ok else "failed").inc()
        self.probe_duration.labels(self.host, profile).observe(seconds)

    def unhealthy(self, profile: str) -> None:
        self.unhealthy_instances.labels(self.host, profile).inc()

    def swept(self, results: Sequence[Outcome], seconds: float, trigger: str) -> None:
        self.sweeps.labels(self.host, trigger).inc()
        self.sweep_duration.labels(self.host).observe(seconds)
        self.last_sweep.labels(self.host).set(time.time())
        for result in results:
            self.acted("sweep", result)

    def redis_reached(self, ok: bool) -> None:
        self.broker_up.labels(self.host).set(1 if ok else 0)

    def redis_failed_over(self, detail: str) -> None:
        self.redis_failovers.labels(self.host).inc()

    def redis_clock_jumped(self, seconds: float) -> None:
        self.redis_clock_jumps.labels(self.host).inc()

    def redis_clock_offset(self, seconds: float) -> None:
        self.redis_clock_offset_seconds.labels(self.host).set(seconds)

    def cluster_state(self, profile: str, slots: int, held: Mapping[int, tuple[int, float]],
                      paused: bool) -> None:
        labels = (self.host, profile)
        self.cluster_slots.labels(*labels).set(slots)
        self.leases_held.labels(*labels).set(len(held))
        self.cluster_paused.labels(*labels).set(1 if paused else 0)
        for slot in range(slots):
            token, left = held.get(slot, (0, 0.0))
            self.fencing_token.labels(*labels, str(slot)).set(token)
            self.lease_remaining.labels(*labels, str(slot)).set(max(0.0, left))

    def spec_mismatch(self, profile: str, mismatched: bool) -> None:
        self.cluster_spec_mismatch.labels(self.host, profile).set(1 if mismatched else 0)

    def lease_round(self, seconds: float, holdoff: float) -> None:
        self.lease_renew_seconds.labels(self.host).observe(seconds)
        self.claim_holdoff.labels(self.host).set(holdoff)

    def lease_renewed(self, profile: str, result: str) -> None:
        self.lease_renewals.labels(self.host, profile, result).inc()

    def lease_claimed(self, profile: str, result: str) -> None:
        self.lease_claims.labels(self.host, profile, result).inc()

    def self_fenced(self, profile: str, reason: str) -> None:
        self.self_fences.labels(self.host, profile, reason).inc()

    # helpers -----------------------------------------------------------------------------
    def _refresh(self, labels: tuple[str, str], result: Outcome) -> None:
        if result.action == "error":  # it knows nothing of instances, pause or backoff
            return
        self.instances.labels(*labels).set(len(result.running))
        in_backoff = result.action == "backoff" or (
            result.backoff is not None and result.backoff.next_attempt > result.time)
        self.backoff.labels(*labels).set(1 if in_backoff else 0)


def serve(config: Config) -> GuardMetrics:
    """Register the metrics and serve them on ``metrics_addr:metrics_port`` (a daemon thread)."""
    port = config.settings.metrics_port
    if port is None:
        raise ValueError("metrics_port is not set")
    metrics = GuardMetrics(config)
    ProcessCollector(registry=metrics.registry)
    PlatformCollector(registry=metrics.registry)
    start_http_server(port, addr=config.settings.metrics_addr, registry=metrics.registry)
    return metrics
