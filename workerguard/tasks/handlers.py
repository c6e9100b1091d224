"""The task functions: validate the message, call the guard, return its result dict.

Kept thin on purpose: every decision lives in ``guard``; here are only argument
checks, the retry policy and the translation of a failed action into a failed task.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task

from workerguard.errors import (
    ActionFailed,
    ConfigError,
    InvalidRequest,
    LockTimeout,
    RedisUnavailable,
    UnknownProfile,
)
from workerguard.policy.guard import Guard
from workerguard.policy.outcome import Answer
from workerguard.tasks import context, early_refusal, validate  # noqa: F401 (refused answers rejected messages)
from workerguard.tasks.heal_requests import HealRequests, register_healing, schedule_retry
from workerguard.tasks.reload import reload_config, rotate_logs

log = logging.getLogger("workerguard.tasks")
RETRY_ON = (LockTimeout, RedisUnavailable)
MAX_RETRIES = 3
RETRY = {"autoretry_for": RETRY_ON, "max_retries": MAX_RETRIES, "retry_backoff": 1,
         "retry_backoff_max": 2 ** MAX_RETRIES, "retry_jitter": False}
"""A lock wait that timed out or Redis unreachable: retried 3 times, after 1, 2 and 4 s."""
EXPECTED = (InvalidRequest, UnknownProfile, ActionFailed, ConfigError)
"""Failures that are answers, not bugs: logged without a traceback (Celery's ``throws``)."""
STARTUP = "guard startup"
"""Who asked for a guard worker's first sweep (its ``trigger="startup"``), in the action log."""


def guard_for(app: Celery) -> Guard:
    """This process's guard for the app's current config (see ``tasks/context.py``)."""
    return context.of(app).guard()


def _who(task: Task, requested_by: str | None) -> str:
    origin = getattr(task.request, "origin", None) or "unknown sender"
    return f"{requested_by or 'task'} (task {task.request.id} from {origin})"


def _checked(answer: Answer) -> dict[str, Any]:
    """The task's answer: the contract dict, or ``ActionFailed`` with the guard's line."""
    if not answer.ok:
        raise ActionFailed(answer.message)
    return answer.contract()


def register(app: Celery) -> None:
    live = context.of(app)
    live.hooks.append(HealRequests(app, live.config.settings.host_id))
    register_healing(app, guard_for, _who, _checked, EXPECTED, RETRY)

    @app.task(name="workerguard.ensure", bind=True, throws=EXPECTED, **RETRY)
    def ensure(self: Task, profile: Any, dry_run: Any = False, force: Any = False,
               requested_by: Any = None) -> dict[str, Any]:
        guard = guard_for(app)
        name = validate.profile_name(guard.config, profile)
        dry, forced = validate.flag("dry_run", dry_run), validate.flag("force", force)
        who = _who(self, validate.requester(requested_by))
        result = guard.ensure(name, dry_run=dry, force=forced, requested_by=who)
        if not dry:
            schedule_retry(app, guard, result)  # a crash loop goes on, paced by its backoff
        return _checked(result)

    @app.task(name="workerguard.enforce", bind=True, throws=EXPECTED, **RETRY)
    def enforce(self: Task, profile: Any, max_workers: Any = None, dry_run: Any = False,
                requested_by: Any = None) -> dict[str, Any]:
        guard = guard_for(app)
        name = validate.profile_name(guard.config, profile)
        limit = validate.max_workers(max_workers)
        dry = validate.flag("dry_run", dry_run)
        who = _who(self, validate.requester(requested_by))
        return _checked(guard.enforce(name, max_workers=limit, dry_run=dry, requested_by=who))

    @app.task(name="workerguard.stop_all", bind=True, throws=EXPECTED, **RETRY)
    def stop_all(self: Task, profile: Any, dry_run: Any = False,
                 requested_by: Any = None) -> dict[str, Any]:
        guard = guard_for(app)
        name = validate.profile_name(guard.config, profile)
        dry = validate.flag("dry_run", dry_run)
        who = _who(self, validate.requester(requested_by))
        return _checked(guard.stop_all(name, dry_run=dry, requested_by=who))

    @app.task(name="workerguard.status", bind=True, throws=EXPECTED, **RETRY)
    def status(self: Task, profile: Any = None) -> dict[str, Any]:
        guard = guard_for(app)
        name = validate.optional_profile(guard.config, profile)
        return _checked(guard.status(name))

    @app.task(name="workerguard.reload", bind=True, throws=EXPECTED)
    def reload(self: Task, requested_by: Any = None) -> dict[str, Any]:
        return reload_config(app, _who(self, validate.requester(requested_by)))

    @app.task(name="workerguard.sweep", bind=True, ignore_result=True)
    def sweep(self: Task, trigger: Any = "beat") -> list[dict[str, Any]]:
        guard = guard_for(app)
        why = validate.trigger(trigger)
        if not guard.claim_sweep(always=why == "startup"):  # a starting guard sweeps in any case
            log.info("workerguard.sweep[%s] skipped: another sweep ran on %s this interval",
                     self.request.id, guard.host)
            return []
        rotate_logs(guard)
        return [outcome.contract()
                for outcome in guard.sweep(requested_by=_who(self, STARTUP if why == "startup" else why),
                                           trigger=why)]
