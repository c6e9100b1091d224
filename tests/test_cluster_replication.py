"""FLEET check R3: a grant while replication is blocked. The guard's Redis has a replica and
the cluster profile asks for one (``replicas = 1``): every grant counts only once ``WAIT 1``
has the replica's acknowledgement. The replica is SIGSTOPped (it stays connected, so the
primary keeps taking writes, but nothing acknowledges them): every claim the guard wins is
released at once, counted as ``lease_claims_total{result="not_replicated"}``, and no
instance starts (sampled every 20 ms). SIGCONT: the next claim is acknowledged, granted,
and the instance starts: the replica was what held it back."""

from __future__ import annotations

import signal

import pytest

from tests.cluster_bed import TIMINGS, instances, sampling
from tests.conftest import CeleryHarness, Workspace
from tests.support import RedisServer, free_port, poll_for
from tests.test_metrics import reachable, value
from workerguard.store import keys


@pytest.mark.celery
def test_no_instance_starts_while_no_replica_acknowledges_the_grant(
        workspace: Workspace, harness: CeleryHarness, replica: RedisServer,
        redis_client) -> None:
    body = workspace.sleeper_profile(scope="cluster", max_workers=1)
    del body["match"]  # adopted processes cannot be leashed
    workspace.profiles["demo"] = body
    workspace.cluster = {**TIMINGS, "replicas": 1, "wait_timeout": 0.3}
    port = free_port()
    mine = {"host": workspace.host_id, "profile": "demo"}

    def refused() -> float:
        samples = reachable(port)
        found = None if samples is None else value(
            samples, "workerguard_lease_claims_total", **mine, result="not_replicated")
        return 0.0 if found is None or found != found else found  # NaN: not yet counted

    replica.process.send_signal(signal.SIGSTOP)  # connected, but acknowledges nothing
    with sampling(workspace.token).running() as sampler:
        harness.start_worker(WORKERGUARD_METRICS_PORT=str(port))
        poll_for(lambda: refused() >= 3, timeout=60,
                 message=f"three claims refused as not replicated\n{harness.log_tail(4000)}")
        # released at once: between two claims (each holds it for WAIT's 0.3 s) it is free
        poll_for(lambda: not redis_client.exists(keys.cluster_slot("demo", 0)), timeout=10,
                 interval=0.01, message="the unreplicated grant to be released")
        samples = reachable(port)
        assert samples is not None and value(samples, "workerguard_leases_held", **mine) == 0
        assert sampler.most == 0, "an instance started on a grant no replica acknowledged"
        assert "claim refused: not_replicated" in harness.log_tail(100_000)
        replica.process.send_signal(signal.SIGCONT)
        [running] = poll_for(lambda: instances(workspace.token), timeout=60,
                             message="the instance, once the replica acknowledges")
        samples = reachable(port)
        assert samples is not None
        assert value(samples, "workerguard_lease_claims_total", **mine, result="won") == 1
        assert running.token > 0
        # the sampler reads every 20 ms: the instance found above may be newer than its last read
        poll_for(lambda: sampler.most >= 1, timeout=10, message="the sampler to see the instance")
    assert sampler.most == 1
