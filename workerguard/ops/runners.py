"""What the long-running commands run: ``workerguard worker``, ``beat``, ``flower`` and ``up``.

The click commands are in ``cli/services.py``; this module holds no click.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

import kombu.exceptions
import redis
from celery import Celery

from workerguard.config.load import Config
from workerguard.errors import ConfigError, WorkerguardError
from workerguard.ops.connect import celery_url, redis_url
from workerguard.redact import redact_text
from workerguard.tasks import context, idle_wakeups, result_repr, sweep_logging
from workerguard.tasks.app import make_app
from workerguard.tasks.routing import (
    BROADCAST,
    DEFAULT_QUEUE,
    SWEEP_TASK,
    host_queue,
    node_name,
    to_host,
)
from workerguard.timing import UP_POLL
from workerguard.workers import cgroup_layout
from workerguard.workers.lockfile import holder_pid, opened_lock_file, record_holder, try_lock
from workerguard.workers.pdeathsig import die_with_parent
from workerguard.workers.rundir import checked_runtime_dir

if TYPE_CHECKING:
    from workerguard.ops.metrics import GuardMetrics

log = logging.getLogger("workerguard.ops.runners")


def run_worker(config: Config, pool: str, concurrency: int, loglevel: str) -> None:
    """Run the guard worker; with ``metrics_port`` set, also serve Prometheus metrics.
    Refuses (``HostError``) to start with a runtime dir that is not this user's own."""
    checked_runtime_dir(config.settings.runtime_dir)
    cgroup_layout.settle_at_start(config.settings.identity, config.settings.cgroup_root)
    metrics = start_metrics(config, pool) if config.settings.metrics_port else None
    with redis_url(config.settings) as url:
        app = make_app(config, url)
        live = context.of(app)
        live.pool = pool
        if metrics is not None:
            live.hooks.append(metrics)
        watch_redis(app)
        if config.settings.sweep_on_start:
            sweep_when_ready(app)
        if config.settings.sweep_timer:
            sweep_on_a_timer(app)
        if any(p.is_cluster for p in config.profiles.values()):
            run_the_cluster_loop(app, url)
        reload_on_sighup(app)
        sweep_logging.install()
        start_celery_worker(app, pool, concurrency, loglevel, config.settings.host_id)


def start_celery_worker(app: Celery, pool: str, concurrency: int, loglevel: str, host: str) -> None:
    """Run Celery's worker as ``celery worker`` runs it (``celery.bin.worker``:
    ``app.Worker(...).start()``), without Celery's command line: importing it loads every
    subcommand and plugin (click_repl and prompt_toolkit for ``celery shell``, Flower and
    tornado), about 13 MB of RSS and 0.2 s of start that a guard never uses
    (docs/benchmarks.md, "What an idle guard costs").

    Gossip and mingle are off (``--without-gossip --without-mingle``): gossip subscribes
    every guard to every other worker's heartbeats (a fleet of N hosts costs each guard
    N/2 messages a second, and Redis N^2/2 deliveries) to keep a list of peers nobody
    here reads; mingle asks all workers for their revoked ids and waits 1 s at each
    start, and workerguard revokes nothing (a request past its ``expires`` is refused by
    the worker that takes it, with no sync). Task events and the worker heartbeat stay on:
    Flower shows the requests from the first and a guard's online state from the second;
    each result's text for them is written by ``tasks/result_repr.py``.
    """
    idle_wakeups.install()
    result_repr.install()
    worker = app.Worker(
        hostname=node_name(host), pool_cls=pool, concurrency=concurrency, loglevel=loglevel,
        task_events=True, queues=[DEFAULT_QUEUE, host_queue(host), BROADCAST],
        without_gossip=True, without_mingle=True)
    worker.start()


def sweep_when_ready(app: Celery) -> None:
    """Sweep this host once as soon as the guard is ready, without waiting for beat.

    After a reboot or an upgrade the workers are converged at once, not one
    ``sweep_interval`` later (beat's first run of a new schedule waits an interval).

    The sweep is sent as a ``workerguard.sweep`` task (``trigger="startup"``) to this
    guard's own queue, so it runs where every request runs: in the pool, whatever the pool.
    Never in a prefork pool's main process: what spawns an instance watches and reaps it,
    and the main process forks the pool children, which would inherit its watcher and its
    children (``workers/watch.py``). It claims the host's sweep slot in any case (the next
    sweeps count from it) and shows in Flower like any sweep.
    """
    from celery.signals import worker_ready

    settings = context.of(app).config.settings

    def send() -> None:
        try:
            app.send_task(SWEEP_TASK, kwargs={"trigger": "startup"},
                          expires=settings.sweep_interval, **to_host(settings.host_id))
        except (kombu.exceptions.OperationalError, redis.exceptions.RedisError, OSError) as exc:
            log.warning("startup sweep not sent (the next beat or timer sweep heals): %s",
                        redact_text(str(exc)))

    def on_ready(**_: object) -> None:
        threading.Thread(target=send, name="startup-sweep", daemon=True).start()

    worker_ready.connect(on_ready, weak=False)


class _Background(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


def from_ready_to_shutdown(make: Callable[[], _Background]) -> None:
    """Start what ``make`` builds when the worker is ready (in the main process, whatever
    the pool) and stop it at shutdown."""
    from celery.signals import worker_ready, worker_shutdown

    running: list[_Background] = []

    def on_ready(**_: object) -> None:
        running.append(make())
        running[-1].start()

    def on_shutdown(**_: object) -> None:
        for thing in running:
            thing.stop()

    worker_ready.connect(on_ready, weak=False)
    worker_shutdown.connect(on_shutdown, weak=False)


def sweep_on_a_timer(app: Celery) -> None:
    """Run this guard's sweep timer (``tasks.sweep_timer``) from ready to shutdown: its
    host is swept every ``sweep_interval`` even where no beat runs."""
    from workerguard.store.sweep_claim import SweepClaims
    from workerguard.tasks.sweep_timer import SweepTimer

    def make() -> SweepTimer:  # no guard here: this may be a prefork main process
        live = context.of(app)
        host, interval = live.config.settings.host_id, live.config.settings.sweep_interval
        return SweepTimer(app, SweepClaims(live.client(), host), host, interval)

    from_ready_to_shutdown(make)


def run_the_cluster_loop(app: Celery, url: str) -> None:
    """Run the cluster loop (``ops.cluster_loop``) from ready to shutdown, in the main
    process whatever the pool, on a client of its own without retries
    (``ops.connect.lease_client``), which also writes its action log entries."""
    from workerguard import __version__
    from workerguard.ops.cluster_loop import ClusterLoop, heal_through
    from workerguard.ops.connect import lease_client
    from workerguard.store.events import EventLog

    def make() -> ClusterLoop:
        live = context.of(app)
        config = live.config
        settings = config.settings
        client = lease_client(url, settings, config.cluster.renew_period)
        return ClusterLoop(config, client, heal_through(app.send_task, host_queue(settings.host_id)),
                           EventLog(client, settings.host_id, settings.events_maxlen),
                           version=__version__, hooks=live.hooks)

    from_ready_to_shutdown(make)


def watch_redis(app: Celery) -> None:
    """Run the Redis watch (``ops.primary_watch``) from ready to shutdown: a new primary
    or a jump of its clock is logged, recorded and counted; the metrics learn whether
    Redis answers. It reads through a client of its own (``ops.connect.watch_client``:
    a short timeout, no retry) and records through the guard's general client."""
    from workerguard.ops.connect import watch_client
    from workerguard.ops.primary_watch import PrimaryWatch
    from workerguard.store.events import EventLog

    def make() -> PrimaryWatch:
        live = context.of(app)
        settings = live.config.settings
        return PrimaryWatch(watch_client(live.redis_url, settings), settings.host_id,
                            live.hooks, EventLog(live.client(), settings.host_id,
                                                 settings.events_maxlen))

    from_ready_to_shutdown(make)


def reload_on_sighup(app: Celery) -> None:
    """SIGHUP to the guard worker reloads its config (instead of Celery's re-exec, which a
    broken file would turn into a dead guard). Installed once the worker is ready, over
    Celery's own handler; the reload itself runs in a thread, off the signal handler."""
    if sys.platform == "win32":
        return
    from celery.signals import worker_ready

    from workerguard.tasks.reload import reload_config

    def reload() -> None:
        try:
            result = reload_config(app, "SIGHUP")
        except WorkerguardError as exc:
            log.error("SIGHUP: reload refused: %s", exc)
        else:
            log.info("SIGHUP: %s", result["message"])

    def on_sighup(signum: int, frame: object) -> None:
        threading.Thread(target=reload, name="reload", daemon=True).start()

    def on_ready(**_: object) -> None:
        signal.signal(signal.SIGHUP, on_sighup)

    worker_ready.connect(on_ready, weak=False)


def start_metrics(config: Config, pool: str) -> GuardMetrics:
    """Serve metrics from this (the main) process; refuse prefork, whose children count alone."""
    if pool == "prefork":
        raise ConfigError(
            "metrics_port is set, but --pool prefork runs tasks in child processes whose "
            "counters this process cannot serve; use --pool threads (the default) or solo, "
            "or unset WORKERGUARD_METRICS_PORT")
    try:
        from workerguard.ops.metrics import serve
    except ImportError as exc:  # prometheus-client comes with the ops extra
        raise ConfigError(f"metrics_port is set, but {exc.name or 'prometheus_client'} is not "
                          "installed: pip install 'workerguard[ops]' (or unset metrics_port)") from None
    try:
        return serve(config)
    except OSError as exc:
        raise WorkerguardError(f"cannot serve metrics on {config.settings.metrics_addr}:"
                               f"{config.settings.metrics_port}: {exc.strerror or exc}") from None


def run_beat(config: Config, loglevel: str) -> None:
    with redis_url(config.settings) as url:
        app = make_app(config, url)
        config.settings.home.mkdir(parents=True, exist_ok=True)
        app.Beat(schedule=str(config.settings.home / "beat-schedule"), loglevel=loglevel,
                 max_interval=min(5.0, config.settings.sweep_interval)).run()


FLOWER_TASK_COLUMNS = "name,uuid,state,args,kwargs,result,received,runtime,worker"
"""The task list shows what each request asked and what it did (Flower's default shows
neither); ``--tasks_columns`` given to ``workerguard flower`` wins."""


def run_flower(config: Config, address: str, port: int, flower_args: list[str]) -> int:
    """Flower on this deployment's broker, from the config (so the embedded Redis and a
    password in WORKERGUARD_REDIS_URL work, and the URL never appears on a command line).

    Authentication: ``--basic-auth=user:pass`` or ``FLOWER_BASIC_AUTH`` (or any other
    Flower option, e.g. ``--auth``/OAuth). ``/metrics`` and ``/healthcheck`` stay open
    whatever the auth: bind to loopback or put a reverse proxy in front.
    """
    try:
        import flower  # noqa: F401  (only to give a clear message when it is missing)
    except ImportError:
        raise ConfigError("workerguard flower needs Flower: pip install 'workerguard[ops]'") from None
    with redis_url(config.settings) as url:
        app = make_app(config, url)
        app.set_current()  # Flower's /api/task/result looks results up on the current app
        columns = [] if any(a.startswith(("--tasks_columns", "--tasks-columns")) for a in flower_args) \
            else [f"--tasks_columns={FLOWER_TASK_COLUMNS}"]
        code = app.start(["flower", f"--address={address}", f"--port={port}", *columns, *flower_args])
        return int(code or 0)


def run_up(config: Config, loglevel: str) -> int:
    """Run embedded Redis, the guard worker and beat until Ctrl-C or SIGTERM."""
    checked_runtime_dir(config.settings.runtime_dir)  # before anything starts
    with one_up(config):
        return _run_up(config, loglevel)


@contextlib.contextmanager
def one_up(config: Config) -> Iterator[None]:
    """One ``workerguard up`` per home: a second would share the beat schedule file and
    run a second guard under the same node name. Held by a kernel lock (no stale file)."""
    if sys.platform == "win32":
        yield
        return
    home = config.settings.home
    home.mkdir(parents=True, exist_ok=True)
    with opened_lock_file(home / "up.lock", "`workerguard up` lock") as fd:
        if not try_lock(fd):
            other = holder_pid(fd) or "?"
            raise ConfigError(f"another `workerguard up` (pid {other}) is running with home "
                              f"{home}; stop it first, or give this one its own "
                              "WORKERGUARD_HOME and host_id")
        record_holder(fd)
        yield


def _run_up(config: Config, loglevel: str) -> int:
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with redis_url(config.settings) as url:
        env = {**os.environ, "WORKERGUARD_REDIS_URL": url}
        base = [sys.executable, "-m", "workerguard.cli"]
        common = ["--config", config.source, "--loglevel", loglevel]
        # Own sessions: the terminal's Ctrl-C reaches only `up`, which stops each child
        # once (else each printed its warm shutdown twice); PDEATHSIG still ties them to us.
        children = [
            subprocess.Popen([*base, "worker", *common], env=env, start_new_session=True,
                             preexec_fn=die_with_parent),  # noqa: PLW1509 (no threads yet)
            subprocess.Popen([*base, "beat", *common], env=env, start_new_session=True,
                             preexec_fn=die_with_parent),  # noqa: PLW1509
        ]
        embedded = not config.settings.redis_url
        print(f"workerguard up: worker pid {children[0].pid}, beat pid {children[1].pid}, "
              f"redis {'embedded' if embedded else 'configured'}; "
              "Ctrl-C stops them (managed workers keep running)", flush=True)
        if embedded:  # the form a Celery caller's broker= takes as it is
            print(f"workerguard up: callers send to broker {celery_url(url)}", flush=True)
        while not stopping and all(c.poll() is None for c in children):
            time.sleep(UP_POLL)
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(max(0.1, deadline - time.monotonic()))
            if child.poll() is None:
                child.kill()
                child.wait()
    if embedded:
        print(f"workerguard up: stopped; the embedded Redis stops once unused for "
              f"{config.settings.embedded_linger:g} s", flush=True)
    return 0 if stopping else 1
