"""The systems of the restart and idle rows, each keeping the same worker alive: the
common ``System``, and workerguard's (``baselines.py`` has supervisord and circusd).

supervisord (``autorestart``), circusd (``respawn``) and workerguard (a real guard
worker and beat on the run's throw-away redis-server) run the same program,
``tests/sleeper.py``, each with a command line of its own (``--tag`` names the system
and the run). A process is an instance of a system when its ``/proc/PID/cmdline`` is
exactly that command line: it exists from its ``exec`` on, whoever forked it.

Each system gets a temporary directory (config, sockets, logs), is stopped through its
own control interface (XML-RPC ``supervisor.shutdown``; circus ``quit``; workerguard
``stop_all``, then SIGTERM to the guard worker and beat) and whatever is left is
killed by PID: the processes started here and every instance seen or found by its
command line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil

from benchmarks.harness import Bench
from tests.support import SLEEPER, ProcessTracker, cli_env, poll_for, to_toml

Worker = Callable[[Path], list[str]]
"""The worker's command line, given the system's own directory (default: ``sleeper.py``)."""

GUARD_WORKER = "guard worker"
"""The label of the guard worker's own group in ``Guarded.counted`` (beat is another)."""
START_SECONDS = 1
"""The start window (supervisord's ``startsecs``, workerguard's ``start_seconds``):
an instance counts as started once it has stayed up this long."""


def read_cmdline(pid: int | str) -> bytes | None:
    """``/proc/PID/cmdline`` (empty for a zombie), or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read()
    except OSError:
        return None


class Cmdline:
    """The processes whose command line is exactly ``argv``."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.raw = b"".join(os.fsencode(arg) + b"\0" for arg in argv)

    def pids(self) -> list[int]:
        return sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and read_cmdline(p) == self.raw)

    def first_new(self, before: frozenset[str], timeout: float, interval: float) -> tuple[int, float]:
        """Poll ``/proc`` every ``interval`` s for a process that was not in ``before``
        and runs ``argv``; return its pid and ``perf_counter()`` when it was seen."""
        deadline = time.perf_counter() + timeout
        while True:
            for entry in os.listdir("/proc"):
                if entry.isdigit() and entry not in before and read_cmdline(entry) == self.raw:
                    return int(entry), time.perf_counter()
            if time.perf_counter() > deadline:
                raise AssertionError(f"no new {self.argv} within {timeout} s")
            time.sleep(interval)


@dataclass(frozen=True)
class Counted:
    """Processes whose idle cost is reported together (e.g. "guard worker + beat")."""

    label: str
    processes: list[psutil.Process]
    main: bool = True
    """Part of the system's own cost (False: reported beside it, e.g. the broker)."""


class System(ABC):
    """One supervisor keeping ``instances`` copies of the worker alive."""

    name: str
    """Short name for the table (``supervisord``)."""

    def __init__(self, root: Path, tag: str, worker: Worker | None = None) -> None:
        self.dir = root / self.name
        self.dir.mkdir(parents=True)
        self.procs = Cmdline(worker(self.dir) if worker is not None
                             else [sys.executable, str(SLEEPER), "--tag", f"{tag}-{self.name}"])
        self.tracker = ProcessTracker()
        self.seen: set[int] = set()

    @property
    @abstractmethod
    def label(self) -> str:
        """Name and version, for the table."""

    @abstractmethod
    def start(self, instances: int) -> None:
        """Start the system with one instance; ``instances``: the most it will be scaled to."""

    @abstractmethod
    def confirmed(self, pid: int) -> bool:
        """The system itself counts ``pid`` as a running instance (its start is over)."""

    @abstractmethod
    def scale(self, instances: int) -> None:
        """Run ``instances`` instances (from one); return once the system counts them all."""

    @abstractmethod
    def counted(self) -> list[Counted]:
        """The processes whose idle cost is measured (never the instances)."""

    @abstractmethod
    def shutdown(self) -> None:
        """Stop the system and its instances through the system's own control interface."""

    def instances(self) -> list[int]:
        pids = self.procs.pids()
        self.seen.update(pids)
        return pids

    def wait_instances(self, count: int, timeout: float = 60) -> list[int]:
        def counted() -> list[int]:
            pids = self.instances()
            return pids if len(pids) == count else []

        return poll_for(counted, timeout, message=f"{count} instance(s) of {self.name}")

    def close(self) -> None:
        """Shut down through the control interface; then kill leftovers by PID."""
        try:
            self.shutdown()
        finally:
            leftovers = []
            for pid in self.seen | set(self.procs.pids()):
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc = psutil.Process(pid)
                    if read_cmdline(pid) == self.procs.raw:
                        proc.kill()
                        leftovers.append(proc)
            psutil.wait_procs(leftovers, timeout=10)
            self.tracker.end_all()

    def _popen(self, argv: list[str], log: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        with (self.dir / log).open("ab") as out:
            return self.tracker.popen(argv, stdout=out, stderr=subprocess.STDOUT, **kwargs)

    def _tree(self, proc: psutil.Process) -> list[psutil.Process]:
        """``proc`` and its descendants, except the instances (and their children)."""
        found = [proc]
        for child in proc.children():
            with contextlib.suppress(psutil.NoSuchProcess):
                if read_cmdline(child.pid) != self.procs.raw:
                    found += self._tree(child)
        return found


# workerguard -----------------------------------------------------------------------------
class Guarded(System):
    """A real guard worker (``workerguard worker``: threads pool, 4 threads, task events)
    and ``workerguard beat`` (sweeps every 30 s, the default), on the bench's Redis; one
    profile, ``worker``; ``scale`` rewrites its ``min_workers``/``max_workers`` and sends
    ``workerguard.reload``. Identity mode ``auto`` (a cgroup per instance where writable).
    ``profile``: more fields of the profile (a probe, say), over the defaults here."""

    name = "workerguard"

    def __init__(self, root: Path, tag: str, bench: Bench, worker: Worker | None = None,
                 profile: Mapping[str, Any] | None = None) -> None:
        super().__init__(root, tag, worker)
        self.bench = bench
        self.extra = dict(profile or {})
        self.tracker = bench.tracker
        self.beat: subprocess.Popen[bytes] | None = None

    @property
    def label(self) -> str:
        return f"workerguard {version('workerguard')}"

    def _write_config(self, instances: int) -> Path:
        path = self.dir / "workerguard.toml"
        profile = {"command": self.procs.argv, "min_workers": instances, "max_workers": instances,
                   "start_seconds": START_SECONDS, "stop_timeout": 5, **self.extra}
        path.write_text(to_toml({"redis_url": self.bench.url, "host_id": self.bench.host_id,
                                 "home": str(self.dir / "home"), "sweep_on_start": False},
                                {"worker": profile}))
        return path

    def start(self, instances: int) -> None:
        config = self._write_config(1)
        self.bench.start_worker(config)
        self.beat = self._popen([sys.executable, "-m", "workerguard.cli", "beat", "--config", str(config),
                                 "--loglevel", "WARNING"], "beat.log", env=cli_env())
        self.client = self.bench.client()
        result = self.bench.call("workerguard.ensure", "worker")
        assert result["action"] == "started", result
        self.instances()

    def confirmed(self, pid: int) -> bool:
        """Its start is over: a ``started`` event names it."""
        events: list[tuple[bytes, dict[bytes, bytes]]] = self.client.xrevrange(  # type: ignore[assignment]
            "workerguard:events", count=50)
        for _, event in events:
            if event[b"action"] == b"started" and str(pid).encode() in event[b"pids"].split(b","):
                return True
        return False

    def recorded(self, action: str, pids: Sequence[int]) -> float | None:
        """When the guard recorded ``action`` naming exactly ``pids`` in the action log
        (``exited`` [pid], ``replaced`` [old, new] ...; wall clock), or None."""
        wanted = ",".join(map(str, pids)).encode()
        events: list[tuple[bytes, dict[bytes, bytes]]] = self.client.xrevrange(  # type: ignore[assignment]
            "workerguard:events", count=50)
        for _, event in events:
            if event[b"action"] == action.encode() and event[b"pids"] == wanted:
                return float(event[b"time"])
        return None

    def scale(self, instances: int) -> None:
        self._write_config(instances)
        assert self.bench.call("workerguard.reload")["action"] == "reloaded"
        self.wait_instances(instances)
        poll_for(lambda: len(self.bench.call("workerguard.ensure", "worker")["running"]) == instances,
                 30, message="workerguard's instances")

    def counted(self) -> list[Counted]:
        worker = self.bench.worker_process
        assert worker is not None and self.beat is not None and self.bench.server is not None
        return [Counted(GUARD_WORKER, self._tree(psutil.Process(worker.pid))),
                Counted("beat", self._tree(psutil.Process(self.beat.pid))),
                Counted("redis-server", [psutil.Process(self.bench.server.process.pid)], main=False)]

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):  # not answering: the leftovers are killed by PID
            self.bench.call("workerguard.stop_all", "worker", timeout=30)
        for proc in (self.beat, self.bench.worker_process):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(30)
