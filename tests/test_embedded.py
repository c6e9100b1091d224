"""The embedded redis-server: started on demand, shared, never orphaned."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from tests.support import (
    ProcessTracker,
    alive,
    cli_env,
    poll_for,
    run_cli,
    short_tmpdir,
    to_toml,
)

HOLD = """
import sys, time
from pathlib import Path
from workerguard.ops.embedded import embedded_redis
with embedded_redis(Path(sys.argv[1]), linger=float(sys.argv[2])) as url:
    print(url, flush=True)
    time.sleep(600)
"""


@pytest.fixture
def home() -> Iterator[Path]:
    path = short_tmpdir("wge-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def server_pid(home: Path) -> int:
    client = redis.Redis(unix_socket_path=str(home / "redis" / "redis.sock"))
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def supervisor_of(pid: int) -> psutil.Process:
    parent = psutil.Process(pid).parent()
    assert parent is not None
    return parent


def hold(tracker: ProcessTracker, home: Path, linger: float) -> subprocess.Popen[str]:
    proc = tracker.popen([sys.executable, "-c", HOLD, str(home), str(linger)],
                         stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("unix://")
    pid = server_pid(home)
    tracker.adopt(pid)
    tracker.adopt(supervisor_of(pid).pid)
    return proc


def test_local_commands_run_on_the_embedded_server_and_share_it(home: Path, tracker):
    token = f"emb{home.name[-6:]}"
    config = home / "wg.toml"
    sleeper = str(Path(__file__).parent / "sleeper.py")
    config.write_text(to_toml(
        {"host_id": token, "home": str(home), "embedded_linger": 30},
        {"demo": {"command": [sys.executable, sleeper, "--tag", token], "start_seconds": 0.3}}))
    tracker.host_ids.add(token)
    first = run_cli("ensure", "demo", "--local", "--json", "--config", str(config), env=cli_env())
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["action"] == "started"
    pid = server_pid(home)
    tracker.adopt(pid)
    tracker.adopt(supervisor_of(pid).pid)
    stop = run_cli("stop", "demo", "--local", "--config", str(config), env=cli_env())
    assert stop.returncode == 0
    assert server_pid(home) == pid  # reused, not restarted
    status = run_cli("status", "--local", "--config", str(config), env=cli_env())
    assert status.stdout == "demo: paused (PIDs: -)\n"  # state lives in the server
    assert oct((home / "redis").stat().st_mode & 0o777) == "0o700"


def test_the_server_outlives_a_crashed_starter_only_while_others_use_it(home: Path, tracker):
    starter = hold(tracker, home, linger=0.2)
    pid = server_pid(home)
    second = hold(tracker, home, linger=0.2)
    assert server_pid(home) == pid
    starter.send_signal(signal.SIGKILL)
    starter.wait(5)
    assert psutil.pid_exists(pid) and server_pid(home) == pid  # still in use by the second
    supervisor = supervisor_of(pid)
    second.send_signal(signal.SIGKILL)
    second.wait(5)
    poll_for(lambda: not alive(pid) and not alive(supervisor.pid), timeout=10,
             message="server and supervisor to exit once nobody uses them")
    assert not (home / "redis" / "redis.sock").exists()


def test_a_sigkilled_supervisor_takes_its_server_with_it(home: Path, tracker):
    hold(tracker, home, linger=30)
    pid = server_pid(home)
    supervisor_of(pid).send_signal(signal.SIGKILL)
    poll_for(lambda: not alive(pid), timeout=10, message="redis-server to die with its supervisor")


def test_a_too_long_home_is_a_clear_error(tmp_path: Path):
    from workerguard.errors import EmbeddedRedisError
    from workerguard.ops.embedded import socket_path

    with pytest.raises(EmbeddedRedisError, match="WORKERGUARD_HOME"):
        socket_path(tmp_path / ("x" * 120))
