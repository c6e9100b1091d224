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
