"""The caller's answer for a request no guard took: ``REVOKED``, written so that it stays.

A request lost with the Redis that held it (queued on a primary that died before a replica
had it) reaches no guard and would read ``PENDING`` for ever. Only the caller knows it was
sent, so once its ``expires`` has passed the caller writes the answer a guard would have
given. The write must outlive what lost the request:

- it is retried while Redis does not answer (a failover in progress), within the caller's
  own patience, and a fresh connection asks the Sentinels for the primary each time;
- it counts only once a replica acknowledged it (``WAIT``) when the primary has replicas:
  written to a primary that is cut off and later demoted, it would be lost like the request.

It never overwrites a guard's answer: the script writes only where the result key is absent,
already holds this same mark (a retry of a write that landed but was not confirmed), or
holds ``RETRY``. A guard that takes the request later answers ``REVOKED`` itself (its
``expires`` has passed).

``RETRY`` is no answer: a guard that met a Redis error retried the request by queueing a
copy of it (Celery's ``Task.retry``, same id and ``expires``), and that copy can be lost
like any request, to a primary demoted after a heal (seen on the boxed Sentinel bed: one
request read ``RETRY`` for ever). Past its ``expires`` any copy still queued is answered
``REVOKED`` by the guard that takes it, so the caller's mark says what the guard would.
A copy being run right now has written ``STARTED`` first (``task_track_started``), which is
never overwritten.
"""

from __future__ import annotations

import enum
import logging
import time
from typing import Any

import kombu.exceptions
import redis
from celery.exceptions import TaskRevokedError

log = logging.getLogger(__name__)

REASON = "expired: no guard took it before its expires"
WAIT_MS = 1000
"""How long one ``WAIT`` for a replica's acknowledgement may take."""
RETRY_EVERY = 0.25
"""Seconds between two attempts while Redis does not answer or no replica acknowledged."""

TRANSPORT_ERRORS = (redis.exceptions.RedisError, kombu.exceptions.OperationalError, OSError,
                    RuntimeError)
"""What Celery and kombu raise when the broker or the result store cannot be reached (the
backend gives up with a ``RuntimeError``, "Retry limit exceeded ... must be restarted")."""

_MARK = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then
  local ok, meta = pcall(cjson.decode, current)
  if not (ok and type(meta) == 'table' and meta['status'] == 'RETRY') then return 0 end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""
"""Write the mark unless the key holds something else than ``RETRY`` (a guard's answer, or
its ``STARTED``); publish it to the callers subscribed to the result, as Celery's own
result write does."""


class Outcome(enum.Enum):
    REVOKED = "revoked"
    """The mark is written (and acknowledged by a replica if the primary has any)."""
    ANSWERED = "answered"
    """A guard's state (started, or its result) was there: nothing written."""
    UNCONFIRMED = "unconfirmed"
    """Redis did not answer, or no replica acknowledged, before the deadline."""


def revoke_unanswered(async_result: Any, not_before: float, deadline: float) -> Outcome:
    """Mark ``async_result`` ``REVOKED`` unless a guard answered it; the mark is written no
    sooner than ``not_before`` (its ``expires``) and tried until ``deadline`` (both
    ``time.monotonic()``)."""
    backend = async_result.backend
    key = backend.get_key_for_task(async_result.id)
    value = backend.encode(_revoked_meta(backend, async_result.id))
    expires = int(backend.expires or 0)
    wait_until(not_before)
    last_problem = ""
    while True:
        try:
            outcome = _mark_once(backend.client, key, value, expires)
            if outcome is not Outcome.UNCONFIRMED:
                return outcome
            last_problem = "no replica acknowledged it"
        except TRANSPORT_ERRORS as exc:
            last_problem = f"{type(exc).__name__}: {exc}"
        if time.monotonic() + RETRY_EVERY >= deadline:
            log.warning("request %s: could not record it as expired (%s); it may read PENDING",
                        async_result.id, last_problem)
            return Outcome.UNCONFIRMED
        time.sleep(RETRY_EVERY)


def _mark_once(client: redis.Redis, key: bytes, value: Any, expires: int) -> Outcome:
    """One attempt on one connection (``WAIT`` acknowledges that connection's writes)."""
    connection = redis.Redis(connection_pool=client.connection_pool,
                             single_connection_client=True)
    try:
        if not connection.eval(_MARK, 1, key, value, expires):
            return Outcome.ANSWERED
        replicas = int(connection.info("replication").get("connected_slaves", 0))
        if replicas == 0 or connection.wait(1, WAIT_MS) >= 1:
            return Outcome.REVOKED
        return Outcome.UNCONFIRMED
    finally:
        connection.close()


def _revoked_meta(backend: Any, task_id: str) -> dict[str, Any]:
    """The result a guard writes for a request it takes after its ``expires`` (Celery's
    ``mark_as_revoked``), in the backend's own encoding of an exception."""
    return {
        "status": "REVOKED",
        "result": backend.prepare_exception(TaskRevokedError(REASON)),
        "traceback": None,
        "children": [],
        "date_done": backend.app.now().isoformat(),
        "task_id": task_id,
    }


def wait_until(moment: float) -> None:
    """Block until ``time.monotonic()`` reaches ``moment`` (a retry pause, not a sync)."""
    while (left := moment - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))
