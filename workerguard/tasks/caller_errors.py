"""Failures that tell a caller what went wrong, and nothing about the guard's insides.

Celery stores a failed task's traceback in its result and sends it in the
``task-failed`` event: every caller (and Flower) would read the guard's file paths,
its site-packages and, in a message, its config path. Here the result keeps the
exception's type and message (what the caller needs: ``unknown profile 'x'``,
``start failed: ...``) and the traceback is left out of both; the guard's own log keeps
it for an unexpected error. A message whose arguments the task function does not take
fails with the task's name and the arguments it takes, never an internal function name.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import redis
from celery import Task
from celery.backends.redis import RedisBackend, SentinelBackend
from celery.worker.request import Request
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from workerguard.errors import InvalidRequest
from workerguard.ops import sentinel_order
from workerguard.timing import RESULT_STORE_RETRIES

BACKEND = "workerguard.tasks.caller_errors:QuietRedisBackend"
SENTINEL_BACKEND = "workerguard.tasks.caller_errors:QuietSentinelBackend"
TASK = "workerguard.tasks.caller_errors:QuietTask"
HIDDEN = "(not shown to callers; see the guard's log)"


class _Quiet:
    """Stores failures without their traceback (mixed into Celery's Redis backends)."""

    def mark_as_failure(self, task_id: str, exc: BaseException, traceback: str | None = None,
                        *args: Any, **kwargs: Any) -> Any:
        return super().mark_as_failure(task_id, exc, HIDDEN if traceback else None,  # type: ignore[misc]
                                       *args, **kwargs)

    def mark_as_retry(self, task_id: str, exc: BaseException, traceback: str | None = None,
                      *args: Any, **kwargs: Any) -> Any:
        return super().mark_as_retry(task_id, exc, HIDDEN if traceback else None,  # type: ignore[misc]
                                     *args, **kwargs)


class QuietRedisBackend(_Quiet, RedisBackend):  # type: ignore[misc]
    """Celery's Redis result backend, storing failures without their traceback."""


class QuietSentinelBackend(_Quiet, SentinelBackend):  # type: ignore[misc]
    """Celery's Sentinel result backend (``sentinel://``), the same way, and patient with
    a failover.

    Celery drops a request (rejects it without requeue) whose result it cannot store, and
    its state stays ``STARTED`` for ever. Until the Sentinels name the new primary a
    connection goes to the dead one (refused), and Celery's own retry covers only the
    write, not the read before it; a new primary then refuses writes (``NOREPLICAS``)
    until a replica attaches. Both are retried here for ``timing.RESULT_STORE_PATIENCE``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connparams["retry"] = Retry(
            ExponentialBackoff(cap=1.0, base=0.1), RESULT_STORE_RETRIES,
            supported_errors=(redis.exceptions.ConnectionError,))

    def _get_sentinel_instance(self, **params: Any) -> Any:
        """Celery's, asking first the Sentinel that answered last (``ops.sentinel_order``)."""
        return sentinel_order.follow(super()._get_sentinel_instance(**params))

    def _set(self, key: str, value: Any, expires: Any = None) -> Any:
        try:
            return super()._set(key, value, expires)
        except redis.exceptions.ResponseError as exc:
            if "NOREPLICAS" not in str(exc):
                raise
            # nothing was stored: retried by Celery's retry_policy like a lost connection
            raise redis.exceptions.ConnectionError(str(exc)) from exc


class QuietRequest(Request):  # type: ignore[misc]
    """A task request whose failure events carry no traceback (Flower shows events)."""

    def send_event(self, type: str, **fields: Any) -> None:
        if fields.get("traceback"):
            fields["traceback"] = HIDDEN
        super().send_event(type, **fields)


class QuietTask(Task):  # type: ignore[misc]
    Request = "workerguard.tasks.caller_errors:QuietRequest"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except TypeError as exc:
            body: Callable[..., Any] = getattr(self, "_orig_run", None) or self.run  # autoretry_for
            # wraps run in (*args, **kwargs): the task's own function is _orig_run
            if _ran(exc, body):
                raise
            raise InvalidRequest(f"{self.name}: {_reason(exc)}; it takes ({accepted(body)})") from None


def _ran(exc: BaseException, function: Callable[..., Any]) -> bool:
    """True if ``function``'s body was entered on the way to ``exc``: a ``TypeError`` from
    inside the task, not Python refusing the arguments it was called with."""
    code = getattr(function, "__code__", None)
    frame = exc.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code is code:
            return True
        frame = frame.tb_next
    return False


def _reason(exc: TypeError) -> str:
    """Python's words without the internal function name: ``register.<locals>.ensure() got
    an unexpected keyword argument 'x'`` -> ``unexpected keyword argument 'x'``."""
    return re.sub(r"^[\w.<>]+\(\) (got an? )?", "", str(exc))


def accepted(function: Callable[..., Any]) -> str:
    """A task function's arguments as a caller writes them: ``profile, dry_run=False``."""
    return ", ".join(name if param.default is inspect.Parameter.empty else f"{name}={param.default!r}"
                     for name, param in inspect.signature(function).parameters.items())


def backend_url(url: str) -> str:
    """``url`` with the quiet backend class in front (Celery's ``cls+url`` form).

    Celery reads ``redis+socket://path`` itself as the backend ``redis`` with the URL
    ``socket://path``; with a class in front the ``redis+`` goes, the same way. A
    ``sentinel://`` URL gets the Sentinel variant."""
    cls = SENTINEL_BACKEND if url.startswith("sentinel://") else BACKEND
    return f"{cls}+{url.removeprefix('redis+')}"
