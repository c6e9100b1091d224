"""Exit events to requests: the guard worker restarts what exited, visibly.

The guard worker watches every instance it sees (``Guard(watch_exits=True)``). An exit it
did not cause becomes a ``workerguard.heal`` request on its own host queue (the hook
``HealRequests.heal_requested``), so the
restart runs through the same lock, fence and plan as any request — a paused profile
stays stopped, backoff applies, two guards never start two — and shows in Flower like
any other request. A heal answered with crash-loop backoff schedules one more heal for
when the backoff ends (one per profile at a time), so a crashed worker comes back
without waiting for the next sweep.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import Celery, Task

from workerguard.policy.guard import Guard
from workerguard.policy.hooks import GuardHooks
from workerguard.policy.outcome import Answer, Outcome
from workerguard.probes.liveness import Unhealthy
from workerguard.store import keys
from workerguard.tasks import validate
from workerguard.tasks.routing import host_queue
from workerguard.tasks.visibility import longest_countdown
from workerguard.timing import PRUNE_OLDER_THAN

log = logging.getLogger("workerguard.tasks.heal_requests")
HEAL_TASK = "workerguard.heal"
REPLACE_TASK = "workerguard.replace"
HEAL_EXPIRES = 60.0


class HealRequests(GuardHooks):
    """The guard worker's hook: a heal or replacement the guard asks for becomes a request
    on this host's queue."""

    def __init__(self, app: Celery, host_id: str) -> None:
        self.app = app
        self.queue = host_queue(host_id)

    def heal_requested(self, profile: str, reason: str) -> None:
        self.app.send_task(HEAL_TASK, args=[profile],
                           kwargs={"requested_by": f"exit watcher: {reason}"},
                           queue=self.queue, expires=HEAL_EXPIRES)

    def replace_requested(self, event: Unhealthy) -> None:
        self.app.send_task(REPLACE_TASK, args=[event.profile, event.instance_id],
                           kwargs={"reason": event.output[:300],
                                   "requested_by": f"probe: pid {event.pid} unhealthy"},
                           queue=self.queue, expires=HEAL_EXPIRES)


def schedule_retry(app: Celery, guard: Guard, outcome: Outcome) -> float | None:
    """After a heal that could not start (backoff, failed start): heal again when the
    backoff allows, once per profile. Returns the delay, or None if nothing was scheduled."""
    held = outcome.action == "replaced" and not outcome.started and outcome.backoff is not None
    if outcome.action not in ("backoff", "start_failed") and not held:
        return None
    profile = outcome.profile
    spec = guard.config.profile(profile)
    next_attempt = outcome.backoff.next_attempt if outcome.backoff is not None else 0.0
    wanted = min(max(0.0, next_attempt - time.time()), spec.backoff_max)
    # A delay longer than a countdown may be is walked in steps: each step's heal meets
    # the backoff still holding and schedules the next (see tasks/visibility.py).
    delay = max(min(wanted, longest_countdown(guard.config)), 0.05)
    stepping = delay < wanted
    key = keys.retry(guard.host, profile)
    # One retry per profile at a time; a step's key ends just before its heal is due, so
    # that heal may schedule the next step.
    hold = int(delay * 1000) - 50 if stepping else int(delay * 1000) + 500
    if not guard.client.set(key, "1", nx=True, px=hold):
        return None
    app.send_task(HEAL_TASK, args=[profile], kwargs={"requested_by": "backoff retry"},
                  queue=host_queue(guard.host), countdown=delay, expires=delay + HEAL_EXPIRES)
    return delay


def register_healing(app: Celery, guard_for: Callable[[Celery], Guard],
                     who: Callable[[Task, str | None], str],
                     checked: Callable[[Answer], dict[str, Any]],
                     throws: tuple[type[Exception], ...], retry: dict[str, Any]) -> None:
    """The tasks ``workerguard.heal`` and ``workerguard.prune`` (same checks as the others)."""

    @app.task(name=HEAL_TASK, bind=True, throws=throws, **retry)
    def heal(self: Task, profile: Any, requested_by: Any = None) -> dict[str, Any]:
        guard = guard_for(app)
        name = validate.profile_name(guard.config, profile)
        result = guard.heal(name, requested_by=who(self, validate.requester(requested_by)))
        schedule_retry(app, guard, result)
        return checked(result)

    @app.task(name=REPLACE_TASK, bind=True, throws=throws, **retry)
    def replace(self: Task, profile: Any, instance: Any, reason: Any = "",
                requested_by: Any = None) -> dict[str, Any]:
        guard = guard_for(app)
        name = validate.profile_name(guard.config, profile)
        result = guard.replace(name, validate.instance_id(instance),
                               reason=validate.text("reason", reason),
                               requested_by=who(self, validate.requester(requested_by)))
        schedule_retry(app, guard, result)
        return checked(result)

    @app.task(name="workerguard.prune", bind=True, throws=throws, **retry)
    def prune(self: Task, dry_run: Any = False, requested_by: Any = None,
              older_than: Any = PRUNE_OLDER_THAN) -> dict[str, Any]:
        dry = validate.flag("dry_run", dry_run)
        unserved = validate.seconds("older_than", older_than)
        requester = who(self, validate.requester(requested_by))
        return checked(guard_for(app).prune(dry_run=dry, requested_by=requester,
                                            older_than=unserved))
