"""The polling intervals of workerguard's own loops, and the bounds more than one module
waits by, named once, each with why.

A poll looks, sleeps and looks again because nothing can wake it: no event says "the
group is empty", "the lock is free", "the server answers". Where something can wake the
code (a pidfd, a pipe, a Redis BLPOP), it waits on that instead, and an interval here
only bounds how late a stop or a cancel is noticed. Values are seconds.

Elsewhere, beside what they configure: the bound of a wait that only one module has
(beside the wait), the durations a user sets (``config.schema``), the waits of the Redis
lock (``store.lock``), and intervals handed to libraries: redis-py's health check
(``ops.connect``), kombu's restore of unacked requests (``tasks.app``).
"""

from __future__ import annotations

# lock files (workers.lockfile) ---------------------------------------------------------
LOCK_POLL_FIRST = 0.002
"""First pause between two tries of a busy lock file: a host fence is mostly held for one
converge's act, a few ms, so the first retries come quickly."""
LOCK_POLL_MAX = 0.05
"""The pause doubles up to this: a lock held for seconds (a start window) costs a waiter
20 tries a second, and is taken at most 50 ms after it is freed."""

# starting, stopping and watching processes (workers) -----------------------------------
START_WINDOW_POLL = 0.02
"""How often a start window asks whether its new instances still live (one status read per
process): an instance that dies at once ends the wait within 20 ms."""
MARK_POLL = 0.1
"""Between two looks for a daemon's mark in its start window: each look is a full process
scan (tens of ms on a busy host), so the looks take a fraction of a core."""
STOP_POLL = 0.02
"""How often a stop asks whether the signalled processes are gone (one status read per
process): a worker that exits at once frees its slot within 20 ms."""
CGROUP_KILL_POLL = 0.005
"""How often ``cgroups.kill`` reads ``cgroup.events`` until the group is empty: the read
is cheap, and SIGKILLed members leave within milliseconds."""
CGROUP_PRIME_STEP = 0.005
"""One cgroup move per step keeps the kernel's lock for moves warm: it cools after one or
two grace periods without a move (see ``cgroups.prime``)."""
EXIT_WATCH_WAKE = 1.0
"""The exit watcher's epoll timeout: an exit wakes it at once; this only bounds how late it
notices that it was closed."""
EXIT_WATCH_FALLBACK = 0.5
"""Without pidfds (not Linux) the exit watcher reads every watched process's status this
often: an exit is noticed within half a second, at a small cost for many processes."""
EXIT_WATCH_ERROR_PAUSE = 0.1
"""After an unexpected error in the exit watcher (logged), it pauses this long before it
goes on, so an error that repeats cannot spin a core."""

KILL_WAIT = 5.0
"""How long SIGKILLed processes may take to be gone (a stop's last step, ``cgroups.kill``):
the kernel ends them at once, but one in uninterruptible sleep (a hung disk, NFS) leaves
only when that ends; what is still there after this is reported, not waited for."""

SPAWN_RECORD_WAIT = 10.0
"""A spawn outside a converge (which holds the profile's fence already) waits this long
for the fence to write its new instance's record; past it, the record is not written
(logged) and the instance is found through its cgroup or its mark."""

# garbage (workers.garbage) -------------------------------------------------------------
LEFTOVER_AGE = 600.0
"""A record's temp file or a cgroup probe directory older than this is a leftover of a
process that died mid-write or mid-probe (each takes milliseconds): sweeps remove it."""
PRUNE_OLDER_THAN = 86_400.0
"""``workerguard prune`` removes the empty groups of host ids no guard has served for this
long (``--older-than``): a day, so a guard that is only down for a restart, a deploy or a
night keeps its directories."""

# probes ----------------------------------------------------------------------------------
PROBE_SLICE = 0.25
"""A command probe's wait for output and exit, in slices when no pidfd tells of the exit
or when the probe may be cancelled: a cancel (its instance is stopped) ends it within
250 ms."""

# the embedded Redis and `workerguard up` (ops) -------------------------------------------
EMBEDDED_START_POLL = 0.01
"""How often a command PINGs the embedded server it waits for: a PING on a unix socket is
cheap, and the command goes on within 10 ms of the server's start."""
SUPERVISOR_LOCK_POLL = 0.005
"""How often a starter looks whether the supervisor it just launched holds its lock: the
supervisor takes it as soon as its interpreter has started."""
EMBEDDED_IDLE_POLL = 0.1
"""How often the embedded server's supervisor tries ``users.lock`` to learn whether a
command still uses the server: the linger (seconds) is measured at this grain."""
UP_POLL = 0.2
"""How often ``workerguard up`` looks whether its worker or beat ended or a stop was asked:
a Ctrl-C is answered within 200 ms."""

# sweeps (store.sweep_claim, tasks.sweep_timer) ------------------------------------------
SWEEP_SPACING = 0.9
"""A sweep of a host is claimed only if the last one began at least this many intervals
ago: beats at other phases, and the timer, then sweep a host about once per interval.
Below 1 so that a beat running a little early (its schedule is not exact) still sweeps."""
SWEEP_JITTER = (0.9, 1.1)
"""The guard's own timer sweeps its host ``sweep_interval`` times a uniform draw from this
range after the host's last sweep: guards started together do not sweep in lockstep, and
with a live beat most timer turns find the host just swept."""
SWEEP_KEEP_INTERVALS = 3
"""The last sweep's time is kept this many intervals in Redis, then forgotten (a host that
no guard serves any more leaves no key behind)."""
SWEEP_TIMER_RETRY = 5.0
"""When Redis cannot be asked how long ago the host was swept, the timer asks again after
this (or after one interval, if shorter)."""

# Redis connections (ops.connect; the lease client's bound, store.lease) ----------------
SOCKET_TIMEOUT = 5.0
"""Seconds any read or write on a Redis connection may take. Every blocking command of
ours waits less (the lock's BLPOP slices and ``events --follow``'s XREAD: 1 s; the guard
worker's BRPOP: ``GUARD_BRPOP_TIMEOUT``), so only a dead or black-holed connection ever
reaches it. The lease client waits at most the renew period, if shorter
(``store.lease.lease_socket_timeout``)."""

# the Redis watch (ops.primary_watch) ----------------------------------------------------
REDIS_WATCH_INTERVAL = 2.0
"""How often the guard worker reads the Redis primary's identity and clock (one pipelined
round trip, 90 commands a minute): a failover or a clock jump is logged within a few
seconds, and ``workerguard_broker_up`` follows Redis at this grain."""
REDIS_WATCH_TIMEOUT = 2.0
"""Seconds one reading of the Redis watch may take (``ops.connect.watch_client``: no
retry). A reading is INFO and TIME, well under a millisecond on any Redis that serves;
through the guard's general client (5 s, retries) a primary partitioned without a RST was
seen as gone only when that timeout ran out, 7-10 s after the cut."""

# the guard worker's broker connection (tasks.reconnect) ---------------------------------
GUARD_BRPOP_TIMEOUT = 4
"""Seconds the guard worker's BRPOP waits in Redis before it answers "nothing" and is sent
again (kombu's default: 1). A request is delivered the moment it is pushed whatever this
is; the timeout only sets how often an idle guard's event loop wakes to re-send it (once
a second was a sixth of an idle guard's CPU and 60 of its Redis commands a minute). It
also bounds how soon a black-holed BRPOP connection is dropped: kombu drops one whose
reply is overdue by this plus ``HEALTH_CHECK_INTERVAL``, checked every
``HEALTH_CHECK_INTERVAL`` (at most 14 s, against the pub/sub connection's two missed
checks, 10-15 s). Below ``SOCKET_TIMEOUT``, as every blocking command of ours."""
BROKER_RECONNECT_PAUSES = (1.0, 1.0, 5.0)
"""Pauses between the guard worker's rounds of broker reconnects: the first, the step it
grows by, the most (kombu's default: 2, 2, 30). A broker back (a Sentinel failover done)
is reached within 5 s of it, not 30."""

# the result store on Sentinel (tasks.caller_errors) -------------------------------------
RESULT_STORE_PATIENCE = 30.0
"""How long the guard keeps trying to store a request's result across a Sentinel failover
(Celery's ``retry_policy`` timeout): the Sentinels agree in about ``down-after`` + 1 s,
and the new primary may refuse writes for seconds more (NOREPLICAS, up to 13 s seen in
tests/test_sentinel.py under load). A result not stored leaves the request STARTED."""
RESULT_STORE_RETRIES = 12
"""Connection attempts of one result-store command, 0.1 s apart doubling up to 1 s
(about 9.5 s): a connection to the dead primary, until the Sentinels name the new one."""

# cluster profiles (ops.cluster_loop, policy.cluster_view) ------------------------------
HOLDOFF_EXTRA = 1.0
"""The claim hold-off after a Redis primary change or a jump of its clock is L plus this
(H = L + 1 s): a lease granted by the old primary, or under the old clock, has run out."""
