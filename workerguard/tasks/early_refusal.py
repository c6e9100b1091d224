"""Answer a refused message at once with a failed result, instead of leaving its caller waiting.

A message in a serializer the guard does not accept (msgpack, YAML, pickle) is dropped
by Celery with a log line and no result (docs/pitfalls.md), so the caller's ``get()`` only
ends at its own timeout. Celery sends ``task_rejected`` for it; the task id is in the
message headers (protocol 2, JSON envelope) even when the body cannot be read, so the
failure is stored under that id, as JSON.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import task_rejected
from celery.utils.objects import Bunch

from workerguard.errors import InvalidRequest
from workerguard.tasks import context

log = logging.getLogger("workerguard.tasks")


def refusal(content_type: str | None) -> InvalidRequest:
    return InvalidRequest(
        f"message refused: content type {content_type!r} is not accepted; workerguard takes "
        "JSON only (serializer='json')")


@task_rejected.connect
def answer_refused(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
    app: Any = getattr(sender, "app", None)
    if message is None or context.find(app) is None:
        return
    headers = message.headers if isinstance(message.headers, dict) else {}
    task_id, name = headers.get("id"), headers.get("task")
    if not isinstance(task_id, str):
        return  # protocol 1: the id is inside the body we could not read
    properties = message.properties if isinstance(message.properties, dict) else {}
    request = Bunch(name=name, task=name, chord=None, root_id=headers.get("root_id"),
                    group=None, correlation_id=properties.get("correlation_id"),
                    reply_to=properties.get("reply_to"), errbacks=None)
    problem = refusal(message.content_type)
    try:
        app.backend.mark_as_failure(task_id, problem, request=request)
    except Exception as error:  # the backend may be unreachable: never break the consumer
        log.warning("could not answer refused message %s: %s", task_id, error)
        return
    dispatcher = getattr(sender, "event_dispatcher", None)
    if dispatcher is not None:
        dispatcher.send("task-failed", uuid=task_id, exception=repr(problem))
