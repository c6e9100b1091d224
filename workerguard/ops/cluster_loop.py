"""The cluster loop: the guard worker's thread that renews, watches and claims slot leases.

Every renew period P, one round (FLEET design, "How it fits"):

1. renew every slot this guard holds, in one pipeline with ``WAIT``, ``TIME`` and ``INFO``
   (``store.leases``); a lost lease is fenced at once (its lease file says 0 and the
   leash kills), an expired one was fenced by its leash;
2. watch the Redis primary: a new identity (``run_id``, ``master_replid``) or a jump of its
   clock against ``CLOCK_BOOTTIME`` rewrites the fleet's epoch, and no slot is claimed for a
   hold-off of L + 1 s after it (a lease lost with an old primary has then run out); a new
   primary at another address (a Sentinel failover) also shuts down this process's
   connections to the old one (``ops/stale_connections.py``), as the Redis watch does on
   its next reading: the lease client, with its short timeout, sees the failover first,
   and the Celery consumer must be back before the heal of a slot won after the hold-off;
3. write this host's record (``store.host_records``): what it runs, holds and sees;
4. compare each profile's definition with the fleet's spec (``policy.spec_agreement``):
   on another one this host claims nothing (``spec_mismatch``); once every live eligible
   host reports this host's definition, move the spec to it (compare-and-set) and heal, so
   the holders replace the instances of the old definition;
5. claim vacant slots in placement order (``policy.slot_plan``), a claim at rank r after
   r claim staggers, one on a slot held elsewhere right after its lease runs out.

It never spawns or stops anything itself: after a win, a loss, a pause or a drain it asks
its own host queue for a ``workerguard.heal`` of the profile, which runs the converge
under the profile's lock and fence like any request (and shows in Flower). The leash is
the single actuator of a fence; the converge the single actuator of a start.

Its thread waits on nothing but its own client (no retries, timeouts of at most P): heals
are sent by a thread of their own (``ops/heal_sender.py``) and the action log is written
through the lease client, so a broker or a general client still talking to a cut-off
primary never holds up a renewal or a claim.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import redis

from workerguard.config.load import Config
from workerguard.config.schema import Profile
from workerguard.ops import sentinel_order
from workerguard.ops.heal_sender import HealSender, send_heal
from workerguard.ops.primary_watch import boottime, primary_address
from workerguard.ops.stale_connections import shut_down_connections_to
from workerguard.policy.hooks import GuardHooks
from workerguard.policy.placement import HostState
from workerguard.policy.slot_plan import make_slot_plan
from workerguard.policy.spec_agreement import Standing, agree, counted_hosts
from workerguard.redact import redact_text
from workerguard.store import keys
from workerguard.store.cluster_spec import Spec, move_spec, profile_spec, read_spec
from workerguard.store.events import EventLog
from workerguard.store.host_records import HostIdConflict, HostRecord, HostRecords, machine_id
from workerguard.store.lease import observe_epoch
from workerguard.store.leases import Leases, ProfileTiming, Round
from workerguard.timing import HOLDOFF_EXTRA
from workerguard.workers.identity import boot_id
from workerguard.workers.leashed import lease_dir

log = logging.getLogger("workerguard.ops.cluster_loop")

JUMP_FLOOR = 0.5
"""Seconds of disagreement between the Redis clock and this host's always tolerated."""


@dataclass
class _Clock:
    """The last (Redis time, local time) pair, for jumps and the claim window."""

    redis: float = 0.0
    local: float = 0.0
    spread: float = 0.0

    def predict_ms(self, local: float) -> float:
        return (self.redis + (local - self.local)) * 1000


@dataclass
class _State:
    identity: str = ""
    epoch_ok: bool = False
    clock: _Clock | None = None
    since_ms: int = 0
    """Redis time of the last change of primary or clock jump the fleet agreed on."""
    address: tuple[str, int] | None = None
    """Where the Sentinels put the primary at the last round read (None: no Sentinel)."""
    paused: dict[str, bool] = field(default_factory=dict)
    """Each profile's pause as the last round saw it (a resume heals what is still held)."""
    due: dict[tuple[str, int], float] = field(default_factory=dict)
    """Claims scheduled: (profile, slot) -> boottime when to send."""
    draining: bool = False
    """This host's drain mark as the last round read it (its record says so)."""
    standing: dict[str, Standing] = field(default_factory=dict)
    """Each profile's definition here against the fleet's spec, as the last round saw it."""
    spec_seen: dict[str, str] = field(default_factory=dict)
    """Each profile's spec record as the last round read it ("": none yet; a change heals)."""


class ClusterLoop:
    """One thread per guard worker with cluster profiles; ``start``/``stop``."""

    def __init__(self, config: Config, client: redis.Redis, heal: Callable[[str, str], None],
                 events: EventLog | None = None, version: str = "",
                 clock: Callable[[], float] = boottime,
                 hooks: Sequence[GuardHooks] = ()) -> None:
        self.config = config
        self.hooks = hooks
        """Told of every round, renewal, claim and fence (``GuardMetrics`` is one)."""
        self.cluster = config.cluster
        self.host = config.settings.host_id
        self.client = client
        self.heal = heal
        self.events = events
        self.version = version
        self.clock = clock
        self.profiles: list[Profile] = [p for p in config.profiles.values() if p.is_cluster]
        self.leases = Leases(client, self.host, lease_dir(config.settings.runtime_dir, self.host),
                             replicas=self.cluster.replicas, wait_timeout=self.cluster.wait_timeout,
                             clock=clock)
        self.specs: dict[str, Spec] = {}
        """This config's definition of each cluster profile, as the fleet's spec records it."""
        for profile in self.profiles:
            timing = self._timing(profile)
            self.leases.register(profile.name, timing)
            self.specs[profile.name] = profile_spec(profile, timing.lease_seconds)
        self.records = HostRecords(client)
        self.refused: str | None = None
        """Why this guard claims nothing (a host id in use elsewhere), else None."""
        self._state = _State()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="workerguard-cluster", daemon=True)
        self._sender: HealSender | None = None
        """Sends the heals while the thread runs (a round run directly sends inline)."""

    def _timing(self, profile: Profile) -> ProfileTiming:
        return ProfileTiming(slots=profile.max_workers,
                             lease_seconds=profile.lease_seconds or self.cluster.lease_seconds,
                             renew_deadline=profile.renew_deadline or self.cluster.renew_deadline,
                             fenced_at_deadline=profile.guarantee == "at_most")

    # thread ----------------------------------------------------------------------------
    def start(self) -> None:
        self._sender = HealSender(self.heal)
        self._sender.start()
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._sender is not None:
            self._sender.stop()

    def _run(self) -> None:
        try:
            adopted = self.leases.adopt([p.name for p in self.profiles])
        except redis.exceptions.RedisError as exc:
            log.warning("cluster: could not read held slots at start: %s", redact_text(str(exc)))
            adopted = []
        for held in adopted:
            log.info("cluster: %s slot %d is still this host's (token %d)", held.profile,
                     held.slot, held.token)
        while not self._stopped.is_set():
            began = self.clock()
            try:
                self.round()
            except Exception:  # the loop must outlive any one round
                log.exception("cluster: a round failed")
            wake = began + self.cluster.renew_period
            due = [t for t in self._state.due.values() if t < wake]
            self._stopped.wait(max(0.0, min([wake, *due]) - self.clock()))

    # one round -------------------------------------------------------------------------
    def round(self) -> Round:
        renewed = self.leases.renew()
        self._report(renewed)
        holdoff_ms = self._watch_primary(renewed)
        self._publish()
        if renewed.error is None and self.refused is None:
            self._plan_claims(holdoff_ms)
        self._send_due_claims(holdoff_ms)
        self._tell_state(renewed, holdoff_ms)
        return renewed

    def _tell(self, event: str, *args: object) -> None:
        """Call ``event`` (a ``GuardHooks`` method) of every hook with ``args``."""
        for hook in self.hooks:
            try:
                getattr(hook, event)(*args)
            except Exception:  # a hook must never stop the loop
                log.exception("cluster: a hook failed")

    def _tell_state(self, renewed: Round, holdoff_ms: int | None) -> None:
        if renewed.redis_time is not None:
            holdoff = (holdoff_ms or 0) / 1000
            self._tell("lease_round", renewed.took, holdoff)
        for (name, _slot), outcome in renewed.outcomes.items():
            self._tell("lease_renewed", name, outcome)
        now = self.clock()
        for profile in self.profiles:
            held = {slot: (h.token, h.deadline - now)
                    for slot, h in self.leases.held(profile.name).items()}
            paused = self._state.paused.get(profile.name, False)
            self._tell("cluster_state", profile.name, profile.max_workers, held, paused)

    def _report(self, renewed: Round) -> None:
        touched: set[str] = set()
        for (profile, slot), outcome in renewed.outcomes.items():
            if outcome == "lost":
                log.warning("cluster: %s slot %d: lease lost (another holder or none): fenced now",
                            profile, slot)
                self._record("lease_lost", profile, f"slot {slot}")
                self._tell("self_fenced", profile, "lost")
                touched.add(profile)
            elif outcome == "released":
                log.info("cluster: %s slot %d: given back by this host's converge", profile, slot)
        for held in renewed.expired:
            log.warning("cluster: %s slot %d: no renewal acknowledged for the renew deadline: "
                        "the leash fenced it", held.profile, held.slot)
            self._record("self_fenced", held.profile, f"slot {held.slot} token {held.token}")
            self._tell("self_fenced", held.profile, "deadline")
            touched.add(held.profile)
        if renewed.error is not None and renewed.outcomes:
            log.warning("cluster: renewal failed (%s); instances are fenced at their deadline "
                        "unless a renewal gets through", redact_text(renewed.error))
        for profile in touched:
            self._heal(profile, "lease lost")

    def _watch_primary(self, renewed: Round) -> int | None:
        """The hold-off left in ms (None: claims are allowed), after comparing this round's
        primary and clock with the last."""
        state = self._state
        if renewed.redis_time is None or renewed.role not in (None, "master"):
            return None if state.epoch_ok else 1
        local = renewed.sent + renewed.took / 2
        reason = ""
        if state.clock is not None:
            elapsed = local - state.clock.local
            jump = (renewed.redis_time - state.clock.redis) - elapsed
            tolerance = (JUMP_FLOOR + 2 * self.cluster.clock_drift * max(elapsed, 0.0)
                         + state.clock.spread + renewed.took / 2)
            if abs(jump) > tolerance:
                reason = "clock"
                log.warning("cluster: the Redis clock jumped %+.1f s: no claim for the hold-off",
                            jump)
        state.clock = _Clock(renewed.redis_time, local, renewed.took / 2)
        # the primary this client's Sentinels named says it is one: ask them first
        sentinel_order.remember(getattr(self.client.connection_pool, "sentinel_manager", None))
        identity = f"{renewed.run_id or ''}:{renewed.replid or ''}"
        address, state.address = state.address, primary_address(self.client)
        if state.identity and identity != state.identity and address is not None \
                and state.address is not None and address != state.address:
            closed = shut_down_connections_to(*address)
            log.warning("cluster: a new primary at %s:%s: shut down %d connection(s) to the old "
                        "primary %s:%s; their clients reconnect through the Sentinels",
                        *state.address, closed, *address)
        try:
            if identity != state.identity or reason or not state.epoch_ok:
                epoch = observe_epoch(self.client, identity, reason)
                if epoch.changed and state.identity:
                    self._record("holdoff", "", reason or "primary changed")
                state.identity, state.epoch_ok, state.since_ms = identity, True, epoch.since_ms
        except redis.exceptions.RedisError as exc:
            log.warning("cluster: could not read the epoch: %s", redact_text(str(exc)))
            state.epoch_ok = False
            return 1
        holdoff = (self.cluster.lease_seconds + HOLDOFF_EXTRA) * 1000
        left = holdoff - (renewed.redis_time * 1000 - state.since_ms)
        return int(left) if left > 0 else None

    def _publish(self) -> None:
        held: dict[str, list[int]] = {}
        for h in self.leases.all_held():
            held.setdefault(h.profile, []).append(h.slot)
        record = HostRecord(
            host=self.host, machine=machine_id(), boot=boot_id(), version=self.version,
            fingerprints={name: spec.fp for name, spec in self.specs.items()}, slots=held,
            draining=self._state.draining, primary=self._state.identity[:24])
        try:
            self.records.publish(record, 3 * self.cluster.renew_period)
            if self.refused is not None:
                log.info("cluster: this host's id is its own again: claims resume")
                self.refused = None
        except HostIdConflict as exc:
            if self.refused is None:
                log.error("cluster: %s", exc)
            self.refused = str(exc)
        except redis.exceptions.RedisError as exc:
            log.warning("cluster: could not write this host's record: %s", redact_text(str(exc)))

    def _plan_claims(self, holdoff_ms: int | None) -> None:
        live = self.records.live()
        draining = self.records.draining()
        self._state.draining = self.host in draining
        now = self.clock()
        for profile in self.profiles:
            store = self.leases.store(profile.name)
            holders = store.holders()
            paused = bool(self.client.exists(keys.cluster_paused(profile.name)))
            mine = self.leases.held(profile.name)
            if (paused or self.host in draining) and mine:
                self._heal(profile.name, "paused" if paused else "draining")
            elif self._state.paused.get(profile.name) and mine:  # resumed while still held
                self._heal(profile.name, "resumed")
            self._state.paused[profile.name] = paused
            fp = self.specs[profile.name].fp
            agreed = self._agree(profile, live, draining)
            hosts = [HostState(name, draining=name in draining, cluster_slots=record.held)
                     for name, record in live.items() if record.fingerprints.get(profile.name) == fp]
            plan = make_slot_plan(
                profile.name, self.host, slots=profile.max_workers, holders=holders, held=mine,
                instances=[], hosts=hosts, now=now, renew_period=self.cluster.renew_period,
                claim_stagger=self.cluster.claim_stagger, patterns=profile.hosts,
                max_per_host=profile.max_per_host, draining=self.host in draining,
                paused=paused, may_claim=holdoff_ms is None and agreed)
            for slot in plan.lose:
                self.leases.lose(profile.name, slot)
                self._record("lease_lost", profile.name, f"slot {slot}")
                self._tell("self_fenced", profile.name, "lost")
                self._heal(profile.name, "lease lost")
            wanted = {(profile.name, c.slot): now + c.delay for c in plan.claim}
            for key in [k for k in self._state.due if k[0] == profile.name and k not in wanted]:
                del self._state.due[key]
            for key, when in wanted.items():
                self._state.due.setdefault(key, when)

    def _agree(self, profile: Profile, live: dict[str, HostRecord], draining: set[str]) -> bool:
        """Compare this host's definition of ``profile`` with the fleet's spec; move the spec
        when every live eligible host reports this one. True: this host may claim."""
        own = self.specs[profile.name]
        spec, raw = read_spec(self.client, profile.name)
        agreement = agree(spec, own, counted_hosts(profile.name, live, draining, profile.hosts))
        if agreement.move and spec is not None:
            moved = move_spec(self.client, profile.name, raw, own,
                              max(spec.max_workers, own.max_workers))
            if moved == "moved":
                log.warning("cluster: %s: every live host runs the new definition: the fleet's "
                            "spec moves to it (max_workers %d -> %d)", profile.name,
                            spec.max_workers, own.max_workers)
                self._record("spec_changed", profile.name,
                             f"{spec.fp} -> {own.fp}, max_workers {spec.max_workers} -> "
                             f"{own.max_workers}")
            elif moved == "held":
                log.info("cluster: %s: the spec moves once the slots beyond max_workers %d are "
                         "vacant", profile.name, own.max_workers)
            spec, raw = read_spec(self.client, profile.name)
            agreement = agree(spec, own, counted_hosts(profile.name, live, draining,
                                                       profile.hosts))
        before = self._state.standing.get(profile.name)
        self._state.standing[profile.name] = agreement.standing
        if agreement.standing == "mismatch" and before != "mismatch":
            log.warning("cluster: %s: this host's definition differs from the fleet's spec: it "
                        "claims nothing and keeps what it holds until every live host runs "
                        "one definition", profile.name)
            self._record("spec_mismatch", profile.name,
                         f"this host {own.fp} (max_workers {own.max_workers}), fleet "
                         f"{spec.fp if spec else '-'}")
        elif before == "mismatch" and agreement.standing != "mismatch":
            log.info("cluster: %s: this host's definition is the fleet's again", profile.name)
        self._tell("spec_mismatch", profile.name, agreement.standing == "mismatch")
        seen = self._state.spec_seen.get(profile.name)
        self._state.spec_seen[profile.name] = raw
        # Replace what runs an older definition: after the spec moved (seen: the one before),
        # or at this loop's first look if it holds slots (a restart); not when the spec first
        # appears ("" before: this host's own claim wrote it, nothing older runs).
        if agreement.standing == "match" and seen != raw \
                and (seen or (seen is None and self.leases.held(profile.name))):
            self._heal(profile.name, "spec changed")
        return agreement.standing != "mismatch"

    def _send_due_claims(self, holdoff_ms: int | None) -> None:
        now = self.clock()
        for (name, slot), when in sorted(self._state.due.items(), key=lambda kv: kv[1]):
            if when > now or holdoff_ms is not None or self.refused is not None:
                continue
            del self._state.due[(name, slot)]
            self._claim(self._profile(name), slot)

    def _claim(self, profile: Profile, slot: int) -> None:
        state = self._state
        window = None
        if state.clock is not None:
            predicted = state.clock.predict_ms(self.clock())
            slack = (JUMP_FLOOR * 1000 + 2 * self.cluster.clock_drift
                     * (self.clock() - state.clock.local) * 1000 + state.clock.spread * 1000)
            window = (int(predicted - slack), int(predicted + slack + 1000))
        holdoff_ms = int((self.cluster.lease_seconds + HOLDOFF_EXTRA) * 1000)
        try:
            spec = self.specs[profile.name]
            grant = self.leases.claim(profile.name, spec.fp, uuid.uuid4().hex,
                                      max_per_host=profile.max_per_host, holdoff_ms=holdoff_ms,
                                      identity=state.identity, window_ms=window, slot=slot,
                                      spec=spec.encode())
        except redis.exceptions.RedisError as exc:
            log.warning("cluster: %s slot %d: claim failed: %s", profile.name, slot,
                        redact_text(str(exc)))
            self._tell("lease_claimed", profile.name, "error")
            return
        result = "not_replicated" if grant.reason == "not_replicated" else grant.result
        self._tell("lease_claimed", profile.name, result)
        if grant.result == "won":
            log.info("cluster: %s slot %d: won (token %d)", profile.name, grant.slot, grant.token)
            self._heal(profile.name, f"slot {grant.slot} won")
            self._record("lease_acquired", profile.name, f"slot {grant.slot} token {grant.token}")
        elif grant.reason in ("spec_mismatch", "clock", "not_replicated"):
            log.warning("cluster: %s slot %d: claim refused: %s", profile.name, slot, grant.reason)

    def _profile(self, name: str) -> Profile:
        return next(p for p in self.profiles if p.name == name)

    def _heal(self, profile: str, why: str) -> None:
        if self._sender is not None:
            self._sender.request(profile, why)
            return
        send_heal(self.heal, profile, why)

    def _record(self, action: str, profile: str, detail: str) -> None:
        if self.events is None:
            return
        with contextlib.suppress(redis.exceptions.RedisError):  # the log line said it
            self.events.record(profile, action, (), requested_by="cluster loop", detail=detail)


def heal_through(send: Callable[..., object], queue: str) -> Callable[[str, str], None]:
    """A ``heal`` for the loop: a ``workerguard.heal`` on this host's queue."""
    def heal(profile: str, why: str) -> None:
        send("workerguard.heal", args=[profile], kwargs={"requested_by": f"cluster loop: {why}"},
             queue=queue, expires=60.0)
    return heal
