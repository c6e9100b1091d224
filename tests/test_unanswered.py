"""A request no guard took ends ``REVOKED``, written by its caller, never ``PENDING`` for ever.

Real Redis servers (a primary and a replica where ``WAIT`` matters), a real Celery app,
requests sent to a queue no guard consumes: what is lost when a primary dies before a
replica had the request (the slow ``test_sentinel`` rounds do it with real failovers).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest
import redis
from celery.exceptions import TaskRevokedError

from tests.conftest import Workspace
from tests.support import RedisServer, poll_for, restart_redis
from workerguard import client as wg_client
from workerguard.tasks.app import make_app
from workerguard.tasks.unanswered import REASON, Outcome, revoke_unanswered

NOBODY = "workerguard.nobody-consumes-this"


def app_on(workspace: Workspace, url: str) -> Any:
    workspace.redis_url = url
    return make_app(workspace.config(), url)


def test_a_request_no_guard_takes_reads_revoked_in_celerys_own_format(workspace: Workspace):
    app, reader = app_on(workspace, workspace.redis_url), app_on(workspace, workspace.redis_url)
    try:
        sent = app.send_task("workerguard.ensure", args=["demo"], queue=NOBODY, expires=0.5)
        with pytest.raises(wg_client.NoGuardAnswered, match="no guard answered"):
            wg_client.wait(sent, NOBODY, timeout=20, answer_timeout=0.5)
        seen = reader.AsyncResult(sent.id)  # another app decodes what the caller wrote
        assert seen.state == "REVOKED"
        assert isinstance(seen.result, TaskRevokedError) and REASON in str(seen.result)
        assert seen.date_done is not None
    finally:
        app.close()
        reader.close()


def test_a_guards_answer_is_never_overwritten(workspace: Workspace):
    app = app_on(workspace, workspace.redis_url)
    try:
        for state in ("STARTED", "SUCCESS"):
            sent = app.send_task("workerguard.ensure", args=["demo"], queue=NOBODY, expires=1)
            app.backend.store_result(sent.id, {"action": "none"}, state)
            now = time.monotonic()
            assert revoke_unanswered(sent, now, now + 5) is Outcome.ANSWERED
            assert app.AsyncResult(sent.id).state == state
    finally:
        app.close()


def test_a_request_left_in_retry_past_its_expires_reads_revoked(workspace: Workspace):
    """A guard retried the request (its copy queued again) and the copy was lost: the
    caller's mark replaces ``RETRY``, as the guard would answer any copy past ``expires``."""
    app = app_on(workspace, workspace.redis_url)
    try:
        sent = app.send_task("workerguard.ensure", args=["demo"], queue=NOBODY, expires=0.5)
        app.backend.store_result(sent.id, RuntimeError("redis unreachable"), "RETRY")
        with pytest.raises(wg_client.NoGuardAnswered, match="no guard answered"):
            wg_client.wait(sent, NOBODY, timeout=20, answer_timeout=0.5)
        seen = app.AsyncResult(sent.id)
        assert seen.state == "REVOKED" and REASON in str(seen.result)
    finally:
        app.close()


def _scripts_run(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("eval", "evalsha"))


def test_a_retry_written_after_the_callers_check_and_then_lost_reads_revoked(
        workspace: Workspace, redis_client: redis.Redis):
    """The guard was running the request when its caller looked (``STARTED``: an answer is
    coming), then retried it, and the retried copy was lost: when the caller stops waiting
    it answers the ``RETRY`` ``REVOKED`` instead of leaving it so for ever."""
    app = app_on(workspace, workspace.redis_url)
    try:
        sent = app.send_task("workerguard.ensure", args=["demo"], queue=NOBODY, expires=0.5)
        app.backend.store_result(sent.id, None, "STARTED")
        before = _scripts_run(redis_client)
        outcome: list[BaseException] = []

        def caller() -> None:
            try:
                wg_client.wait(sent, NOBODY, timeout=3, answer_timeout=0.5)
            except BaseException as exc:  # what the caller was told
                outcome.append(exc)

        waiting = threading.Thread(target=caller)
        waiting.start()
        try:  # the caller's look at the expires (its script) found STARTED and left it
            poll_for(lambda: _scripts_run(redis_client) > before, timeout=10, interval=0.02,
                     message="the caller's look at the request")
            assert app.AsyncResult(sent.id).state == "STARTED"
            app.backend.store_result(sent.id, RuntimeError("redis unreachable"), "RETRY")
        finally:
            waiting.join(30)
        assert not waiting.is_alive()
        [told] = outcome
        assert isinstance(told, wg_client.NoGuardAnswered) and "retried" in str(told)
        assert app.AsyncResult(sent.id).state == "REVOKED"
    finally:
        app.close()


def test_a_request_lost_with_redis_is_revoked_once_redis_is_back(
        workspace: Workspace, own_redis: RedisServer):
    """Redis dies with the queued request (no persistence: a primary killed before a
    replica had it) while the caller waits; it comes back empty; the caller's REVOKED mark
    lands there, so the request does not read PENDING for ever."""
    app = app_on(workspace, own_redis.url)
    outcome: list[BaseException | None] = []
    try:
        sent = app.send_task("workerguard.ensure", args=["demo"], queue=NOBODY, expires=1)
        own_redis.stop()

        def caller() -> None:
            try:
                wg_client.wait(sent, NOBODY, timeout=60, answer_timeout=1)
                outcome.append(None)
            except BaseException as exc:  # what the caller got is checked below
                outcome.append(exc)

        thread = threading.Thread(target=caller, daemon=True)
        thread.start()
        restarted = restart_redis(own_redis)
        own_redis.process = restarted.process  # the fixture stops this one
        poll_for(lambda: not thread.is_alive(), timeout=90, message="the caller to give up")
        assert isinstance(outcome[0], wg_client.NoGuardAnswered), outcome
        assert app.AsyncResult(sent.id).state == "REVOKED"
    finally:
        app.close()


def test_behind_a_replica_the_mark_counts_only_once_the_replica_has_it(
        workspace: Workspace, redis_server: RedisServer, replica: RedisServer):
    """A mark written to a primary whose replica does not acknowledge (here: SIGSTOPped,
    still attached) is unconfirmed, and written again until the replica has it: written
    to a primary about to be cut off and demoted, it would be lost with it."""
    app = app_on(workspace, redis_server.url)
    primary, replica_client = redis_server.client(), replica.client()
    try:
        lone, later = (app.send_task("workerguard.ensure", args=["demo"], queue=NOBODY,
                                     expires=1) for _ in range(2))
        os.kill(replica.process.pid, signal.SIGSTOP)
        try:
            now = time.monotonic()
            assert revoke_unanswered(lone, now, now + 2.5) is Outcome.UNCONFIRMED
            assert app.AsyncResult(lone.id).state == "REVOKED"  # on the primary only
            outcome: list[Outcome] = []
            thread = threading.Thread(target=lambda: outcome.append(revoke_unanswered(
                later, time.monotonic(), time.monotonic() + 60)), daemon=True)
            thread.start()
            key = app.backend.get_key_for_task(later.id)
            poll_for(lambda: primary.exists(key), timeout=30,
                     message="the mark to be written to the primary")
            assert thread.is_alive()  # the replica cannot acknowledge: still trying
        finally:
            os.kill(replica.process.pid, signal.SIGCONT)
        poll_for(lambda: not thread.is_alive(), timeout=60, message="the mark confirmed")
        assert outcome == [Outcome.REVOKED]
        assert replica_client.get(key) == primary.get(key)
    finally:
        app.close()
        primary.close()
        replica_client.close()


def test_with_redis_still_away_the_caller_gets_the_transport_error(
        workspace: Workspace, own_redis: RedisServer):
    app = app_on(workspace, own_redis.url)
    try:
        sent = app.send_task("workerguard.ensure", args=["demo"], queue=NOBODY, expires=0.5)
        own_redis.stop()
        with pytest.raises((redis.exceptions.RedisError, OSError, RuntimeError)):
            wg_client.wait(sent, NOBODY, timeout=3, answer_timeout=0.5)
    finally:
        app.close()
