"""`workerguard status` as a table (--table, a terminal) and --watch; piped output stays plain."""

from __future__ import annotations

import signal
import subprocess
import sys

from tests.conftest import Workspace
from tests.support import LineReader, as_at_a_terminal, cli_env, run_cli
from workerguard.cli.common import duration


def test_table_shows_profile_host_state_pids_uptime_command(workspace: Workspace, redis_client):
    workspace.add_profile()
    workspace.add_profile("idle", match=r"never-matches-anything-\d{40}")
    [pid] = workspace.guard(redis_client).ensure("demo").started
    config = str(workspace.config_path)
    done = run_cli("status", "--local", "--table", "--config", config,
                   env=cli_env(COLUMNS="220"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].strip() == f"workerguard status: {workspace.host_id}"
    [header] = [line for line in lines if "profile" in line]
    assert [cell.strip() for cell in header.strip("┃ ").split("┃")] == [
        "profile", "host", "state", "pids", "uptime", "health", "command"]
    [demo] = [line for line in lines if line.startswith("│ demo ")]
    cells = [cell.strip() for cell in demo.strip("│ ").split("│")]
    assert cells[:4] == ["demo", workspace.host_id, "running", str(pid)]
    assert cells[4].endswith("s") and cells[5] == "-"  # not probed (and --local: no prober)
    assert cells[6].endswith(f"sleeper.py --tag {workspace.token}")
    [idle] = [line for line in lines if line.startswith("│ idle ")]
    assert [cell.strip() for cell in idle.strip("│ ").split("│")][2:6] == ["stopped", "-", "-", "-"]

    piped = run_cli("status", "--local", "--config", config, env=cli_env())
    assert piped.stdout == f"demo: running (PIDs: {pid})\nidle: stopped (PIDs: -)\n"
    plain = run_cli("status", "--local", "--plain", "--config", config, env=cli_env())
    assert plain.stdout == piped.stdout


def test_table_shows_each_instances_health():
    from rich.console import Console

    from workerguard.cli.status_table import status_table

    def instance(pid: int, health: dict[str, object] | None) -> dict[str, object]:
        return {"pid": pid, "uptime": 5.0, **({"health": health} if health else {})}

    result = {"host": "h1", "profiles": {"bot": {"state": "running", "command": ["bot"], "instances": [
        instance(1, {"state": "healthy", "failures": 0}),
        instance(2, {"state": "unhealthy", "failures": 3}),
        instance(3, {"state": "starting", "failures": 0}),
        instance(4, None)]}}}
    console = Console(width=200, record=True)
    console.print(status_table(result))
    [row] = [line for line in console.export_text().splitlines() if line.startswith("│ bot ")]
    assert row.split("│")[6].strip() == "healthy, unhealthy (3 failed), starting, -"


def test_watch_refreshes_until_interrupted(workspace: Workspace, tracker):
    workspace.add_profile()
    config = str(workspace.write_config())
    watcher = tracker.popen(
        [sys.executable, "-m", "workerguard.cli", "status", "--local", "--watch", "--table",
         "--interval", "0.3", "--config", config],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(COLUMNS="200"),
        preexec_fn=as_at_a_terminal)
    lines = LineReader(watcher.stdout)
    refreshes = []
    for _ in range(2):
        block = lines.until(lambda line: line.startswith("└"), message="a refreshed table")
        refreshes.append(block)
    for block in refreshes:
        assert any(line.startswith("workerguard status --watch") for line in block)
        assert any(line.startswith("│ demo ") and "stopped" in line for line in block)
    watcher.send_signal(signal.SIGINT)  # Ctrl-C
    assert watcher.wait(10) == 0


def test_duration():
    assert [duration(s) for s in (0, 42, 303, 7500, 273600)] == [
        "0s", "42s", "5m03s", "2h05m", "3d04h"]
