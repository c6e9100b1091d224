"""The cluster test bed on one machine, shared by the tests of cluster profiles: two real
guard workers with their own host ids, homes and queues (the ``fleet`` fixture, in
conftest.py), the instances of a cluster profile found by their environment, and a
sampler of how many run at once (every 20 ms). Test timings: L 3 s, D 2 s, P 0.5 s,
K 0.5 s (inequality I holds with a margin of 0.45 s)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import redis

from tests.conftest import IDENTITY, CeleryHarness, Workspace
from tests.support import SLEEPER, MostAtOnce, ProcessTracker, RedisServer, short_tmpdir
from workerguard.store import keys

TIMINGS = {"lease_seconds": 3.0, "renew_deadline": 2.0, "renew_period": 0.5,
           "kill_budget": 0.5, "clock_drift": 0.01, "claim_stagger": 0.15, "fence_grace": 0.5}


def one_slot_space(redis_server: RedisServer, tracker: ProcessTracker,
                   renew_period: float) -> Workspace:
    """A workspace with one cluster profile ``demo`` of one slot (a sleeper found by its
    environment), for driving a ``ClusterLoop`` by hand: L 3 s, D 2 s, K 0.5 s."""
    space = Workspace(redis_url=redis_server.url, home=short_tmpdir(), tracker=tracker)
    body = space.sleeper_profile(scope="cluster", max_workers=1)
    del body["match"]
    space.profiles["demo"] = body
    space.cluster = {"lease_seconds": 3.0, "renew_deadline": 2.0, "renew_period": renew_period,
                     "kill_budget": 0.5}
    return space


def no_holdoff(client: redis.Redis) -> None:
    """Write the epoch of this Redis's identity as an old one: claims are allowed at once."""
    identity = f"{client.info('server')['run_id']}:{client.info('replication')['master_replid']}"
    client.set(keys.EPOCH, f"0|{identity}")


@dataclass
class Instance:
    pid: int
    token: int
    host: str
    argv: tuple[str, ...] = ()
    slot: int = -1


def instances(tag: str) -> list[Instance]:
    """The profile's running workers on this machine (not their leashes), with the token
    and host their environment names."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline[1:2] != [str(SLEEPER)] or tag not in cmdline \
                or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        with contextlib.suppress(psutil.Error):
            env = proc.environ()
            if not env:  # exiting (a fence, a kill): its memory is gone, /proc reads empty
                continue
            found.append(Instance(proc.pid, int(env["WORKERGUARD_FENCING_TOKEN"]),
                                  env["WORKERGUARD_HOST_ID"], tuple(cmdline),
                                  int(env.get("WORKERGUARD_SLOT", -1))))
    return found


def sampling(tag: str) -> MostAtOnce:
    """The most instances of the cluster profile seen at once (every 20 ms, while running)."""
    return MostAtOnce(lambda: len(instances(tag)))


@contextlib.contextmanager
def two_hosts(redis_server: RedisServer, tracker: ProcessTracker,
              **profile: object) -> Iterator[list[CeleryHarness]]:
    """Two hosts: each a workspace (host id, home, config) and a guard worker harness,
    with the same cluster profile ``demo`` (``max_workers = 1`` unless ``profile`` says
    otherwise) and timings. ``fleet[0].tag`` finds the instances."""
    spaces = [Workspace(redis_url=redis_server.url, home=short_tmpdir(), tracker=tracker,
                        guard_settings={"identity": IDENTITY}) for _ in range(2)]
    tag = spaces[0].token
    body = spaces[0].sleeper_profile(**{"scope": "cluster", "max_workers": 1, **profile})
    del body["match"]  # adopted processes cannot be leashed
    for space in spaces:
        space.profiles["demo"] = dict(body)
        space.cluster = dict(TIMINGS)
    harnesses = [CeleryHarness(space) for space in spaces]
    harnesses[0].tag = tag  # type: ignore[attr-defined]
    try:
        yield harnesses
    finally:
        for harness in harnesses:
            harness.close()
        for space in spaces:
            shutil.rmtree(space.home, ignore_errors=True)
