"""Row "coldstart": many profiles on a host where nothing runs yet; the guard starts.

Every profile wants one instance (``min_workers = 1``, ``start_seconds`` 1 s, the default);
nothing of them runs. The guard worker (a real ``workerguard worker``, its startup sweep
on) is started, and the row measures how long until every instance runs:

- *ready*: the worker's own "ready." log line (Celery's ``worker_ready``, when the
  startup sweep is sent), against the start of its process (start ticks, ``/proc``);
- *spawned*: the start of the last instance process (its start ticks: exact to a clock
  tick, with no polling that would compete with the guard for the 2 cores);
- *started*: the last ``started`` entry of the action log, written by each converge
  once its instance passed its start window (the guard counts it as running).

Beside it, supervisord (if installed, the ``bench`` extra) with the same programs
(``autostart``, ``startsecs`` = ``start_seconds``), from its process start until each
program is RUNNING.
"""

from __future__ import annotations

import datetime
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from benchmarks.baselines import installed
from benchmarks.harness import Bench, bench, poll_for
from benchmarks.rows import Row, log
from tests.support import cli_env
from workerguard.workers.identity import started_epoch, stat

START_SECONDS = 1.0
"""The profiles' ``start_seconds`` (workerguard's default); the goal is this + 2 s."""
GOAL_MARGIN = 2.0
_READY = re.compile(rb"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/MainProcess\] \S+ ready\.$",
                    re.MULTILINE)


def profiles_for(quick: bool) -> int:
    return 20 if quick else 100


def coldstart_row(quick: bool) -> Row:
    n = profiles_for(quick)
    with bench(quick) as b:
        wg = _workerguard(b, n)
        baseline = _supervisord(b, n) if installed("supervisord") else "supervisord: not installed"
    goal = START_SECONDS + GOAL_MARGIN
    return Row(
        f"cold start: {n} profiles (min_workers = 1, start_seconds = {START_SECONDS:g} s), "
        "nothing running; the guard worker starts -> every instance running"
        + (" (--quick: scaled down from 100)" if quick else ""),
        baseline,
        f"all {n} `started` (through their start window) {wg['started']:.2f} s after the guard "
        f"was ready ({wg['started'] + wg['ready']:.2f} s after its process started; ready: "
        f"{wg['ready']:.2f} s); every instance process existed {wg['spawned']:.2f} s after ready",
        f"<= start_seconds + {GOAL_MARGIN:g} s = {goal:g} s after ready", wg["started"] <= goal)


def _workerguard(b: Bench, n: int) -> dict[str, float]:
    profiles = {f"c{i:03d}": b.profile(i, start_seconds=START_SECONDS) for i in range(n)}
    path = b.write_config("coldstart", profiles, sweep_on_start=True)
    worker = b.launch_worker(path, loglevel="INFO")
    began = _started_epoch(worker.pid)
    client = b.client()

    def all_started() -> float:
        """When the last profile's first ``started`` was recorded (0.0: not all yet)."""
        entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(  # type: ignore[assignment]
            "workerguard:events")
        times: dict[bytes, float] = {}
        for _, event in entries:
            if event[b"host"] == b.host_id.encode() and event[b"action"] == b"started":
                times.setdefault(event[b"profile"], float(event[b"time"]))
        assert worker.poll() is None, b.worker_log()
        return max(times.values()) if len(times) == n else 0.0

    started = poll_for(all_started, 120, interval=0.05, message=f"{n} instances to start")
    ready = _ready_at(b.root / "guard-worker.log")
    spawned = max(_instance_starts([b.worker_argv(i) for i in range(n)]))
    log(f"coldstart: ready {ready - began:.2f} s after the process started; all spawned "
        f"{spawned - ready:.2f} s, all started {started - ready:.2f} s after ready")
    return {"ready": ready - began, "spawned": spawned - ready, "started": started - ready}


def _ready_at(log_file: Path) -> float:
    """The wall-clock time of the worker's "ready." line (Celery logs local time)."""
    found = _READY.search(log_file.read_bytes())
    assert found is not None, f"no 'ready.' line in {log_file}"
    local = datetime.datetime.strptime(found.group(1).decode(), "%Y-%m-%d %H:%M:%S,%f")
    return local.timestamp()


def _supervisord(b: Bench, n: int) -> str:
    """supervisord with the same ``n`` programs: from its start until all are RUNNING."""
    import xmlrpc.client
    from importlib.metadata import version

    from supervisor.xmlrpc import SupervisorTransport

    home = b.root / "supervisord"
    home.mkdir()
    sock = home / "s.sock"
    programs = "".join(
        f"[program:p{i:03d}]\ncommand={shlex.join(b.worker_argv(500 + i)).replace('%', '%%')}\n"
        f"autostart=true\nautorestart=true\nstartsecs={START_SECONDS:g}\nstopwaitsecs=5\n"
        "stdout_logfile=NONE\nredirect_stderr=true\n" for i in range(n))
    conf = home / "supervisord.conf"
    conf.write_text(
        f"[unix_http_server]\nfile={sock}\n"
        f"[supervisord]\nnodaemon=true\nlogfile={home / 'supervisord.log'}\n"
        f"pidfile={home / 'supervisord.pid'}\nchildlogdir={home}\nloglevel=warn\n"
        f"user={psutil.Process().username()}\n"
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
        + programs)
    with (home / "stdout.log").open("ab") as out:
        main = b.tracker.popen([sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)],
                               stdout=out, stderr=out, env=cli_env())
    began = _started_epoch(main.pid)
    def rpc() -> Any:  # a new proxy each time: one that failed cannot send again
        return xmlrpc.client.ServerProxy(
            "http://127.0.0.1", transport=SupervisorTransport(None, None, f"unix://{sock}"))

    def all_running() -> float:
        """Now, once every program is RUNNING (0.0: not yet)."""
        assert main.poll() is None, (home / "stdout.log").read_text()[-2000:]
        try:
            infos = rpc().supervisor.getAllProcessInfo()
        except OSError:
            return 0.0
        return time.time() if sum(i["statename"] == "RUNNING" for i in infos) == n else 0.0

    try:
        running = poll_for(all_running, 120, interval=0.05, message="supervisord's programs")
        spawned = max(_instance_starts([b.worker_argv(500 + i) for i in range(n)]))
    finally:
        try:
            rpc().supervisor.shutdown()
            main.wait(60)
        except (OSError, subprocess.TimeoutExpired):
            pass  # killed by PID with the rest
    return (f"supervisord {version('supervisor')} (startsecs = {START_SECONDS:g}): all {n} RUNNING "
            f"{running - began:.2f} s after its process started; every process existed "
            f"{spawned - began:.2f} s after it started")


def _started_epoch(pid: int) -> float:
    found = stat(pid)
    if found is None:
        raise ProcessLookupError(pid)
    return started_epoch(found.start)


def _instance_starts(argvs: Sequence[list[str]]) -> list[float]:
    """When each process running one of ``argvs`` started (epoch seconds, start ticks)."""
    wanted = {b"\0".join(arg.encode() for arg in argv) + b"\0" for argv in argvs}
    starts = []
    for pid in psutil.pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if fh.read() not in wanted:
                    continue
            starts.append(_started_epoch(pid))
        except OSError:
            continue
    assert len(starts) == len(argvs), f"{len(starts)} of {len(argvs)} processes found"
    return starts
