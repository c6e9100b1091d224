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
from collections.abc import Iterator
from typing import TYPE_CHECKING

from celery import Celery

from workerguard.config.load import Config
from workerguard.errors import ConfigError, WorkerguardError
from workerguard.ops.connect import celery_url, redis_url
from workerguard.tasks import context, sweep_logging
from workerguard.tasks.app import make_app
from workerguard.tasks.routing import BROADCAST, DEFAULT_QUEUE, host_queue, node_name
from workerguard.timing import UP_POLL
from workerguard.workers.lockfile import holder_pid, opened_lock_file, record_holder, try_lock
from workerguard.workers.pdeathsig import die_with_parent

if TYPE_CHECKING:
    from workerguard.ops.metrics import GuardMetrics

log = logging.getLogger("workerguard.ops.runners")


def run_worker(config: Config, pool: str, concurrency: int, loglevel: str) -> None:
    """Run the guard worker; with ``metrics_port`` set, also serve Prometheus metrics."""
    metrics = start_metrics(config, pool) if config.settings.metrics_port else None
    with redis_url(config.settings) as url:
        app = make_app(config, url)
        live = context.of(app)
        live.pool = pool
        if metrics is not None:
            live.hooks.append(metrics)
            metrics.watch_broker(url)
        if config.settings.sweep_on_start:
            sweep_when_ready(app)
        reload_on_sighup(app)
        sweep_logging.install()
        app.worker_main([
            "worker", f"--pool={pool}", f"--concurrency={concurrency}", f"--loglevel={loglevel}",
            "--hostname", node_name(config.settings.host_id), "--task-events",
            "--queues", f"{DEFAULT_QUEUE},{host_queue(config.settings.host_id)},{BROADCAST}",
        ])


def sweep_when_ready(app: Celery) -> None:
    """Sweep this host once as soon as the guard is ready, without waiting for beat.

    After a reboot or an upgrade the workers are converged at once, not one
    ``sweep_interval`` later (beat's first run of a new schedule waits an interval).
    """
    from celery.signals import worker_ready

    from workerguard.tasks.handlers import guard_for

    def sweep() -> None:
        try:
            for result in guard_for(app).sweep(requested_by="guard startup"):
                log.info("startup sweep: %s", result.message)
        except WorkerguardError as exc:
            log.warning("startup sweep failed (the next beat sweep retries): %s", exc)

    def on_ready(**_: object) -> None:
        threading.Thread(target=sweep, name="startup-sweep", daemon=True).start()

    worker_ready.connect(on_ready, weak=False)


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
    from workerguard.ops.metrics import serve

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
