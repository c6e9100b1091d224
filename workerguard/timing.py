"""The polling intervals of workerguard's own loops, and the bounds more than one module
waits by, named once, each with why.

A poll looks, sleeps and looks again because nothing can wake it: no event says "the
group is empty", "the lock is free", "the server answers". Where something can wake the
code (a pidfd, a pipe, a Redis BLPOP), it waits on that instead, and an interval here
only bounds how late a stop or a cancel is noticed. Values are seconds.

Elsewhere, beside what they configure: the bound of a wait that only one module has
(beside the wait), the durations a user sets (``config.schema``), the waits of the Redis
lock (``store.lock``), and intervals handed to libraries: redis-py's health check
(``ops.connect``), kombu's restore of unacked requests (``tasks.app``), the metrics'
broker probe (``ops.metrics``).
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
scan (~25 ms here), so the looks take at most a quarter of a core."""
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
