"""A cluster instance rides through Redis Sentinel failovers (FLEET check R1): the Sentinel
bed (tests/sentinel_bed.py: a primary, two replicas, three Sentinels, down-after 1000 ms,
``min-replicas-to-write 1``), a real guard worker with a cluster profile whose grants and
renewals wait for one replica (``replicas = 1``), FLEET's timings L 6 s, D 4 s, P 0.5 s,
and the primary SIGKILLed 10 times. In every round where Redis took writes again in time
for a renewal to land before the renew deadline (``RIDES_THROUGH``: inequality III,
F + P < D, held), the instance keeps running (same pid, same token, never fenced); in
every round, never more than one instance runs (sampled every 20 ms) and a new grant
has a greater token.

Why not every round: on this 2-core bed Redis now and then takes writes again only 3.8 s
after the kill (2 of 30 rounds in three runs), past what D allows; and when each kill
followed the previous round within a second, a Sentinel once failed over again a primary
it had promoted a second earlier (``+sdown`` 1.03 s after its ``+switch-master``: it must
have the new primary's first PONG within down-after, 1000 ms) and the next primary
refused writes (NOREPLICAS) for 11 s, until a Sentinel fixed the config of the replica
restarted meanwhile (4 of 4 runs had such a round). No renewal can then be acknowledged
before D: the lease runs out and the guard fences its instance, as it must. Such a round
is counted and printed; it must still never show two instances, and the next instance
must have a greater token. Each round now waits until Redis has taken writes for D + K
(which also lets a fence the round caused show) before the next kill.

Meanwhile (FLEET check R5) four callers send ensures of the cluster profile through the
broker and result backend on ``sentinel://`` and wait for each answer: every request ends
``SUCCESS``, ``FAILURE`` or ``REVOKED`` (none stays ``PENDING`` past its ``expires``), and
the guard answers a ping within 10 s of Redis taking writes again (``PING_MARGIN``)."""

from __future__ import annotations

import math
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

ROUNDS = 10
TIMINGS = {"lease_seconds": 6.0, "renew_deadline": 4.0, "renew_period": 0.5,
           "kill_budget": 0.5, "clock_drift": 0.01, "claim_stagger": 0.15, "fence_grace": 0.5,
           "replicas": 1, "wait_timeout": 0.3}


CALLERS = 4
RIDES_THROUGH = (TIMINGS["renew_deadline"] - 2 * TIMINGS["renew_period"]
                 - TIMINGS["wait_timeout"])
"""A round whose Redis took writes again within this many seconds of the kill must keep
the instance: the last acknowledged renewal was sent at most P before the kill, so its
deadline is at least kill + D - P, and a renewal begun at most P after writes resume is
acknowledged (``WAIT``, at most ``wait_timeout``) before it. 2.7 s here; the Sentinels
agreed and Redis took writes 0.9-2.8 s after a kill in 40 kills of the bed alone, and
1.97-3.81 s after it in 30 rounds of this test."""
MOST_ROUNDS_TOO_SLOW = ROUNDS // 2
"""A run where Redis came back too late for the check in more rounds than this checked
too little, and fails saying so."""


@CALLERS_LEAK_A_SOCKET
@pytest.mark.celery
@pytest.mark.slow
@pytest.mark.timeout(ROUNDS * 40)  # 87-142 s measured; a fenced round adds the hold-off
def test_a_cluster_instance_rides_through_a_primary_kill(workspace: Workspace,
                                                              harness: CeleryHarness,
                                                              bed: SentinelBed):
    body = workspace.sleeper_profile(scope="cluster", max_workers=1)
    del body["match"]  # adopted processes cannot be leashed
    workspace.profiles["demo"] = body
    workspace.cluster = dict(TIMINGS)
    workspace.guard_settings["lock_timeout"] = 8  # a shorter visibility_timeout
    app = harness.client_app()
    rounds: list[tuple[float, float, float, str]] = []
    tokens = []
    with sampling(workspace.token).running() as sampler, WriteProbe(bed) as probe:
        harness.start_worker()
        [held] = poll_for(lambda: instances(workspace.token), timeout=60,
                          message="the cluster instance (after the first hold-off)")
        tokens.append(held.token)
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
                bed.restart_as_replica(port)
                # a fence this round's outage causes comes at most D + K after the last
                # refused write (the Sentinels may fail over again meanwhile: module doc)
                poll_for(lambda k=killed: time.monotonic() - probe.refused_until(k, math.inf)  # type: ignore[misc]
                         >= TIMINGS["renew_deadline"] + TIMINGS["kill_budget"] + 0.5,
                         timeout=120, message=f"round {number}: Redis to take writes for D + K")
                writable = max(agreed, probe.refused_until(killed, math.inf) - killed)
                [now] = poll_for(lambda: instances(workspace.token), timeout=60,
                                 message=f"round {number}: the instance")
                kept = (now.pid, now.token) == (held.pid, held.token)
                rounds.append((agreed, writable, ping, "kept" if kept else "replaced"))
                if writable <= RIDES_THROUGH:
                    assert kept, (f"round {number}: the instance was fenced or replaced though "
                                  f"Redis took writes {writable:.2f} s after the kill\n"
                                  f"{harness.log_tail(8000)}")
                if not kept:
                    assert now.token > held.token, (held, now)
                    tokens.append(now.token)
                held = now
        finally:
            senders.finish()
    states = all_final(workspace, harness, app, senders.requests)
    checked = [r for r in rounds if r[1] <= RIDES_THROUGH]
    print(f"\nR1/R5: {ROUNDS} primary kills (L {TIMINGS['lease_seconds']:g} s, "
          f"D {TIMINGS['renew_deadline']:g} s, P {TIMINGS['renew_period']:g} s): Sentinels "
          "agreed, Redis took writes, guard answered a ping after, instance: "
          + "; ".join(f"{a:.2f}, {w:.2f}, {p:.2f} s, {k}" for a, w, p, k in rounds)
          + f"; writes back within {RIDES_THROUGH:.1f} s in {len(checked)} rounds, all kept; "
          f"tokens {tokens}; at most {sampler.most} running in {sampler.samples} samples; "
          f"{len(senders.requests)} requests: {states}; answers {senders.answers}")
    for _agreed, writable, ping, _kept in rounds:
        assert ping <= writable + PING_MARGIN, (writable, ping)
    assert sampler.most == 1
    assert len(rounds) - len(checked) <= MOST_ROUNDS_TOO_SLOW, \
        f"Redis took writes too late for the check in most rounds: {rounds}"
