"""Fixtures: one real redis-server per test session, a unique host id per test, cleanup by PID."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, overload

import pytest
import redis

from tests.support import (
    SLEEPER,
    ProcessTracker,
    RedisServer,
    poll_for,
    redis_in_tmpdir,
    short_tmpdir,
    to_toml,
)
from workerguard.config import Config, Settings, load_config
from workerguard.policy.guard import Guard
from workerguard.workers.host import HostProcesses

TableT = TypeVar("TableT", bound=HostProcesses)


@dataclass
class Workspace:
    """One test's world: its own host id (so its processes are recognisably its own),
    home directory, config file and Redis database."""

    redis_url: str
    home: Path
    tracker: ProcessTracker
    host_id: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")
    guard_settings: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    cluster: dict[str, Any] = field(default_factory=dict)
    """The ``[cluster]`` table (lease timings), if any."""

    def __post_init__(self) -> None:
        self.tracker.host_ids.add(self.host_id)

    @property
    def token(self) -> str:
        return self.host_id

    def sleeper_profile(self, *extra_args: str, **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "command": [sys.executable, str(SLEEPER), "--tag", self.token, *extra_args],
            "match": rf"sleeper\.py --tag {self.token}(\s|$)",
            "start_seconds": 0.3,
            "stop_timeout": 3,
        }
        if "--exit-code" in extra_args:
            # A worker that fails at once must have the time to fail on a loaded machine
            # (a Python start can take longer than 0.3 s there); the window ends as soon as
            # it exits, so a long one costs nothing.
            body["start_seconds"] = 10.0
        body.update(overrides)
        return body

    def add_profile(self, name: str = "demo", *extra_args: str, **overrides: Any) -> str:
        self.profiles[name] = self.sleeper_profile(*extra_args, **overrides)
        return name

    @property
    def config_path(self) -> Path:
        return self.home / "workerguard.toml"

    def write_config(self) -> Path:
        guard = {"redis_url": self.redis_url, "host_id": self.host_id, "home": str(self.home),
                 "lock_expire": 2, "lock_timeout": 20,
                 # A guard under test acts only when asked, unless a test says otherwise.
                 "sweep_on_start": False, "sweep_timer": False, **self.guard_settings}
        self.config_path.write_text(to_toml(guard, self.profiles, self.cluster))
        return self.config_path

    def config(self) -> Config:
        return load_config(self.write_config(), environ={})

    def remove(self) -> None:
        """Remove what the test left on disk: the home and this host id's fence files."""
        shutil.rmtree(self.home, ignore_errors=True)
        for fence in Settings().fence_dir.glob(f"{self.host_id}.*.lock"):
            fence.unlink(missing_ok=True)

    def guard(self, client: redis.Redis, table: HostProcesses | None = None) -> Guard:
        return Guard(client, self.config(), table=table)

    @overload
    def table(self) -> HostProcesses: ...
    @overload
    def table(self, cls: type[TableT]) -> TableT: ...
    def table(self, cls: type[HostProcesses] = HostProcesses) -> HostProcesses:
        """The process table a guard of this workspace uses (``cls``: a test's subclass)."""
        settings = self.config().settings
        return cls(self.host_id, registry_dir=settings.registry_dir, log_dir=settings.log_dir,
                   identity=settings.identity, cgroup_root=settings.cgroup_root)

    def running(self, profile: str = "demo") -> list[int]:
        """Pids of ``profile``'s instances as the process table shows them (no Redis involved)."""
        config = self.config()
        found = self.table().discover([config.profile(profile)], config.profiles.values())
        return [i.pid for i in found.instances[profile]]

    def hand_started(self, *extra_args: str) -> Any:
        """A worker started by hand, outside workerguard (found through ``match``)."""
        return self.tracker.sleeper("--tag", self.token, *extra_args)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with redis_in_tmpdir("wg-redis-") as server:
        yield server


@pytest.fixture
def own_redis(workspace: Workspace) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which the test may stop and start again
    (``restart_redis``); the workspace's config points at it."""
    with redis_in_tmpdir("wg-own-") as server:
        workspace.redis_url = server.url
        yield server


@pytest.fixture
def replica(redis_server: RedisServer) -> Iterator[RedisServer]:
    """A replica of the test's Redis, in sync (``WAIT 1`` answers 1) when yielded."""
    with redis_in_tmpdir("wg-replica-", extra=["--replicaof", "127.0.0.1",
                                               str(redis_server.port)]) as server:
        primary = redis_server.client()
        try:
            def synced() -> bool:
                primary.set("wg-replica-probe", "1")
                return int(primary.wait(1, 200)) == 1
            poll_for(synced, 30, message="the replica to acknowledge a write")
            primary.delete("wg-replica-probe")
            yield server
        finally:
            primary.close()
            server.process.send_signal(signal.SIGCONT)  # stopped by the test, maybe


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def tracker() -> Iterator[ProcessTracker]:
    tracker = ProcessTracker()
    yield tracker
    tracker.end_all()


IDENTITY = os.environ.get("WORKERGUARD_TEST_IDENTITY", "auto")
"""Run the suite in the fallback mode with WORKERGUARD_TEST_IDENTITY=registry."""


@pytest.fixture
def workspace(redis_server: RedisServer, redis_client: redis.Redis,
              tracker: ProcessTracker) -> Iterator[Workspace]:
    home = short_tmpdir()
    workspace = Workspace(redis_url=redis_server.url, home=home, tracker=tracker,
                          guard_settings={"identity": IDENTITY})
    yield workspace
    workspace.remove()


@dataclass
class CeleryHarness:
    """A real guard worker (and optionally beat) as subprocesses, plus a client app."""

    workspace: Workspace
    app: Any = None
    worker: Any = None
    beats: list[Any] = field(default_factory=list)
    watchers: list[Any] = field(default_factory=list)

    def watch_events(self) -> Any:
        """Capture the guard's Celery events from now on (``support.TaskEvents``)."""
        from tests.support import TaskEvents

        self.watchers.append(TaskEvents(self.client_app()))
        return self.watchers[-1]

    def client_app(self) -> Any:
        if self.app is None:
            from workerguard.tasks.app import make_app

            self.app = make_app(self.workspace.config(), self.workspace.redis_url)
        return self.app

    @property
    def node(self) -> str:
        return f"workerguard@{self.workspace.host_id}"

    @property
    def queue(self) -> str:
        return f"workerguard.{self.workspace.host_id}"

    def start_worker(self, *extra: str, entry: Sequence[str] = ("-m", "workerguard.cli"),
                     enter: Sequence[str] = (), **env: str) -> Any:
        """Start the guard worker (``env``: extra variables, e.g. WORKERGUARD_METRICS_PORT;
        ``entry``: what runs the CLI, e.g. a failpoint wrapper such as tests/no_pidfd.py;
        ``enter``: an argv prefix that execs it elsewhere, e.g. ``nsenter`` into a box of
        tests/netns_bed.py, keeping its pid)."""
        from tests.support import cli_env, poll_for

        config = str(self.workspace.write_config())
        log = (self.workspace.home / "guard-worker.log").open("ab")
        self.worker = self.workspace.tracker.popen(
            [*enter, sys.executable, *entry, "worker", "--config", config,
             "--loglevel", "INFO", *extra], stdout=log, stderr=log, env=cli_env(**env))
        log.close()
        app = self.client_app()
        poll_for(lambda: self._answers_ping(app), timeout=60, interval=0.2,
                 message=f"guard worker {self.node} to answer ping")
        return self.worker

    def _answers_ping(self, app: Any) -> bool:
        assert self.worker.poll() is None, self.log_tail()
        try:
            return bool(app.control.ping(destination=[self.node], timeout=0.5))
        except redis.exceptions.ConnectionError:  # a Redis failing over closed it: ask again
            return False

    def start_beat(self) -> Any:
        from tests.support import cli_env

        config = str(self.workspace.write_config())
        log = (self.workspace.home / f"beat{len(self.beats)}.log").open("ab")
        home = self.workspace.home / f"beat{len(self.beats)}"
        env = cli_env(WORKERGUARD_HOME=str(home))  # each beat its own schedule file
        beat = self.workspace.tracker.popen(
            [sys.executable, "-m", "workerguard.cli", "beat", "--config", config],
            stdout=log, stderr=log, env=env)
        log.close()
        self.beats.append(beat)
        return beat

    def log_tail(self, size: int = 3000) -> str:
        path = self.workspace.home / "guard-worker.log"
        return path.read_text()[-size:] if path.exists() else ""

    def call(self, task: str, *args: Any, timeout: float = 60, **kwargs: Any) -> Any:
        request = self.client_app().send_task(task, args=list(args), kwargs=kwargs,
                                              queue=self.queue, expires=120)
        request.get(timeout=timeout, propagate=False)
        return request

    def close(self) -> None:
        for watcher in self.watchers:
            watcher.close()
        if self.app is not None:
            self.app.close()


@pytest.fixture
def harness(workspace: Workspace) -> Iterator[CeleryHarness]:
    harness = CeleryHarness(workspace)
    yield harness
    harness.close()


@pytest.fixture
def fleet(redis_server: RedisServer, redis_client: redis.Redis,
          tracker: ProcessTracker) -> Iterator[list[CeleryHarness]]:
    """Two hosts sharing one Redis and the cluster profile ``demo`` of ``max_workers = 1``
    (``tests.cluster_bed.two_hosts``)."""
    from tests.cluster_bed import two_hosts

    with two_hosts(redis_server, tracker) as harnesses:
        yield harnesses
