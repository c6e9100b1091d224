"""Simulated hosts on one machine (../shared/FLEET.md §5.5): the fleet the ``fleet`` checks
run on.

Each host is a network namespace on a bridge (``Network`` of tests/netns_bed.py: veth pairs,
per-run names), a cgroup of its own (``<cgroup2>/<prefix>/h<N>``) and a PID namespace
whose PID 1 is a shell loop that never exits (a PID 1 that exits takes the namespace with
it, leash and worker included). Inside runs the real ``workerguard worker`` with the
host's own ``host_id``, ``home``, ``runtime_dir`` and ``cgroup_root``
(``<host group>/workers``). Redis runs in this (the root) namespace, bound to the
bridge's address, so a partition of a host cuts it off from Redis as a real network would.

Faults: ``crash`` (``cgroup.kill`` of the host's group: everything of the host dies at
once), ``isolate``/``heal`` (an nft black hole in the host's namespace),
``link_down``/``link_up`` (the host's veth, root side), ``guard_kill`` (SIGKILL of the
guard worker), ``guard_stop``/``guard_cont`` (SIGSTOP/SIGCONT of it) and
``freeze``/``thaw`` (``cgroup.freeze`` of the host's group: the whole host paused, as a
VM is). ``boot`` starts a crashed host
again (same id, home and runtime dir).

Clocks (check F7): ``redis_clock`` runs the redis-server under libfaketime (``FAKETIME``,
e.g. ``"+0 x2"``: its clock, and so its key expiries, twice as fast); ``host_clocks`` gives
a host's guard, leashes and workers one clock of their own (``HostClock``: the wall clock
offset or slowed by libfaketime, the monotonic clocks slowed by tests/fleet/clockshim.c).
The monitor turns the times a host writes (lease files, leash markers) back into real
``CLOCK_BOOTTIME`` with ``Host.real``.

The profile ``demo`` has ``max_workers`` slots (1 unless told; ``max_per_host`` 1;
``guarantee`` at_most unless told) and
its command is tests/fleet/writer.py: each instance writes its fencing token to the
fenced store (tests/fleet/fenced_store.py) every 50 ms.

Teardown (``close``, in a ``finally`` of the fixture): every host group killed
(``cgroup.kill``) and removed, Redis ended by its PID, the namespaces (their veths go
with them) and the bridge deleted by name.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

from tests import netns_bed
from tests.fleet.fenced_store import FencedStore
from tests.netns_bed import Network
from tests.sentinel_bed import libfaketime
from tests.support import (
    ProcessTracker,
    cli_env,
    free_port,
    poll_for,
    run_cli,
    short_tmpdir,
    to_toml,
)
from workerguard.ops.embedded import redis_server_binary
from workerguard.store import keys
from workerguard.workers.cgroups import cgroup2_mount

PROFILE = "demo"
TIMINGS = {"lease_seconds": 3.0, "renew_deadline": 2.0, "renew_period": 0.5,
           "kill_budget": 0.5, "clock_drift": 0.01, "claim_stagger": 0.15, "fence_grace": 0.5}
"""The test timings of FLEET §6 (inequality I holds with a margin of 0.455 s)."""
L, D, P, K = (TIMINGS[k] for k in ("lease_seconds", "renew_deadline", "renew_period", "kill_budget"))
STOP_TIMEOUT = 3.0
"""The bed profile's ``stop_timeout``: seconds from the stop signal to SIGKILL."""
GUARD_MODULE = "workerguard.cli"
INIT_LOOP = 'exec >>"$0" 2>&1; "$@" & while :; do sleep 1; done'
"""PID 1 of a host: the guard in the background, then a loop that never ends."""


def missing() -> str | None:
    """Why the bed cannot run here, or None."""
    why = netns_bed.missing()
    if why is not None:
        return why
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux)"
    mount = cgroup2_mount()
    if mount is None:
        return "needs a cgroup2 mount"
    if not os.access(mount / "cgroup.procs", os.W_OK):
        return f"needs a writable cgroup2 ({mount})"
    if not (mount / "cgroup.procs").exists() or not _has_kill(mount):
        return "needs cgroup.kill (Linux 5.14 or later)"
    return None


def _has_kill(mount: Path) -> bool:
    probe = mount / f"wgprobe{secrets.token_hex(3)}"
    try:
        probe.mkdir()
    except OSError:
        return False
    try:
        return (probe / "cgroup.kill").exists()
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


CLOCK_SHIM = Path(__file__).with_name("clockshim.c")


def clock_missing() -> str | None:
    """Why the bed cannot fake clocks here (check F7), or None."""
    if libfaketime() is None:
        return "needs libfaketime (Debian: apt install faketime)"
    if shutil.which("cc") is None:
        return "needs a C compiler (cc) for tests/fleet/clockshim.c"
    return None


def _parse_faketime(spec: str) -> tuple[float, float]:
    """(offset seconds, rate) of a relative ``FAKETIME`` such as ``+1h`` or ``+0 x0.99``."""
    offset, *rest = spec.split()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    scale = units.get(offset[-1], 1)
    value = float(offset.rstrip("smhd")) * scale
    rate = next((float(r[1:]) for r in rest if r.startswith("x")), 1.0)
    return value, rate


@dataclass(frozen=True)
class HostClock:
    """The clock of a simulated host (check F7), for its guard and everything the guard
    starts: libfaketime fakes the wall clock (``FAKETIME``: an offset, a rate) and, at
    the same rate, the relative timeouts of sleeps and polls; tests/fleet/clockshim.c fakes
    ``CLOCK_MONOTONIC`` and ``CLOCK_BOOTTIME`` at that rate from ``anchor``, so all the
    host's processes read one clock, as on a machine whose oscillator runs at ``rate``.
    (libfaketime 0.9.10 alone bases every clock it fakes on the wall clock, and leaves
    ``sem_clockwait`` alone: Python's timed waits under it never end.) The kernel's process
    start times (``/proc``) stay real: a host at a rate r reads its processes' ages short
    by (1 - r) of the time since ``anchor``."""

    spec: str
    anchor: float
    """Real ``CLOCK_BOOTTIME`` where the host's monotonic clocks equal the real ones."""
    env: Mapping[str, str]

    @property
    def offset(self) -> float:
        return _parse_faketime(self.spec)[0]

    @property
    def rate(self) -> float:
        return _parse_faketime(self.spec)[1]

    def real(self, seconds: float) -> float:
        """A ``CLOCK_BOOTTIME`` reading of the host, as real ``CLOCK_BOOTTIME``."""
        return self.anchor + (seconds - self.anchor) / self.rate


@dataclass
class Host:
    index: int
    host_id: str
    home: Path
    group: Path
    """The host's own cgroup: everything the host runs is in it or below it."""
    config: Path
    unshare: subprocess.Popen[Any] | None = None
    clock: HostClock | None = None

    def real(self, seconds: float) -> float:
        """A ``CLOCK_BOOTTIME`` time the host wrote (a deadline, a marker), as real
        ``CLOCK_BOOTTIME`` (the monitor's clock)."""
        return seconds if self.clock is None else self.clock.real(seconds)

    @property
    def workers(self) -> Path:
        """``cgroup_root`` of the host's guard: instance groups go below it."""
        return self.group / "workers"

    @property
    def runtime_dir(self) -> Path:
        return self.home / "run"

    @property
    def lease_file(self) -> Path:
        return self.runtime_dir / "leases" / self.host_id / f"{PROFILE}.0.lease"

    @property
    def log(self) -> Path:
        return self.home / "guard.log"

    def procs(self) -> list[int]:
        """Pids (this namespace's) of the processes in the host's own group (not below)."""
        with contextlib.suppress(OSError):
            return [int(p) for p in (self.group / "cgroup.procs").read_text().split()]
        return []

    def guard_pids(self) -> list[int]:
        """The guard worker's processes (its main process and any pool children)."""
        found = []
        for pid in self.procs():
            with contextlib.suppress(psutil.Error):
                cmdline = psutil.Process(pid).cmdline()
                # as started, or once Celery set its title (not PID 1's sh, nor nsenter)
                if cmdline[1:4] == ["-m", GUARD_MODULE, "worker"] \
                        or f"workerguard@{self.host_id}:" in " ".join(cmdline[:2]):
                    found.append(pid)
        return found

    def log_tail(self, size: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else ""


@dataclass
class Fleet:
    """The bed: ``hosts`` simulated hosts and one Redis. ``start`` / ``close``."""

    hosts_count: int = 3
    max_workers: int = 1
    guarantee: str = "at_most"
    redis_clock: str | None = None
    """``FAKETIME`` of the redis-server (libfaketime), e.g. ``"+0 x2"``; None: real."""
    host_clocks: tuple[str | None, ...] = ()
    """``FAKETIME`` of each host by index (``HostClock``); None or missing: real."""
    timings: Mapping[str, float] = field(default_factory=dict)
    """``[cluster]`` keys that replace those of ``TIMINGS``."""
    tracker: ProcessTracker = field(default_factory=ProcessTracker)
    network: Network = field(init=False)
    directory: Path = field(default_factory=lambda: short_tmpdir("wg-fleet-"))
    password: str = field(default_factory=lambda: secrets.token_hex(12))
    port: int = field(default_factory=free_port)
    hosts: list[Host] = field(default_factory=list)
    redis_process: subprocess.Popen[Any] | None = None
    store: FencedStore | None = None
    _store_file: Path | None = None
    _root: Path | None = None
    _shared_clock: str | None = None
    """libfaketime's ``FAKETIME_SHARED`` of every faked process of the bed (its semaphore
    and shared memory, removed by ``close``)."""

    def __post_init__(self) -> None:
        self.network = Network(self.hosts_count)

    @property
    def prefix(self) -> str:
        return self.network.prefix

    @property
    def url(self) -> str:
        """The Redis URL the hosts use (the bridge's address)."""
        return f"redis://:{self.password}@{self.network.gateway}:{self.port}/0"

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(host=self.network.gateway, port=self.port, password=self.password,
                           **options)

    # setup ---------------------------------------------------------------------------
    def start(self) -> Fleet:
        try:
            self.network.start()
            if self.redis_clock is not None or any(self.host_clocks):
                self._share_clock()
            self._start_redis()
            self.store = FencedStore(self.client(socket_timeout=5), PROFILE, self.prefix)
            self._store_file = self.store.install(self.directory, self.network.gateway,
                                                  self.port, self.password)
            mount = cgroup2_mount()
            assert mount is not None
            self._root = mount / self.prefix
            self._root.mkdir()
            for index in range(self.hosts_count):
                self.hosts.append(self._make_host(index))
            for host in self.hosts:
                self.boot(host)
            for host in self.hosts:
                self.wait_live(host)
        except BaseException:
            self.close()
            raise
        return self

    def _share_clock(self) -> None:
        """Build the clock shim and create libfaketime's shared state: a process started
        under libfaketime without ``FAKETIME_SHARED`` creates its own and removes it only
        when it exits cleanly (a killed guard or leash would leave it in /dev/shm)."""
        why = clock_missing()
        assert why is None, why
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(self.directory / "clockshim.so"),
                        str(CLOCK_SHIM), "-ldl"], check=True, timeout=120)
        made = subprocess.run(["sh", "-c", 'printf %s "$FAKETIME_SHARED"; kill -KILL $$'],
                              env={**os.environ, "LD_PRELOAD": str(libfaketime()),
                                   "FAKETIME": "+0"},
                              capture_output=True, text=True, timeout=30)
        assert len(made.stdout.split()) == 2, f"libfaketime made no shared state: {made}"
        self._shared_clock = made.stdout

    def _faked_env(self, spec: str) -> dict[str, str]:
        assert self._shared_clock is not None
        return {"LD_PRELOAD": str(libfaketime()), "FAKETIME": spec,
                "FAKETIME_SHARED": self._shared_clock}

    def _host_clock(self, index: int) -> HostClock | None:
        spec = self.host_clocks[index] if index < len(self.host_clocks) else None
        if spec is None:
            return None
        anchor = boottime()
        env = {**self._faked_env(spec), "FAKETIME_DONT_FAKE_MONOTONIC": "1",
               "LD_PRELOAD": f"{self.directory / 'clockshim.so'} {libfaketime()}",
               "WGFLEET_CLOCK_ANCHOR": repr(anchor)}
        return HostClock(spec, anchor, env)

    def _start_redis(self) -> None:
        data = self.directory / "redis"
        data.mkdir()
        env = None if self.redis_clock is None \
            else {**os.environ, **self._faked_env(self.redis_clock)}
        self.redis_process = self.tracker.popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", self.network.gateway,
             "--requirepass", self.password, "--save", "", "--appendonly", "no",
             "--dir", str(data)], env=env)
        client = self.client(socket_timeout=1)

        def answers() -> bool:
            assert self.redis_process is not None and self.redis_process.poll() is None, \
                "redis-server exited at start"
            with contextlib.suppress(redis.exceptions.ConnectionError):
                return bool(client.ping())
            return False

        try:
            poll_for(answers, 10, message="the bed's redis-server to answer PING")
        finally:
            client.close()

    def _make_host(self, index: int) -> Host:
        assert self._root is not None
        host_id = f"{self.prefix}-h{index}"
        home = self.directory / f"h{index}"
        home.mkdir()
        group = self._root / f"h{index}"
        group.mkdir()
        guard = {"redis_url": self.url, "host_id": host_id, "home": str(home),
                 "runtime_dir": str(home / "run"), "cgroup_root": str(group / "workers"),
                 "lock_expire": 2, "lock_timeout": 20, "sweep_on_start": False,
                 "sweep_timer": False}
        assert self.store is not None and self._store_file is not None
        profile: dict[str, Any] = {
            "command": self.store.command(self._store_file), "start_seconds": 0.5,
            "stop_timeout": STOP_TIMEOUT, "scope": "cluster", "max_workers": self.max_workers,
            "max_per_host": 1, "guarantee": self.guarantee}
        clock = self._host_clock(index)
        if clock is not None:  # the leash and its worker: on the host's clock too
            profile["env"] = dict(clock.env)
        config = home / "workerguard.toml"
        config.write_text(to_toml(guard, {PROFILE: profile}, {**TIMINGS, **self.timings}))
        return Host(index, host_id, home, group, config, clock=clock)

    def _guard_argv(self, host: Host) -> list[str]:
        clock = [] if host.clock is None \
            else ["env", *(f"{k}={v}" for k, v in host.clock.env.items())]
        return [*clock, sys.executable, "-m", GUARD_MODULE, "worker", "--config",
                str(host.config), "--loglevel", "INFO"]

    def _env(self, host: Host) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WORKERGUARD_")}
        env["PYTHONPATH"] = os.environ.get("PYTHONPATH", str(Path(__file__).parents[2]))
        return env

    def boot(self, host: Host) -> None:
        """Start the host: join its group, its network namespace, a new PID namespace whose
        PID 1 runs the guard and then loops forever."""
        ns = self.network.namespace(host.index)
        argv = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(host.group / "cgroup.procs"),
                "nsenter", f"--net=/run/netns/{ns}", "unshare", "--pid", "--fork",
                "--mount-proc", "sh", "-c", INIT_LOOP, str(host.log), *self._guard_argv(host)]
        host.unshare = self.tracker.popen(argv, env=self._env(host), start_new_session=True)

    def wait_live(self, host: Host, timeout: float = 90) -> None:
        """Until the host's guard has published its host record (its cluster loop runs and
        reaches Redis)."""
        client = self.client(socket_timeout=2)
        since = time.time()
        try:
            def published() -> bool:
                seen = client.zscore(keys.HOSTS, host.host_id)
                return seen is not None and seen / 1000 >= since
            poll_for(published, timeout, interval=0.1,
                     message=f"{host.host_id}'s guard to publish its record\n{host.log_tail()}")
        finally:
            client.close()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``workerguard ARGS`` from the root namespace, on the first host's config (the
        fleet commands talk to Redis only: any machine that reaches it can run them)."""
        return run_cli(*args, "--config", str(self.hosts[0].config), env=cli_env())

    # faults --------------------------------------------------------------------------
    def crash(self, host: Host) -> None:
        """Everything of the host dies at once (its PID 1 too): a power cut."""
        (host.group / "cgroup.kill").write_text("1")
        poll_for(lambda: not _populated(host.group), 30, message=f"{host.host_id} to die")
        if host.unshare is not None:
            host.unshare.wait(30)

    def isolate(self, host: Host) -> None:
        self.network.isolate(host.index)

    def heal(self, host: Host) -> None:
        self.network.heal(host.index)

    def link_down(self, host: Host) -> None:
        subprocess.run(["ip", "link", "set", self._veth(host), "down"], check=True, timeout=30)

    def link_up(self, host: Host) -> None:
        subprocess.run(["ip", "link", "set", self._veth(host), "up"], check=True, timeout=30)

    def freeze(self, host: Host) -> None:
        """The whole host paused (guard, leashes, instances): until every task is frozen."""
        (host.group / "cgroup.freeze").write_text("1")
        poll_for(lambda: _frozen(host.group), 30, message=f"{host.host_id} to freeze")

    def thaw(self, host: Host) -> None:
        (host.group / "cgroup.freeze").write_text("0")

    def _veth(self, host: Host) -> str:
        return f"{self.prefix}-v{host.index}"

    def guard_signal(self, host: Host, signum: signal.Signals) -> list[int]:
        pids = host.guard_pids()
        assert pids, f"{host.host_id} has no guard to signal"
        for pid in pids:
            os.kill(pid, signum)
        return pids

    def start_guard(self, host: Host) -> None:
        """A new guard on a host that still runs (its PID 1, leashes, instances): in its
        group and namespaces, as a service manager would restart it."""
        assert host.unshare is not None
        [init] = psutil.Process(host.unshare.pid).children()
        argv = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(host.group / "cgroup.procs"),
                "nsenter", "-t", str(init.pid), "--pid", "--mount", "--net",
                "sh", "-c", 'exec >>"$0" 2>&1; exec "$@"', str(host.log), *self._guard_argv(host)]
        self.tracker.popen(argv, env=self._env(host), start_new_session=True)
        self.wait_live(host)

    def restart(self, host: Host) -> None:
        """A crashed (or guard-less) host comes back: what is left of it is killed, then
        it boots with the same id, home and runtime dir."""
        if _populated(host.group):
            self.crash(host)
        self.boot(host)
        self.wait_live(host)

    # teardown ------------------------------------------------------------------------
    def close(self) -> None:
        try:
            if self.store is not None:
                self.store.client.close()
            for host in self.hosts:
                with contextlib.suppress(OSError):  # a frozen host is killed once thawed
                    (host.group / "cgroup.freeze").write_text("0")
                _kill_group(host.group)
            if self._root is not None and self._root.exists():
                _remove_tree(self._root)
            self.tracker.end_all()
        finally:
            self.network.close()
            shutil.rmtree(self.directory, ignore_errors=True)
            if self._shared_clock is not None:
                semaphore, memory = self._shared_clock.split()
                for name in (f"sem.{semaphore.lstrip('/')}", memory.lstrip("/")):
                    with contextlib.suppress(OSError):
                        (Path("/dev/shm") / name).unlink()


def _populated(group: Path) -> bool:
    try:
        return "populated 1" in (group / "cgroup.events").read_text()
    except OSError:
        return False


def _frozen(group: Path) -> bool:
    try:
        return "frozen 1" in (group / "cgroup.events").read_text()
    except OSError:
        return False


def _kill_group(group: Path) -> None:
    if not group.exists():
        return
    with contextlib.suppress(OSError):
        (group / "cgroup.kill").write_text("1")
    with contextlib.suppress(AssertionError):
        poll_for(lambda: not _populated(group), 30, message=f"{group} to empty")


def _remove_tree(root: Path) -> None:
    """rmdir every group below ``root``, deepest first, then ``root``."""
    for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda w: -w[0].count("/")):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)
