"""A holder cut off together with the Redis primary (FLEET check R2): the boxed Sentinel bed
(tests/sentinel_bed.py with tests/netns_bed.py: three boxes, each one Redis and one
Sentinel, ``min-replicas-to-write 1``), a cluster profile of ``max_workers = 1`` whose
grants and renewals wait for one replica (``replicas = 1``), and two real guard workers:
A inside the primary's box (started through ``nsenter``), which holds the slot, and B
outside all boxes.

Each round cuts the primary's box off (nft black hole): the primary, its Sentinel and
holder A with its leash and instance, together. A's renewals reach only the isolated
primary, which cannot collect ``WAIT 1`` (and refuses writes after
``min-replicas-max-lag``), so no renewal is acknowledged after the cut. What must hold:

* A's instance is gone within D + K of A's last acknowledged renewal (the send time of the
  renewal that set the deadline in the leash's marker, ``<lease file>.fenced``), which came
  before the cut;
* B claims only after the hold-off: its grant's fencing token is the new primary's ``TIME``
  at the claim (``max(last + 1, TIME µs)``: the ``TIME`` floor wins after a failover), at
  least H = L + 1 s after the fleet's epoch names the new primary (``workerguard:epoch``,
  ``since_ms`` is that primary's ``TIME`` when the first guard saw it: the hold-off starts
  there);
* never two instances (a sampler every 20 ms; and A's was gone before B's was seen);
* B's instance runs within F + H + P + 1 s of the cut, F being the time from the cut until
  the fleet saw the new primary (the epoch's ``since_ms``: the Sentinels' agreement plus
  the writes the new primary refuses until a replica follows it, ``min-replicas-to-write``);
* after the heal the old primary is demoted and the instance B started keeps running (same
  pid and token), nothing else starts.

Between rounds the slot is handed back into the current primary's box: a new guard A
starts there, B is drained until A holds the slot, then undrained.

B's instance is started by a ``workerguard.heal`` the cluster loop sends to B's own queue
after the win, so B's Celery consumer must be consuming again by then; its connection to
the old primary is a black hole. The Redis watch shuts such connections down only after
its own reading of the old primary timed out (5 s, then its 2 s interval: 8.5 s after the
cut), and B's instance then ran 12.2 and 13.1 s after the cut (bounds 11.6 and 11.5 s);
the cluster loop now shuts them down as soon as its renewal round finds the new primary
(``ops/cluster_loop.py``, ~3 s after the cut).

Timings: L 6 s, D 4 s, P 0.5 s, K 0.5 s (inequality I: 1.01 x (4 / 0.99 + 0.5) = 4.58 s < 6,
a margin of 1.4 s), H = 7 s; FLEET's estimate F + H + P + 1 = 2.2 + 7 + 0.5 + 1 ~ 11 s.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import test_sentinel
from tests.cluster_bed import Instance, instances, sampling
from tests.conftest import CeleryHarness, Workspace
from tests.fleet.rounds import rounds
from tests.sentinel_bed import SentinelBed
from tests.support import alive, poll_for, short_tmpdir
from workerguard.config import Settings
from workerguard.store import keys
from workerguard.store.host_records import HostRecords
from workerguard.timing import HOLDOFF_EXTRA
from workerguard.workers.leashed import lease_dir, lease_file

boxed_bed = test_sentinel.boxed_bed
"""The Sentinel bed in three boxes, with the workspace (guard B's) pointed at it."""

ROUNDS = rounds(3)
"""3 rounds in CI, ~40 s each (the heal alone waits ~10 s for the old primary's demotion, and
~10 s more for every Sentinel to read it as a replica: ``SentinelBed._ready``); FLEET's 10
(6.5 minutes on the 2-core machine) with ``WORKERGUARD_FLEET_ROUNDS=10``, the soak of
docs/fleet.md."""
TIMINGS = {"lease_seconds": 6.0, "renew_deadline": 4.0, "renew_period": 0.5,
           "kill_budget": 0.5, "clock_drift": 0.01, "claim_stagger": 0.15, "fence_grace": 0.5,
           "replicas": 1, "wait_timeout": 0.3}
L, D, P, K = (TIMINGS[k] for k in ("lease_seconds", "renew_deadline", "renew_period",
                                    "kill_budget"))
H = L + HOLDOFF_EXTRA


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass
class Round:
    agreed: float
    """Seconds from the cut until every reachable Sentinel named the new primary."""
    seen: float
    """Seconds from the cut until the fleet's epoch named it (F: the hold-off starts)."""
    last_ack: float
    """A's last acknowledged renewal, seconds after the cut (negative: before it)."""
    gone: float
    """Seconds from A's last acknowledged renewal until A's instance was gone."""
    graceful: bool
    claimed: float
    """Seconds from the epoch's change until B's claim (its token's TIME)."""
    running: float
    """Seconds from the cut until B's instance was seen running."""
    demoted: float

    def line(self) -> str:
        return (f"agreed {self.agreed:.2f}, seen {self.seen:.2f}, last ack {self.last_ack:+.2f}, "
                f"fenced {self.gone:.2f} after it ({'graceful' if self.graceful else 'killed'}), "
                f"claim {self.claimed:.2f} after the epoch, running {self.running:.2f} "
                f"(bound {self.seen + H + P + 1:.2f}), demoted {self.demoted:.2f} after the heal")


class Side:
    """One guard of the test: its workspace and harness."""

    def __init__(self, like: Workspace, body: dict[str, object]) -> None:
        self.workspace = Workspace(redis_url=like.redis_url, home=short_tmpdir(),
                                   tracker=like.tracker, guard_settings=dict(like.guard_settings))
        self.workspace.profiles["demo"] = dict(body)
        self.workspace.cluster = dict(TIMINGS)
        self.harness = CeleryHarness(self.workspace)

    @property
    def host(self) -> str:
        return self.workspace.host_id

    def lease_file(self) -> Path:
        settings = self.workspace.config().settings
        return lease_file(lease_dir(settings.runtime_dir, self.host), "demo", 0)

    def stop(self) -> None:
        """End this guard worker (by its pid) and what it left."""
        worker = self.harness.worker
        if worker is not None and worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(30)
            except Exception:
                worker.kill()
                worker.wait(10)
        self.harness.close()

    def remove(self) -> None:
        shutil.rmtree(lease_dir(Settings().runtime_dir, self.host), ignore_errors=True)
        self.workspace.remove()


def held_by(tag: str, host: str) -> Instance | None:
    found = instances(tag)
    mine = [i for i in found if i.host == host]
    return mine[0] if len(found) == 1 and mine else None


def epoch(bed: SentinelBed, port: int) -> tuple[int, str] | None:
    """The fleet's epoch on the node at ``port``: (since_ms, identity), or None."""
    client = bed.client(port)
    try:
        raw = client.get(keys.EPOCH)
    finally:
        client.close()
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    since, _, identity = text.partition("|")
    return int(since), identity


def the_primary(bed: SentinelBed) -> int:
    port = poll_for(bed.primary, timeout=30, message="the Sentinels to agree on a primary")
    assert port is not None
    return port


def wait_held(tag: str, host: str, message: str, timeout: float = 60) -> Instance:
    found = poll_for(lambda: held_by(tag, host), timeout=timeout, interval=0.02,
                     message=message)
    assert found is not None
    return found


def start_in_primary_box(bed: SentinelBed, like: Workspace, body: dict[str, object]) -> Side:
    port = the_primary(bed)
    assert bed.network is not None
    side = Side(like, body)
    side.harness.start_worker(enter=bed.network.enter(bed.boxes[port]))
    return side


def hand_over(bed: SentinelBed, tag: str, to: Side, holder: str) -> Instance:
    """Drain ``holder`` until ``to`` holds the slot; undrain it."""
    client = bed.client(the_primary(bed))
    try:
        records = HostRecords(client)
        records.set_draining(holder, True)
        try:
            found = wait_held(tag, to.host, f"{to.host} in the primary's box to take the slot")
        finally:
            records.set_draining(holder, False)
    finally:
        client.close()
    return found


def one_round(bed: SentinelBed, tag: str, a: Side, b: Side, number: int) -> Round:
    old = held_by(tag, a.host)
    assert old is not None, f"round {number}: A does not hold the slot: {instances(tag)}"
    primary = the_primary(bed)
    before = epoch(bed, primary)
    assert before is not None
    port, _ = bed.isolate_primary()
    cut_boot, cut_wall = boottime(), time.time()
    assert port == primary
    new = bed.wait_failover(port)
    agreed = time.time() - cut_wall
    poll_for(lambda: not alive(old.pid), timeout=D + K + 10, interval=0.01,
             message=f"round {number}: A's instance to be fenced")
    gone_boot = boottime()
    marker = a.lease_file().with_name(a.lease_file().name + ".fenced")
    fenced = json.loads(poll_for(lambda: marker.read_text() if marker.exists() else "",
                                 timeout=10, message="the leash's marker"))
    last_ack = fenced["deadline"] - D
    found = wait_held(tag, b.host, f"round {number}: B's instance")
    running = time.time() - cut_wall
    after = poll_for(lambda: (e := epoch(bed, new)) is not None and e[1] != before[1] and e,
                     timeout=10, message="the epoch to name the new primary")
    assert after
    since, _identity = after
    assert found.token > old.token
    figures = Round(agreed=agreed, seen=since / 1000 - cut_wall, last_ack=last_ack - cut_boot,
                    gone=gone_boot - last_ack, graceful=bool(fenced["graceful"]),
                    claimed=found.token / 1e6 - since / 1000, running=running, demoted=0.0)
    figures.demoted = bed.heal(port)
    # after the heal: the old primary is a replica again (bed.heal waited for it), A starts
    # nothing, B's instance keeps running
    time.sleep(4 * P)
    assert instances(tag) == [found], f"round {number}: after the heal: {instances(tag)}"
    return figures


def check(number: int, figures: Round) -> None:
    assert figures.last_ack < 0, f"round {number}: a renewal acknowledged after the cut"
    assert figures.gone <= D + K, f"round {number}: A fenced {figures.gone:.2f} s after its " \
                                  f"last acknowledged renewal (D + K = {D + K})"
    assert figures.seen > 0
    assert figures.claimed >= H, f"round {number}: B claimed {figures.claimed:.2f} s into " \
                                 f"the hold-off of {H} s"
    bound = figures.seen + H + P + 1
    assert figures.running <= bound, f"round {number}: B's instance after {figures.running:.2f}" \
                                     f" s (F + H + P + 1 = {bound:.2f})"


@pytest.mark.celery
@pytest.mark.slow
@pytest.mark.timeout(ROUNDS * 60)  # ~30 s a round
def test_a_holder_cut_off_with_the_primary_is_fenced_before_the_slot_moves(
        workspace: Workspace, boxed_bed: SentinelBed):
    bed = boxed_bed
    tag = workspace.token
    body = workspace.sleeper_profile(scope="cluster", max_workers=1)
    del body["match"]  # adopted processes cannot be leashed
    b = Side(workspace, body)
    sides = [b]
    rounds: list[Round] = []
    try:
        with sampling(tag).running() as sampler:
            a = start_in_primary_box(bed, workspace, body)
            sides.append(a)
            wait_held(tag, a.host, "A's instance (after the first hold-off)")
            b.harness.start_worker()
            for number in range(ROUNDS):
                if number:
                    a.stop()
                    a = start_in_primary_box(bed, workspace, body)
                    sides.append(a)
                    hand_over(bed, tag, a, b.host)
                rounds.append(one_round(bed, tag, a, b, number))
                print(f"\nR2 round {number}: {rounds[-1].line()}", flush=True)
        print(f"\nR2, {len(rounds)} round(s), L {L} D {D} P {P} K {K} H {H}, seconds: "
              + "; ".join(f"[{n}] {r.line()}" for n, r in enumerate(rounds))
              + f"; most instances {sampler.most} in {sampler.samples} samples")
        for number, figures in enumerate(rounds):
            check(number, figures)
        assert sampler.most == 1, f"{sampler.most} instances of a max_workers=1 profile"
        assert sampler.samples > 100
    except AssertionError:
        for side in sides:
            lines = [line[:300] for line in side.harness.log_tail(2_000_000).splitlines()
                     if line.startswith("[")]
            print(f"\nguard {side.host}'s log:\n" + "\n".join(lines[-150:]))
        raise
    finally:
        for side in sides:
            side.stop()
        workspace.tracker.end_all()
        for side in sides:
            side.remove()
