"""`workerguard up`: embedded Redis + guard worker + beat; Ctrl-C leaves managed workers running."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from celery import Celery

from tests.support import (
    SLEEPER,
    LineReader,
    ProcessTracker,
    alive,
    as_at_a_terminal,
    cli_env,
    poll_for,
    run_cli,
    short_tmpdir,
    to_toml,
)
from workerguard.config import load_config
from workerguard.workers.host import HostProcesses

pytestmark = pytest.mark.celery


@pytest.fixture
def home() -> Iterator[Path]:
    path = short_tmpdir("wgu-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_up_keeps_the_demo_alive_and_ctrl_c_stops_only_itself(home: Path,
                                                              tracker: ProcessTracker):
    host = f"up{home.name[-6:]}"
    tracker.host_ids.add(host)
    config = home / "wg.toml"
    config.write_text(to_toml(
        {"host_id": host, "home": str(home), "sweep_interval": 1, "embedded_linger": 0.5},
        {"demo": {"command": [sys.executable, str(SLEEPER), "--tag", host],
                  "start_seconds": 0.3}}))
    up = tracker.popen([sys.executable, "-m", "workerguard.cli", "up", "--config", str(config)],
                       env=cli_env(), preexec_fn=as_at_a_terminal, stdout=subprocess.PIPE, text=True)
    printed = LineReader(up.stdout)
    loaded = load_config(config)
    profiles = list(loaded.profiles.values())
    settings = loaded.settings
    table = HostProcesses(host, registry_dir=settings.registry_dir, log_dir=settings.log_dir,
                          identity=settings.identity, cgroup_root=settings.cgroup_root)

    def managed() -> list[int]:
        return [i.pid for i in table.discover(profiles, profiles).instances["demo"]]

    [worker] = poll_for(managed, timeout=60, interval=0.2, message="the first sweep to start demo")
    # The URL `up` prints for callers is the one plain Celery takes as it is.
    said = printed.until(lambda line: "callers send to broker" in line, message="the broker URL")
    broker = said[-1].rsplit(" ", 1)[1]
    with Celery(broker=broker, set_as_current=False).connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
    status = run_cli("status", "--config", str(config), env=cli_env())
    assert status.stdout == f"demo: running (PIDs: {worker})\n", status.stderr
    children = [c for c in psutil.Process(up.pid).children(recursive=True) if c.pid != worker]
    for child in children:
        tracker.adopt(child.pid)
    server = next(p for p in psutil.process_iter(["cmdline"])
                  if str(home / "redis" / "redis.sock") in " ".join(p.info["cmdline"] or []))
    tracker.adopt(server.pid)
    second = run_cli("up", "--config", str(config), env=cli_env(), timeout=30)
    assert second.returncode == 2
    assert second.stderr == (f"error: another `workerguard up` (pid {up.pid}) is running with "
                             f"home {home}; stop it first, or give this one its own "
                             "WORKERGUARD_HOME and host_id\n")
    up.send_signal(signal.SIGINT)
    assert up.wait(60) == 0
    for child in children:
        poll_for(lambda child=child: not alive(child.pid),  # type: ignore[misc]
                 timeout=30, message=f"{child.pid} to exit")
    poll_for(lambda: not server.is_running(), timeout=30, message="the embedded server to stop")
    assert managed() == [worker]  # the managed worker keeps running
