"""Failures that tell a caller what went wrong, and nothing about the guard's insides.

Celery stores a failed task's traceback in its result and sends it in the
``task-failed`` event: every caller (and Flower) would read the guard's file paths,
its site-packages and, in a message, its config path. Here the result keeps the
exception's type and message (what the caller needs: ``unknown profile 'x'``,
``start failed: ...``) and the traceback is left out of both; the guard's own log keeps
it for an unexpected error.
"""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.backends.redis import RedisBackend
from celery.worker.request import Request

BACKEND = "workerguard.tasks.caller_errors:QuietRedisBackend"
TASK = "workerguard.tasks.caller_errors:QuietTask"
HIDDEN = "(not shown to callers; see the guard's log)"


class QuietRedisBackend(RedisBackend):  # type: ignore[misc]
    """Celery's Redis result backend, storing failures without their traceback."""

    def mark_as_failure(self, task_id: str, exc: BaseException, traceback: str | None = None,
                        *args: Any, **kwargs: Any) -> Any:
        return super().mark_as_failure(task_id, exc, HIDDEN if traceback else None,
                                       *args, **kwargs)

    def mark_as_retry(self, task_id: str, exc: BaseException, traceback: str | None = None,
                      *args: Any, **kwargs: Any) -> Any:
        return super().mark_as_retry(task_id, exc, HIDDEN if traceback else None,
                                     *args, **kwargs)


class QuietRequest(Request):  # type: ignore[misc]
    """A task request whose failure events carry no traceback (Flower shows events)."""

    def send_event(self, type: str, **fields: Any) -> None:
        if fields.get("traceback"):
            fields["traceback"] = HIDDEN
        super().send_event(type, **fields)


class QuietTask(Task):  # type: ignore[misc]
    Request = "workerguard.tasks.caller_errors:QuietRequest"


def backend_url(url: str) -> str:
    """``url`` with the quiet backend class in front (Celery's ``cls+url`` form).

    Celery reads ``redis+socket://path`` itself as the backend ``redis`` with the URL
    ``socket://path``; with a class in front the ``redis+`` goes, the same way."""
    return f"{BACKEND}+{url.removeprefix('redis+')}"
