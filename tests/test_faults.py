"""Faults: a guard killed at each stage, a lost lock, Redis restarted empty or down for 20 s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import psutil
import pytest
from celery.exceptions import TimeoutError as CeleryTimeout

from tests.conftest import CeleryHarness, Workspace
from tests.support import HERE, RedisServer, cli_env, poll_for, restart_redis, run_cli
from workerguard.store import keys

FAILPOINT = HERE / "failpoint_guard.py"


def run_to_stage(workspace: Workspace, stage: str, *extra: str) -> subprocess.Popen[str]:
    proc = workspace.tracker.popen(
        [sys.executable, str(FAILPOINT), str(workspace.write_config()), stage, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == f"STAGE {stage}", (line, proc.stderr.read() if proc.stderr else "")
    return proc


@pytest.mark.parametrize(("stage", "hand_started", "survivor"), [
    ("lock_held", 2, "newest hand-started"),
    ("after_stop", 3, "newest hand-started"),
    ("after_spawn", 0, "the orphaned spawn"),
])
def test_a_guard_sigkilled_at_any_stage_leaves_no_duplicate_and_the_next_sweep_converges(
        workspace: Workspace, redis_client, stage: str, hand_started: int, survivor: str):
    workspace.add_profile(start_seconds=0.3, stop_adopted=True)
    manual = [workspace.hand_started() for _ in range(hand_started)]
    poll_for(lambda: len(workspace.running()) == hand_started)
    victim = run_to_stage(workspace, stage)
    before_kill = workspace.running()
    victim.send_signal(signal.SIGKILL)
    victim.wait(5)
    [result] = workspace.guard(redis_client).sweep()
    assert result.ok, result
    final = workspace.running()
    assert len(final) == 1, (stage, final)
    if manual:
        assert final == [manual[-1].pid]
    else:
        assert final == before_kill  # the orphaned spawn is adopted, not duplicated


def test_two_guards_on_one_host_never_act_at_once_even_when_the_redis_lock_is_lost(
        workspace: Workspace, redis_client):
    """The first guard loses its Redis lock just before spawning; the second takes the
    Redis lock at once but must wait on the host fence, then sees the first's worker."""
    workspace.add_profile(start_seconds=0.3)
    go = workspace.home / "go"
    first = run_to_stage(workspace, "lose_lock_at_spawn", str(go))
    key = keys.lock(workspace.host_id, "demo")
    second = workspace.tracker.popen(
        [sys.executable, "-m", "workerguard.cli", "ensure", "demo", "--local", "--json",
         "--config", str(workspace.config_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    poll_for(lambda: redis_client.exists(key), timeout=20,
             message="the second guard to take the Redis lock the first one lost")
    assert workspace.running() == []  # the second is blocked on the fence, not spawning
    go.touch()
    out, err = first.communicate(timeout=30)
    assert "RESULT started" in out, err
    second_out, second_err = second.communicate(timeout=30)
    assert second.returncode == 0, second_err
    assert '"action": "already_running"' in second_out
    assert len(workspace.running()) == 1


def first_answer(harness: CeleryHarness, task: str, *args: Any) -> Any:
    """Send ``task`` until the guard, reconnecting to Redis, answers it; return the result."""

    last: list[Any] = []

    def answered() -> Any:
        try:
            request = harness.call(task, *args, timeout=10)
        except CeleryTimeout:  # still reconnecting (Celery backs off): send another
            last[:] = ["no answer within 10 s"]
            return False
        last[:] = [request.state, request.result]
        return request.state == "SUCCESS" and request.result

    try:
        return poll_for(answered, timeout=90, interval=0.5, message="the guard to reconnect")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last: {last}; guard log:\n{harness.log_tail(6000)}") from None


def test_redis_restarted_empty_mid_operation_kills_nothing_and_the_guard_reconnects(
        workspace: Workspace, harness: CeleryHarness, own_redis: RedisServer):
    workspace.add_profile(start_seconds=3)
    harness.start_worker()
    harness.client_app().send_task("workerguard.ensure", args=["demo"], queue=harness.queue)
    [spawned] = poll_for(lambda: workspace.running(), timeout=20,
                         message="the guard to spawn (and sit in the start window)")
    own_redis.process.send_signal(signal.SIGKILL)  # mid start window, lock held
    own_redis.process.wait(5)
    revived = restart_redis(own_redis)
    try:
        result = first_answer(harness, "workerguard.ensure", "demo")
        assert result["action"] == "already_running" and result["running"] == [spawned]
        assert workspace.running() == [spawned]
        assert harness.worker.poll() is None
    finally:
        revived.stop()


def test_redis_down_for_twenty_seconds_fails_clearly_kills_nothing_and_recovers(
        workspace: Workspace, harness: CeleryHarness, own_redis: RedisServer):
    workspace.add_profile(max_workers=1)
    harness.start_worker()
    [worker] = harness.call("workerguard.ensure", "demo").result["running"]
    extra = workspace.hand_started()  # one too many: an enforce would stop one if it ran
    own_redis.process.send_signal(signal.SIGKILL)
    own_redis.process.wait(5)
    down_since = time.monotonic()
    failures = 0
    config = str(workspace.config_path)
    while time.monotonic() - down_since < 20:  # the outage itself lasts 20 s
        done = run_cli("enforce", "demo", "--local", "--config", config, env=cli_env(), timeout=30)
        assert done.returncode == 1 and "redis unreachable" in done.stderr, done.stderr
        failures += 1
    remote = run_cli("status", "--config", config, "--timeout", "2", env=cli_env(), timeout=60)
    assert remote.returncode == 1
    assert psutil.pid_exists(worker) and extra.poll() is None  # nothing killed meanwhile
    assert harness.worker.poll() is None  # the guard itself survived the outage
    revived = restart_redis(own_redis)
    try:
        status = first_answer(harness, "workerguard.status", "demo")
        assert sorted(status["running"]) == sorted([worker, extra.pid])
        assert failures >= 3
    finally:
        revived.stop()



def answers_ping(harness: CeleryHarness) -> bool:
    """The guard worker answers a Celery ping (any client error: not yet)."""
    try:
        return bool(harness.client_app().control.ping(destination=[harness.node], timeout=1))
    except Exception:  # the client's own connection is still coming back
        return False


ROUNDS = int(os.environ.get("WG_REDIS_RESTART_ROUNDS", "50"))


@pytest.mark.slow
def test_redis_killed_and_restarted_empty_mid_request_50_times_the_guard_answers_after_every_round(
        workspace: Workspace, harness: CeleryHarness, own_redis: RedisServer):
    """Each round: the instance is SIGKILLed, so the guard worker is mid-request (the heal
    sits in its 2 s start window, holding the lock); Redis is SIGKILLed and restarted
    empty on the same port. After every round the guard answers a ping within 15 s and a
    request after it; it logs the loss and the return of the broker once each time; it
    never leaves two instances."""
    workspace.add_profile(start_seconds=2)
    harness.start_worker()
    harness.call("workerguard.ensure", "demo")
    server = own_redis
    waits = []
    try:
        for i in range(ROUNDS):
            [current] = poll_for(workspace.running, timeout=60, message=f"round {i}: one instance")
            psutil.Process(current).send_signal(signal.SIGKILL)
            poll_for(lambda: [p for p in workspace.running() if p != current], timeout=30,  # noqa: B023
                     message=f"round {i}: the heal to spawn")
            server.process.send_signal(signal.SIGKILL)  # mid start window, lock held
            server.process.wait(5)
            server = restart_redis(server)
            back = time.monotonic()
            try:
                poll_for(lambda: answers_ping(harness), timeout=15, interval=0.2,
                         message=f"round {i}: the guard to answer a ping")
            except AssertionError as exc:  # SIGUSR1 to a deaf guard logs its threads' stacks
                raise AssertionError(f"{exc}; guard log:\n{harness.log_tail(8000)}") from None
            waits.append(time.monotonic() - back)
            first_answer(harness, "workerguard.ensure", "demo")
            assert len(workspace.running()) == 1
        log = harness.log_tail(10_000_000)
        assert log.count("broker lost: ") == ROUNDS, log[-8000:]
        assert log.count("broker back after ") == ROUNDS, log[-8000:]
    finally:
        if server is not own_redis:
            server.stop()
    waits.sort()
    print(f"\n{ROUNDS} rounds: restart -> pong median {waits[len(waits) // 2]:.1f} s, "
          f"max {waits[-1]:.1f} s")
