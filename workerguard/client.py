"""Send requests to a guard and wait for the answer (used by the CLI and other services).

Another service needs nothing of this module: plain Celery works too, see the README
(``send_task("workerguard.ensure", args=["rpa"], queue="workerguard.rpa-01")``).
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout

from workerguard.config.load import Config, load_config
from workerguard.config.schema import Settings
from workerguard.errors import (
    ActionFailed,
    InvalidRequest,
    RedisUnavailable,
    UnknownProfile,
    WorkerguardError,
)
from workerguard.ops.connect import endpoint, redis_client, redis_url, unreachable
from workerguard.policy.reports import Result
from workerguard.tasks import validate
from workerguard.tasks.app import make_app
from workerguard.tasks.routing import host_queue, node_name
from workerguard.tasks.unanswered import TRANSPORT_ERRORS, Outcome, revoke_unanswered

ANSWER_TIMEOUT = 10.0
"""How long a request waits for a guard to pick it up; it expires after that."""
RETRY_LOST_PATIENCE = 5.0
"""Seconds the caller tries to answer a lost retry ``REVOKED`` (``_retry_lost``)."""


class NoGuardAnswered(WorkerguardError):
    """No guard consumed the request's queue in time; the request expired unanswered."""


def default_timeout(config: Config) -> float:
    return config.settings.lock_timeout + 60.0


def send(app: Celery, config: Config, task: str, args: list[Any], kwargs: dict[str, Any],
         host: str | None = None, expires: float | None = None) -> Any:
    queue = host_queue(host or config.settings.host_id)
    return app.send_task(task, args=args, kwargs=kwargs, queue=queue,
                         expires=expires or config.settings.request_expires)


def wait(async_result: Any, queue: str, timeout: float,
         answer_timeout: float = ANSWER_TIMEOUT) -> Result:
    """Wait for a guard to pick the request up, then for its result.

    A request no guard took within ``answer_timeout`` (its ``expires``) is answered
    ``REVOKED`` by the caller (``tasks.unanswered``), also when Redis went away while we
    waited: the write is retried within ``timeout``, so that a request lost with a failed
    primary never reads ``PENDING`` for ever.
    """
    started = time.monotonic()
    patience = min(answer_timeout, timeout)
    deadline = started + timeout
    try:
        value = async_result.get(timeout=patience, propagate=False)
    except (CeleryTimeout, *TRANSPORT_ERRORS) as exc:
        outcome = revoke_unanswered(async_result, not_before=started + patience,
                                    deadline=deadline)
        if outcome is Outcome.UNCONFIRMED and not isinstance(exc, CeleryTimeout):
            raise  # Redis is still away: the caller's error names it
        if outcome is not Outcome.ANSWERED:
            raise NoGuardAnswered(
                f"no guard answered on {queue} within {patience:g} s (is `workerguard up` "
                "or `workerguard worker` running for that host?)") from None
        remaining = max(0.1, deadline - time.monotonic())
        try:
            value = async_result.get(timeout=remaining, propagate=False)
        except CeleryTimeout:
            if _retry_lost(async_result):
                raise NoGuardAnswered(
                    f"the guard on {queue} retried the request ({async_result.id}) and no "
                    f"guard took the retry within {timeout:g} s") from None
            raise WorkerguardError(
                f"the guard on {queue} took the request ({async_result.id}) but did not "
                f"finish within {timeout:g} s") from None
    if async_result.state == "FAILURE":
        raise _as_error(value)
    if async_result.state == "REVOKED":  # its expires passed before a guard took it
        raise NoGuardAnswered(f"the request ({async_result.id}) expired before a guard on "
                              f"{queue} took it")
    if not isinstance(value, dict):
        raise WorkerguardError(f"unexpected answer from the guard: {value!r}")
    return value


def _retry_lost(async_result: Any) -> bool:
    """A request still ``RETRY`` when its caller stops waiting: the copy the guard queued
    to retry it (Celery's ``Task.retry``) was lost (with a primary demoted after a
    partition, seen on the Sentinel bed) or no guard consumes the queue. Answer it
    ``REVOKED`` (``tasks.unanswered``: past its ``expires`` any copy still queued is
    refused by the guard that takes it), so that it does not read ``RETRY`` for ever."""
    try:
        if async_result.state != "RETRY":
            return False
    except TRANSPORT_ERRORS:
        return False
    now = time.monotonic()
    return revoke_unanswered(async_result, not_before=now,
                             deadline=now + RETRY_LOST_PATIENCE) is Outcome.REVOKED


def reachable(url: str, settings: Settings) -> None:
    """Fail fast and in one line (``RedisUnavailable``) if Redis does not answer a PING.

    Celery's own client retries for ages and then dumps a traceback; one PING with the
    short timeouts of ``redis_client`` answers in milliseconds (refused, wrong password)
    or a few seconds (unroutable).
    """
    client = redis_client(url, settings)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        raise unreachable(endpoint(url, settings.sentinel_master), exc) from None
    finally:
        client.close()


@contextlib.contextmanager
def _transport(url: str, settings: Settings) -> Iterator[None]:
    """Redis lost between the PING and the answer: the same one line."""
    try:
        yield
    except WorkerguardError:
        raise
    except TRANSPORT_ERRORS as exc:
        raise unreachable(endpoint(url, settings.sentinel_master), exc) from None


def check_request(config: Config, task: str, args: list[Any], host: str | None) -> None:
    """Refuse at once what the guard would refuse: a profile this host does not configure.

    Only for this host's own queue: another host may configure other profiles.
    """
    if host not in (None, config.settings.host_id):
        return
    if task in ("workerguard.ensure", "workerguard.enforce", "workerguard.stop_all") and args:
        validate.profile_name(config, args[0])
    elif task == "workerguard.status" and args:
        validate.optional_profile(config, args[0])


_ANSWERS: dict[str, type[WorkerguardError]] = {
    "UnknownProfile": UnknownProfile,
    "InvalidRequest": InvalidRequest,
    "TypeError": InvalidRequest,  # wrong argument count or an unknown keyword
    "ActionFailed": ActionFailed,
    "RedisUnavailable": RedisUnavailable,
    "ConfigError": WorkerguardError,  # a reload refused: the guard's config is not ours to fix
}
"""A failed task's exception, by class name, as the error the CLI maps to an exit code."""


def _as_error(exc: Any) -> WorkerguardError:
    name = type(exc).__name__
    if name in _ANSWERS:
        return _ANSWERS[name](str(exc))
    if isinstance(exc, WorkerguardError):
        return exc
    return WorkerguardError(f"{name}: {exc}")


def call_and_wait(config: Config, task: str, args: list[Any], kwargs: dict[str, Any],
                  host: str | None = None, timeout: float | None = None) -> Result:
    """Send one request to a host's queue and return its result dict."""
    check_request(config, task, args, host)
    timeout = timeout or default_timeout(config)
    queue = host_queue(host or config.settings.host_id)
    with redis_url(config.settings) as url, _sender(config, url) as app:
        reachable(url, config.settings)
        with _transport(url, config.settings):
            # Expire with our patience: a request nobody took in time never runs later.
            request = send(app, config, task, args, kwargs, host,
                           expires=min(ANSWER_TIMEOUT, timeout))
            return wait(request, queue, timeout)


_apps: dict[tuple[str, str | None, str | None], Celery] = {}
_apps_lock = threading.Lock()
MAX_CACHED_APPS = 4


@contextlib.contextmanager
def _sender(config: Config, url: str) -> Iterator[Celery]:
    """A Celery app to send with: cached per configured ``redis_url`` (its connection pools
    are reused by every call), built and closed per call for the embedded server, whose
    URL lives only as long as the command."""
    if url != config.settings.redis_url:
        app = make_app(config, url)
        try:
            yield app
        finally:
            app.close()
        return
    yield cached_app(config, url)


def cached_app(config: Config, url: str) -> Celery:
    """One app per Redis URL (and Sentinel master) for the life of the process (at most
    ``MAX_CACHED_APPS``)."""
    key = (url, config.settings.sentinel_master, config.settings.sentinel_password)
    with _apps_lock:
        app = _apps.get(key)
        if app is None:
            if len(_apps) >= MAX_CACHED_APPS:
                _apps.pop(next(iter(_apps))).close()
            app = _apps[key] = make_app(config, url)
        return app


@atexit.register
def close() -> None:
    """Close the cached apps (also run at exit)."""
    with _apps_lock:
        while _apps:
            _apps.popitem()[1].close()


def _call(task: str, args: list[Any], kwargs: dict[str, Any], host: str | None, wait_: bool,
          timeout: float | None, config: Config | None) -> Any:
    config = config or load_config()
    if wait_:
        return call_and_wait(config, task, args, kwargs, host=host, timeout=timeout)
    url = config.settings.redis_url
    if not url:
        raise WorkerguardError("wait=False needs a redis_url: the embedded server is per command")
    check_request(config, task, args, host)
    reachable(url, config.settings)
    with _transport(url, config.settings):
        return send(cached_app(config, url), config, task, args, kwargs, host)


def ensure(profile: str, host: str | None = None, wait: bool = True, timeout: float | None = None,
           dry_run: bool = False, config: Config | None = None) -> Any:
    """Ask the guard of ``host`` to converge ``profile``; the result dict, or the AsyncResult."""
    return _call("workerguard.ensure", [profile], {"dry_run": dry_run}, host, wait, timeout, config)


def enforce(profile: str, max_workers: int | None = None, host: str | None = None,
            wait: bool = True, timeout: float | None = None, dry_run: bool = False,
            config: Config | None = None) -> Any:
    return _call("workerguard.enforce", [profile], {"max_workers": max_workers, "dry_run": dry_run},
                 host, wait, timeout, config)


def stop_all(profile: str, host: str | None = None, wait: bool = True,
             timeout: float | None = None, dry_run: bool = False,
             config: Config | None = None) -> Any:
    return _call("workerguard.stop_all", [profile], {"dry_run": dry_run}, host, wait, timeout,
                 config)


def status(profile: str | None = None, host: str | None = None, wait: bool = True,
           timeout: float | None = None, config: Config | None = None) -> Any:
    return _call("workerguard.status", [profile] if profile else [], {}, host, wait, timeout,
                 config)


def reload(host: str | None = None, timeout: float | None = None,
           config: Config | None = None) -> Result:
    """Ask the guard of ``host`` to reload its config file and sweep once.

    A refused reload (broken file, a restart-only setting changed) raises
    ``WorkerguardError`` with the guard's reason; the guard keeps its running config.
    """
    result: Result = _call("workerguard.reload", [], {}, host, True, timeout, config)
    return result


def ping(config: Config, host: str | None = None, timeout: float = 5.0) -> str:
    """The node name of the host's guard worker if it answers a Celery ping within ``timeout``."""
    node = node_name(host or config.settings.host_id)
    with redis_url(config.settings) as url, _sender(config, url) as app:
        reachable(url, config.settings)
        with _transport(url, config.settings):
            replies = app.control.ping(destination=[node], timeout=timeout)
    if not any(node in reply for reply in replies or []):
        raise WorkerguardError(f"no guard answered: {node} did not answer a ping within "
                               f"{timeout:g} s (it is down, or cannot reach the broker)")
    return node
