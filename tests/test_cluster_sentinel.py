"""A cluster instance rides through Redis Sentinel failovers (FLEET check R1): the Sentinel
bed (tests/sentinel_bed.py: a primary, two replicas, three Sentinels, down-after 1000 ms,
``min-replicas-to-write 1``), a real guard worker with a cluster profile whose grants and
renewals wait for one replica (``replicas = 1``), and timings where a failover fits in the
renew deadline: L 12 s, D 8 s, P 0.5 s. (A failover is agreed in ~2.2 s, but writes come
back only once a replica follows the new primary, ``min-replicas-to-write 1``: 2.2 s
usually, 14 s at worst in tests/test_sentinel.py's rounds; with D 4 s an instance was
fenced in one of two runs.) The primary is SIGKILLed: the instance keeps running (same
pid, same token, never fenced) and never more than one instance runs (sampled every
20 ms).

Meanwhile (FLEET check R5) four callers send ensures of the cluster profile through the
broker and result backend on ``sentinel://`` and wait for each answer: every request ends
``SUCCESS``, ``FAILURE`` or ``REVOKED`` (none stays ``PENDING`` past its ``expires``), and
the guard answers a ping within 10 s of Redis taking writes again (``PING_MARGIN``)."""

from __future__ import annotations

import time

import pytest

from tests import test_sentinel
from tests.cluster_bed import instances, sampling
from tests.conftest import CeleryHarness, Workspace
from tests.sentinel_bed import SentinelBed, WriteProbe
from tests.support import poll_for
from tests.test_sentinel import (
    CALLERS_LEAK_A_SOCKET,
    PING_MARGIN,
    Callers,
    all_final,
    first_answer,
)

bed = test_sentinel.bed
"""The Sentinel bed, with the workspace pointed at it."""

ROUNDS = 1
"""Back-to-back kills made the bed's Sentinels miss a promotion for 60 s once in four runs
(a Sentinel may not lead a failover of the same primary again within 2 x failover-timeout);
tests/test_sentinel.py's rounds cover repeated kills of the broker's primary."""
TIMINGS = {"lease_seconds": 12.0, "renew_deadline": 8.0, "renew_period": 0.5,
           "kill_budget": 0.5, "clock_drift": 0.01, "claim_stagger": 0.15, "fence_grace": 0.5,
           "replicas": 1, "wait_timeout": 0.3}


CALLERS = 4


@CALLERS_LEAK_A_SOCKET
@pytest.mark.celery
@pytest.mark.slow
def test_a_cluster_instance_rides_through_a_primary_kill(workspace: Workspace,
                                                              harness: CeleryHarness,
                                                              bed: SentinelBed):
    body = workspace.sleeper_profile(scope="cluster", max_workers=1)
    del body["match"]  # adopted processes cannot be leashed
    workspace.profiles["demo"] = body
    workspace.cluster = dict(TIMINGS)
    workspace.guard_settings["lock_timeout"] = 8  # a shorter visibility_timeout
    app = harness.client_app()
    rounds: list[tuple[float, float, float]] = []
    with sampling(workspace.token).running() as sampler, WriteProbe(bed) as probe:
        harness.start_worker()
        [first] = poll_for(lambda: instances(workspace.token), timeout=60,
                           message="the cluster instance (after the first hold-off)")
        senders = Callers(workspace, CALLERS).start()
        try:
            for number in range(ROUNDS):
                before = len(senders.requests)
                poll_for(lambda b=before: len(senders.requests) >= b + CALLERS,  # type: ignore[misc]
                         timeout=60, message=f"round {number}: callers to be sending")
                port, killed = bed.kill_primary()
                bed.wait_failover(port)
                agreed = time.monotonic() - killed
                ping = first_answer(harness, timeout=agreed + 90) - killed
                writable = max(agreed, probe.refused_until(killed, killed + ping) - killed)
                rounds.append((agreed, writable, ping))
                bed.restart_as_replica(port)
                [now] = poll_for(lambda: instances(workspace.token), timeout=30,
                                 message=f"round {number}: the instance")
                assert (now.pid, now.token) == (first.pid, first.token), \
                    f"round {number}: the instance was fenced or replaced\n{harness.log_tail(8000)}"
        finally:
            senders.finish()
    states = all_final(workspace, harness, app, senders.requests)
    print("\nR1/R5: Sentinels agreed, Redis took writes, guard answered a ping after "
          + "; ".join(f"{a:.2f}, {w:.2f}, {p:.2f} s" for a, w, p in rounds)
          + f"; {len(senders.requests)} requests: {states}; answers {senders.answers}")
    for _agreed, writable, ping in rounds:
        assert ping <= writable + PING_MARGIN, (writable, ping)
    assert sampler.most == 1
    log = harness.log_tail(1_000_000)
    assert "the leash fenced it" not in log and "lease lost" not in log, log[-8000:]
