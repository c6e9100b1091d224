"""A guard whose network path to Redis silently drops packets notices, reconnects by itself
and answers again once the path heals (issue 11, point 4).

The guard worker reaches Redis through ``tests.blackhole.BlackHoleProxy``; the test's
client talks to Redis directly, as a service elsewhere on the network would.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import psutil
import pytest

from tests.blackhole import BlackHoleProxy
from tests.conftest import CeleryHarness, Workspace
from tests.support import RedisServer, alive, cli_env, free_port, poll_for, run_cli
from tests.test_metrics import reachable, value
from workerguard.ops.connect import HEALTH_CHECK_INTERVAL, SOCKET_TIMEOUT
from workerguard.tasks.app import make_app
from workerguard.tasks.routing import SWEEP_TASK
from workerguard.timing import REDIS_WATCH_INTERVAL as BROKER_PROBE_INTERVAL

pytestmark = pytest.mark.celery

NOTICE_BOUND = SOCKET_TIMEOUT + BROKER_PROBE_INTERVAL + 3
"""The broker gauge drops within one probe interval plus one socket timeout (+ load)."""
ANSWER_BOUND = 2 * HEALTH_CHECK_INTERVAL + 4 * SOCKET_TIMEOUT + 5
"""After the path heals: kombu drops the dead BRPOP connection, the dead pub/sub one after
two missed health checks, and each dead pooled connection costs one socket timeout on
its first use before it is replaced. 35 s with the defaults (measured 20.7-21.7 s)."""
HOLE_SECONDS = 3 * HEALTH_CHECK_INTERVAL


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[BlackHoleProxy]:
    proxy = BlackHoleProxy(redis_server.port)
    yield proxy
    proxy.close()


def broker_up(port: int, host: str) -> float | None:
    samples = reachable(port)
    if samples is None or "workerguard_broker_up" not in samples:
        return None
    return value(samples, "workerguard_broker_up", host=host)


def ping(workspace: Workspace, direct_url: str) -> tuple[int, str]:
    done = run_cli("ping", "--config", str(workspace.config_path), "--timeout", "2",
                   env=cli_env(WORKERGUARD_REDIS_URL=direct_url), timeout=60)
    return done.returncode, (done.stdout + done.stderr).strip()


def test_a_black_holed_redis_path_is_noticed_and_recovered_from_and_requests_answered_after(
        workspace: Workspace, harness: CeleryHarness, proxy: BlackHoleProxy,
        redis_server: RedisServer):
    workspace.add_profile(start_seconds=0.3)
    workspace.redis_url = proxy.url  # the guard's path to Redis goes through the proxy
    harness.app = make_app(workspace.config(), redis_server.url)  # the caller's does not
    port = free_port()
    harness.start_worker(WORKERGUARD_METRICS_PORT=str(port), WORKERGUARD_METRICS_ADDR="127.0.0.1")
    poll_for(lambda: broker_up(port, workspace.host_id) == 1, timeout=20,
             message="the broker gauge to read 1")
    assert harness.call("workerguard.ensure", "demo").state == "SUCCESS"
    assert ping(workspace, redis_server.url)[0] == 0

    proxy.black_hole()
    holed = time.monotonic()
    poll_for(lambda: broker_up(port, workspace.host_id) == 0, timeout=NOTICE_BOUND, interval=0.2,
             message="the broker gauge to read 0")
    noticed = time.monotonic() - holed
    code, line = ping(workspace, redis_server.url)
    assert code == 1
    assert line == (f"error: no guard answered: {harness.node} did not answer a ping within 2 s "
                    "(it is down, or cannot reach the broker)")
    [worker] = workspace.running()
    waiting = harness.client_app().send_task("workerguard.ensure", args=["demo"],
                                             queue=harness.queue, expires=120)
    while time.monotonic() < holed + HOLE_SECONDS:  # every connection now older than the checks
        assert waiting.state == "PENDING"  # nothing crosses the black hole
        time.sleep(0.5)

    proxy.heal()
    healed = time.monotonic()
    answer = waiting.get(timeout=ANSWER_BOUND, propagate=False)
    answered = time.monotonic() - healed
    assert waiting.state == "SUCCESS", (answer, harness.log_tail(8000))
    assert answer["action"] == "already_running" and answer["running"] == [worker]
    poll_for(lambda: ping(workspace, redis_server.url)[0] == 0, timeout=ANSWER_BOUND,
             message="the guard to answer pings again (its pub/sub resubscribed)")
    pinged = time.monotonic() - healed
    poll_for(lambda: broker_up(port, workspace.host_id) == 1, timeout=NOTICE_BOUND,
             message="the gauge back at 1")
    assert "dropping stale connection" in harness.log_tail(200_000)  # it noticed by itself

    psutil.Process(worker).send_signal(signal.SIGKILL)  # a sweep must notice and restart it
    poll_for(lambda: not alive(worker),
             timeout=10, message="the killed worker to go")
    harness.client_app().send_task(SWEEP_TASK)
    restarted = poll_for(lambda: [p for p in workspace.running() if p != worker], timeout=30,
                         interval=0.2, message="the sweep after healing to restart the worker")
    assert len(restarted) == 1
    assert harness.worker.poll() is None
    print(f"\nblack hole: gauge 0 after {noticed:.1f} s; healed: request answered after "
          f"{answered:.1f} s, ping after {pinged:.1f} s")
