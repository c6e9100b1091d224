"""Watch the Redis primary from the guard worker: a new primary, and a jump of its clock.

Every ``REDIS_WATCH_INTERVAL`` seconds one pipelined round trip reads the primary's
identity (``INFO server`` ``run_id``, ``INFO replication`` ``master_replid``) and its clock
(``TIME``). A Sentinel failover always changes both ids (the promoted replica gets a new
replication id); a restart of a single Redis changes the ``run_id``. Either way the
records written just before may be gone (docs/operations.md says which, and what rebuilds
them). The Redis clock is compared with this host's ``CLOCK_BOOTTIME``, which counts
suspend and is never stepped: when Redis time advanced more (or less) than local time by
over ``JUMP_FLOOR`` + ``JUMP_RATE`` of the elapsed time (plus the two round trips, which
bound where in them each reading was taken), it jumped. Key expiries follow the Redis
clock, so a jump expires locks early or late; a new primary with another clock counts too.

A reading from a replica is set aside, and said once in the log (writes are refused until
a primary is named): a Sentinel that lags behind may name a killed primary that came back
as a replica, and the client then reads from it until it rediscovers. Each change is
logged in one line, recorded in the action log and reported to the hooks (the metrics
count it). The same round trip tells the metrics whether Redis answers
(``workerguard_broker_up``). It never acts on instances: what a failover can lose is
rebuilt from the host (the host fence and the cgroups are local).

When the new primary is at another address (a Sentinel failover), every connection this
process still holds to the old one is shut down (``ops/stale_connections.py``): after a
partition they are black holes, and the Celery consumer would wait on one for a minute.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

from workerguard.ops import sentinel_order
from workerguard.ops.stale_connections import shut_down_connections_to
from workerguard.policy.hooks import GuardHooks
from workerguard.redact import redact_text
from workerguard.store.events import EventLog
from workerguard.timing import REDIS_WATCH_INTERVAL

log = logging.getLogger("workerguard.ops.primary_watch")

JUMP_FLOOR = 0.5
"""Seconds of disagreement between the Redis clock and the local one always tolerated."""
JUMP_RATE = 0.02
"""And this fraction of the elapsed time: twice the 1 % rate error a clock may have."""
WATCHER = "redis watch"
"""``requested_by`` of the watch's entries in the action log."""


def boottime() -> float:
    """Seconds on ``CLOCK_BOOTTIME`` (monotonic, counts suspend); ``monotonic`` elsewhere."""
    if sys.platform == "linux":
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.monotonic()


@dataclass(frozen=True)
class Sample:
    """One reading of the primary."""

    run_id: str | None
    replid: str | None
    redis_time: float
    """``TIME``, in seconds."""
    local: float
    """``boottime()`` halfway through the round trip."""
    wall: float
    """``time.time()`` halfway through the round trip."""
    spread: float
    """Half the round trip: how far from ``local`` the server may have read its clock."""
    role: str | None = None
    """``INFO replication`` ``role``: ``master``, or ``slave`` when a Sentinel that lags
    behind named a replica (a primary restarted as one) as the primary."""
    follows: str | None = None
    """``host:port`` of the primary a replica follows (``INFO replication``)."""

    @property
    def identity(self) -> tuple[str | None, str | None]:
        return self.run_id, self.replid


def clock_jump(before: Sample, after: Sample) -> float | None:
    """Seconds the Redis clock moved beyond local time between two samples, if more than
    the tolerance (positive: forward)."""
    elapsed = after.local - before.local
    jump = (after.redis_time - before.redis_time) - elapsed
    tolerance = JUMP_FLOOR + JUMP_RATE * max(elapsed, 0.0) + before.spread + after.spread
    return jump if abs(jump) > tolerance else None


def read(client: redis.Redis, with_identity: bool,
         clock: Callable[[], float] = boottime) -> tuple[Sample, bool]:
    """One round trip: the sample, and whether ``INFO`` may be read (an ACL may forbid it:
    ``NOPERM``; then only the clock is watched). Connection errors propagate."""
    pipe = client.pipeline(transaction=False)
    if with_identity:
        pipe.info("server")
        pipe.info("replication")
    pipe.time()
    sent_local, sent_wall = clock(), time.time()
    replies = pipe.execute(raise_on_error=False)
    done_local, done_wall = clock(), time.time()
    server_time = replies[-1]
    if isinstance(server_time, Exception):
        raise server_time
    run_id = replid = role = follows = None
    if with_identity and not any(isinstance(r, Exception) for r in replies[:2]):
        run_id, replid = replies[0].get("run_id"), replies[1].get("master_replid")
        role = replies[1].get("role")
        if "master_host" in replies[1]:
            follows = f"{replies[1]['master_host']}:{replies[1].get('master_port')}"
    elif with_identity:
        with_identity = False
        log.warning("redis watch: cannot read INFO (%s); a new primary is not detected, "
                    "clock jumps still are", redact_text(str(replies[0])))
    seconds, micros = server_time
    sample = Sample(run_id, replid, seconds + micros / 1e6, (sent_local + done_local) / 2,
                    (sent_wall + done_wall) / 2, (done_local - sent_local) / 2, role, follows)
    return sample, with_identity


class PrimaryWatch:
    """Compares each sample with the last one read; ``start`` runs it on a daemon thread."""

    def __init__(self, client: redis.Redis, host: str, hooks: Sequence[GuardHooks] = (),
                 events: EventLog | None = None, interval: float = REDIS_WATCH_INTERVAL,
                 clock: Callable[[], float] = boottime) -> None:
        self.client = client
        self.host = host
        self.hooks = hooks
        self.events = events
        self.interval = interval
        self.clock = clock
        self.last: Sample | None = None
        self._address: tuple[str, int] | None = None
        """The primary's address at the last sample (Sentinel clients only)."""
        self._identity = True
        self._reachable: bool | None = None
        self._on_replica = False
        """The last reading found a replica where the primary should be."""
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="workerguard-redis-watch",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while True:
            self.check()
            if self._stopped.wait(self.interval):
                return

    def check(self) -> Sample | None:
        """Read once and report what changed since the last sample read; never raises
        for Redis (an unreachable Redis is reported to the hooks, and the next sample is
        compared with the last one read)."""
        try:
            sample, self._identity = read(self.client, self._identity, self.clock)
        except redis.exceptions.RedisError as exc:
            self._reached(False, exc)
            return None
        self._reached(True)
        if sample.role not in (None, "master"):
            self._named_replica(sample)
            return None  # a replica, not the primary: nothing to compare (reads still work)
        if self._on_replica:
            self._on_replica = False
            log.info("redis watch: the Sentinels name a primary again")
        before, self.last = self.last, sample
        address, self._address = self._address, primary_address(self.client)
        sentinel_order.remember(getattr(self.client.connection_pool, "sentinel_manager", None))
        for hook in self.hooks:
            hook.redis_clock_offset(sample.redis_time - sample.wall)
        if before is None:
            return sample
        if sample.run_id is not None and before.run_id is not None \
                and sample.identity != before.identity:
            # The old primary's connections go first: the record below is written through
            # the guard's general client, and while that client still holds a connection
            # to a cut-off old primary, the old primary acknowledges the record and loses
            # it when it is demoted (one CI run: 3 failovers counted, 2 recorded, no error)
            if address is not None and address != self._address:
                self._abandon(address)
            self._failed_over(before, sample)
        jump = clock_jump(before, sample)
        if jump is not None:
            self._clock_jumped(jump, sample.local - before.local)
        return sample

    # reports ---------------------------------------------------------------------------
    def _named_replica(self, sample: Sample) -> None:
        """Say once that the node named as the primary is a replica: until the Sentinels
        name a primary, every write (of the guard, its consumer and every other client)
        is refused with ``READONLY``. Usually a Sentinel that lags behind for a moment;
        for longer, the Sentinels themselves (docs/operations.md, "A second partition
        right after a heal")."""
        if self._on_replica:
            return
        self._on_replica = True
        log.warning("redis watch: the primary the Sentinels name is a replica (of %s): "
                    "writes are refused until they name a primary", sample.follows or "?")

    def _failed_over(self, before: Sample, after: Sample) -> None:
        detail = (f"run_id {_short(before.run_id)} -> {_short(after.run_id)}, "
                  f"replid {_short(before.replid)} -> {_short(after.replid)}")
        log.warning("redis: a new primary (%s): records written just before may be lost; "
                    "instances are rebuilt from this host", detail)
        self._record("redis_failover", detail)  # first: whoever sees the count finds the record
        for hook in self.hooks:
            hook.redis_failed_over(detail)

    def _abandon(self, address: tuple[str, int]) -> None:
        """Shut down this process's connections to the old primary at ``address``."""
        closed = shut_down_connections_to(*address)
        log.warning("redis: shut down %d connection(s) to the old primary %s:%s; their "
                    "clients reconnect through the Sentinels", closed, *address)

    def _clock_jumped(self, jump: float, elapsed: float) -> None:
        detail = f"{jump:+.1f} s against this host's clock over {elapsed:.1f} s"
        log.warning("redis: the server's clock jumped %s: key expiries (locks) follow it",
                    detail)
        self._record("redis_clock_jump", detail)
        for hook in self.hooks:
            hook.redis_clock_jumped(jump)

    def _reached(self, ok: bool, exc: BaseException | None = None) -> None:
        if ok != self._reachable:
            if not ok:
                log.warning("redis watch: Redis does not answer (%s: %s)",
                            type(exc).__name__, redact_text(str(exc)))
            elif self._reachable is not None:
                log.info("redis watch: Redis answers again")
            self._reachable = ok
        for hook in self.hooks:
            hook.redis_reached(ok)

    def _record(self, action: str, detail: str) -> None:
        if self.events is None:
            return
        try:
            self.events.record("-", action, [], WATCHER, detail)
        except redis.exceptions.RedisError as exc:
            log.warning("redis watch: could not record %s: %s", action, redact_text(str(exc)))


def primary_address(client: redis.Redis) -> tuple[str, int] | None:
    """Where a Sentinel client's pool last found the primary; None for any other client."""
    address = getattr(client.connection_pool, "master_address", None)
    if isinstance(address, tuple) and len(address) == 2:
        return str(address[0]), int(address[1])
    return None


def _short(value: str | None) -> str:
    return (value or "?")[:8]
