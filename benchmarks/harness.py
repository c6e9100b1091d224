"""What every benchmark row needs: a throw-away Redis, configs, a guard worker, cleanup by PID."""

from __future__ import annotations

import contextlib
import random
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

from tests.support import ProcessTracker, RedisServer, cli_env, poll_for, short_tmpdir, start_redis, to_toml
from workerguard.config import Config, Settings, load_config
from workerguard.ops.connect import redis_client
from workerguard.policy.guard import Guard

__all__ = ["Bench", "kill_and_wait", "percentile", "poll_for", "summary_ms"]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary_ms(values: Sequence[float]) -> str:
    return f"p50 {percentile(values, 50) * 1000:.2f} ms / p99 {percentile(values, 99) * 1000:.2f} ms"


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def kill_and_wait(pids: Sequence[int], timeout: float = 10.0) -> None:
    """SIGKILL each pid (only if it is still the same process) and wait until all are gone."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            proc.kill()
            procs.append(proc)

    def gone() -> bool:
        for proc in procs:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    return False
            except psutil.NoSuchProcess:
                continue
        return True

    poll_for(gone, timeout, interval=0.005, message=f"pids {list(pids)} to end")


@dataclass
class Bench:
    """One benchmark run's world: its own Redis server, host id, home and processes."""

    quick: bool
    root: Path = field(default_factory=lambda: short_tmpdir("wg-bench-"))
    tracker: ProcessTracker = field(default_factory=ProcessTracker)
    host_id: str = field(default_factory=lambda: f"b{uuid.uuid4().hex[:10]}")
    server: RedisServer | None = None
    tag: int = field(default_factory=lambda: random.randrange(100_000, 999_999))
    _clients: list[redis.Redis] = field(default_factory=list)
    _worker: subprocess.Popen[bytes] | None = None
    _app: Any = None

    def __post_init__(self) -> None:
        self.tracker.host_ids.add(self.host_id)
        self.server = start_redis(self.root)

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def worker_argv(self, n: int) -> list[str]:
        """A cheap fake worker with a command line unique to this run: ``sleep 86400.<tag><n>``."""
        return ["sleep", f"86400.{self.tag}{n:03d}"]

    def profile(self, n: int, **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"command": self.worker_argv(n), "start_seconds": 0.05,
                                "stop_timeout": 2}
        body.update(overrides)
        return body

    def write_config(self, name: str, profiles: Mapping[str, Mapping[str, Any]],
                     **guard: Any) -> Path:
        settings = {"redis_url": self.url, "host_id": self.host_id, "home": str(self.root / "home"),
                    "lock_expire": 2, "lock_timeout": 60, "sweep_on_start": False, **guard}
        path = self.root / f"{name}.toml"
        path.write_text(to_toml(settings, profiles))
        return path

    def config(self, path: Path) -> Config:
        return load_config(path, environ={})

    def client(self) -> redis.Redis:
        client = redis_client(self.url, Settings())
        self._clients.append(client)
        return client

    def guard(self, path: Path) -> Guard:
        return Guard(self.client(), self.config(path))

    # the guard worker (a real `workerguard worker` subprocess) ------------------------
    @property
    def queue(self) -> str:
        return f"workerguard.{self.host_id}"

    def launch_worker(self, config_path: Path, loglevel: str = "WARNING") -> subprocess.Popen[bytes]:
        """Start the guard worker and return at once (``start_worker`` waits for it)."""
        from workerguard.tasks.app import make_app

        with (self.root / "guard-worker.log").open("ab") as log:
            self._worker = self.tracker.popen(
                [sys.executable, "-m", "workerguard.cli", "worker", "--config", str(config_path),
                 "--loglevel", loglevel], stdout=log, stderr=log, env=cli_env())
        self._app = make_app(self.config(config_path), self.url)
        return self._worker

    def start_worker(self, config_path: Path) -> Any:
        self.launch_worker(config_path)
        node = f"workerguard@{self.host_id}"

        def answers() -> bool:
            assert self._worker is not None and self._worker.poll() is None, self.worker_log()
            return bool(self._app.control.ping(destination=[node], timeout=0.5))

        poll_for(answers, timeout=60, interval=0.2, message="guard worker to answer ping")
        return self._app

    @property
    def worker_process(self) -> subprocess.Popen[bytes] | None:
        """The guard worker started by ``start_worker``."""
        return self._worker

    def worker_log(self) -> str:
        path = self.root / "guard-worker.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def call(self, task: str, *args: Any, timeout: float = 60) -> Any:
        return self._app.send_task(task, args=list(args), queue=self.queue).get(timeout=timeout)

    def close(self) -> None:
        if self._app is not None:
            self._app.close()
        for client in self._clients:
            client.close()
        if self._worker is not None and self._worker.poll() is None:
            # First the guard: alive, it would restart the instances that end_all kills
            # (its exit watcher heals them), and those would outlive the run.
            self._worker.kill()
            self._worker.wait(30)
        self.tracker.end_all()
        if self.server is not None:
            self.server.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def bench(quick: bool) -> Iterator[Bench]:
    b = Bench(quick)
    try:
        yield b
    finally:
        b.close()


def timed(fn: Any, *args: Any) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0
