"""The task functions: validate the message, call the guard, return its result dict.

Kept thin on purpose: every decision lives in ``guard``; here are only argument
checks, the retry policy and the translation of a failed action into a failed task.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import Celery, Task

from ..config import Config
from ..connect import redis_client
from ..errors import ActionFailed, InvalidRequest, LockTimeout, RedisUnavailable, UnknownProfile
from ..guard import Guard
from . import validate
from .healing import exit_listener, register_healing

log = logging.getLogger("workerguard.tasks")
RETRY_ON = (LockTimeout, RedisUnavailable)
MAX_RETRIES = 3
EXPECTED = (InvalidRequest, UnknownProfile, ActionFailed)
"""Failures that are answers, not bugs: logged without a traceback (Celery's ``throws``)."""
_guards: dict[tuple[int, int], Guard] = {}
_guards_lock = threading.Lock()


def guard_for(app: Celery) -> Guard:
    """One guard (and Redis pool) per app per process: never share sockets across a fork."""
    key = (id(app), os.getpid())
    with _guards_lock:
        if key not in _guards:
            config: Config = app.conf.workerguard_config
            _guards[key] = Guard(redis_client(app.conf.workerguard_redis_url), config,
                                 observer=app.conf.get("workerguard_observer"),
                                 on_exit=exit_listener(app, config.settings.host_id))
        return _guards[key]


def _who(task: Task, requested_by: str | None) -> str:
    origin = getattr(task.request, "origin", None) or "unknown sender"
    return f"{requested_by or 'task'} (task {task.request.id} from {origin})"


def _run(task: Task, action: Any) -> dict[str, Any]:
    try:
        result: dict[str, Any] = action()
    except RETRY_ON as exc:
        if task.request.retries >= MAX_RETRIES:
            raise
        raise task.retry(exc=exc, countdown=2 ** task.request.retries,
                         max_retries=MAX_RETRIES) from exc
    if not result.get("ok", True):
        raise ActionFailed(result["message"])
    return result


def register(app: Celery) -> None:
    config: Config = app.conf.workerguard_config
    register_healing(app, guard_for, _run, _who, EXPECTED)

    @app.task(name="workerguard.ensure", bind=True, throws=EXPECTED)
    def ensure(self: Task, profile: Any, dry_run: Any = False, force: Any = False,
               requested_by: Any = None) -> dict[str, Any]:
        name = validate.profile_name(config, profile)
        dry, forced = validate.flag("dry_run", dry_run), validate.flag("force", force)
        who = _who(self, validate.requester(requested_by))
        return _run(self, lambda: guard_for(app).ensure(name, dry_run=dry, force=forced,
                                                        requested_by=who))

    @app.task(name="workerguard.enforce", bind=True, throws=EXPECTED)
    def enforce(self: Task, profile: Any, max_workers: Any = None, dry_run: Any = False,
                requested_by: Any = None) -> dict[str, Any]:
        name = validate.profile_name(config, profile)
        limit = validate.max_workers(max_workers)
        dry = validate.flag("dry_run", dry_run)
        who = _who(self, validate.requester(requested_by))
        return _run(self, lambda: guard_for(app).enforce(name, max_workers=limit, dry_run=dry,
                                                         requested_by=who))

    @app.task(name="workerguard.stop_all", bind=True, throws=EXPECTED)
    def stop_all(self: Task, profile: Any, dry_run: Any = False,
                 requested_by: Any = None) -> dict[str, Any]:
        name = validate.profile_name(config, profile)
        dry = validate.flag("dry_run", dry_run)
        who = _who(self, validate.requester(requested_by))
        return _run(self, lambda: guard_for(app).stop_all(name, dry_run=dry, requested_by=who))

    @app.task(name="workerguard.status", bind=True, throws=EXPECTED)
    def status(self: Task, profile: Any = None) -> dict[str, Any]:
        name = validate.optional_profile(config, profile)
        return _run(self, lambda: guard_for(app).status(name))

    @app.task(name="workerguard.sweep", bind=True, ignore_result=True)
    def sweep(self: Task) -> list[dict[str, Any]]:
        guard = guard_for(app)
        if not guard.claim_sweep():
            log.info("workerguard.sweep[%s] skipped: another sweep ran on %s this interval",
                     self.request.id, guard.host)
            return []
        return guard.sweep(requested_by=_who(self, "beat"))
