"""How long a request may be held unacknowledged before kombu hands it out again.

kombu's Redis transport redelivers a message that a worker took but did not acknowledge
within ``visibility_timeout`` (the worker died, or it is still working). Two rules keep a
live request from running twice:

* the timeout is longer than the longest request the config allows: the lock wait
  (``lock_timeout``, which also bounds the fence wait), a stop, a start window and the
  readiness wait of the slowest profile, one ``lock_expire`` and a margin;
* no countdown is longer than ``longest_countdown``: a task with a countdown (an ETA) is
  held unacknowledged by the worker until it is due, so one due after the timeout is
  redelivered and runs twice (Celery's documented Redis caveat). A longer delay is
  split into steps, each scheduling the next.
"""

from __future__ import annotations

import math

from workerguard.config.load import Config
from workerguard.config.schema import Profile

RESTORE_INTERVAL = 5
"""Seconds between the guard's scans for requests whose guard died (kombu's restore).

Each scan costs five Redis commands (take the mutex, read the unacknowledged index,
release the mutex), and every guard of the fleet scans the same index: at 2 s they were
150 of an idle guard's ~460 commands a minute (docs/benchmarks.md, ``redis_idle``). 5 s
makes them 60 and adds 3 s to ``redelivered_within`` (73 s to 76 s with the defaults),
against a ``visibility_timeout`` of a minute."""
UNACKED_MUTEX_EXPIRE = 10
"""Seconds a scan for unacknowledged requests may hold kombu's ``unacked_mutex``.

Each scan (every ``RESTORE_INTERVAL``, in every guard) takes the mutex, redelivers the
requests taken more than ``visibility_timeout`` ago and releases it: milliseconds. A
guard SIGKILLed mid-scan leaves the mutex behind, and no guard redelivers anything until
it expires: kombu's default, 300 s, stopped every redelivery for up to five minutes
(reproduced: a request redelivered in 49 s normally was still ``STARTED`` at 74 s with the
mutex left behind). 10 s covers a scan that meets a slow Redis (two socket timeouts).
A mutex that expires under a scan still running costs nothing: kombu redelivers each
request in a ``WATCH`` transaction on the unacked hash, so two scans cannot redeliver one
request twice; the mutex only spares the work. A request whose guard died is therefore
redelivered within ``visibility_timeout + UNACKED_MUTEX_EXPIRE + RESTORE_INTERVAL``
(``redelivered_within``)."""
VISIBILITY_MARGIN = 10.0
"""Seconds of slack beyond the longest request: scheduling, a slow Redis, a GC pause."""


def longest_request(profile: Profile) -> float:
    """The longest a converge of ``profile`` may act once it holds the lock: stop (the
    victims at once), then start, then wait for readiness."""
    ready = profile.probe.start_timeout + profile.probe.timeout if profile.probe is not None else 0.0
    return profile.stop_timeout + profile.start_seconds + ready


def visibility_timeout(config: Config) -> int:
    """Seconds after which a request taken by a guard that never acked it is redelivered."""
    s = config.settings
    act = max((longest_request(p) for p in config.profiles.values()), default=0.0)
    return math.ceil(s.lock_timeout + act + s.lock_expire + VISIBILITY_MARGIN)


def longest_countdown(config: Config) -> float:
    """The longest countdown a task may be sent with: half the visibility timeout, so a
    countdown task is due well before it could be redelivered."""
    return visibility_timeout(config) / 2


def redelivered_within(config: Config) -> int:
    """Seconds after which a request taken by a guard that died is handed out again, at
    the latest (a guard killed in the middle of a scan included)."""
    return visibility_timeout(config) + UNACKED_MUTEX_EXPIRE + RESTORE_INTERVAL
