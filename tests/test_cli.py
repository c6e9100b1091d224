"""The command line with --local: real processes, a real Redis, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import Workspace
from tests.support import cli_env, poll_for, run_cli


def cli(workspace: Workspace, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "--config", str(workspace.config_path), env=cli_env())


def test_twenty_simultaneous_ensure_commands_leave_exactly_one_instance(workspace: Workspace):
    workspace.add_profile(start_seconds=0.5)
    config = str(workspace.write_config())
    callers = [
        workspace.tracker.popen(
            [sys.executable, "-m", "workerguard.cli", "ensure", "demo", "--local", "--json",
             "--config", config],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
        for _ in range(20)
    ]
    outputs = [c.communicate(timeout=120) for c in callers]
    assert [c.returncode for c in callers] == [0] * 20, [err for _, err in outputs]
    results = [json.loads(out) for out, _ in outputs]
    actions = sorted(r["action"] for r in results)
    assert actions == ["already_running"] * 19 + ["started"]
    [pid] = next(r["started"] for r in results if r["action"] == "started")
    assert all(r["running"] == [pid] for r in results)
    status = json.loads(cli(workspace, "status", "demo", "--local", "--json").stdout)
    assert status["running"] == [pid]


def test_human_output_follows_the_original_script(workspace: Workspace):
    workspace.add_profile(stop_adopted=True)
    workspace.write_config()
    started = cli(workspace, "ensure", "demo", "--local")
    assert started.returncode == 0
    assert started.stdout.startswith("demo: started (PIDs: ")
    pid = started.stdout.split("PIDs: ")[1].rstrip(")\n")
    assert cli(workspace, "ensure", "demo", "--local").stdout == f"demo: already running (PIDs: {pid})\n"
    manual = workspace.hand_started()
    poll_for(lambda: str(manual.pid) in cli(workspace, "status", "--local").stdout)
    enforce = cli(workspace, "enforce", "demo", "--local", "--max-workers", "1")
    # the instance workerguard started survives; the hand-started one is stopped
    # (stop_adopted = true; without it an adopted process is never stopped)
    assert enforce.stdout == f"demo: keeping {pid}, stopping {manual.pid}\n"
    stop = cli(workspace, "stop", "demo", "--local")
    assert stop.stdout == f"demo: stopped {pid}; paused until the next ensure\n"
    assert cli(workspace, "stop", "demo", "--local").stdout == "demo: no instances to stop\n"
    assert cli(workspace, "status", "--local").stdout == "demo: paused (PIDs: -)\n"


def test_unknown_profile_exits_2_with_a_message(workspace: Workspace):
    workspace.add_profile()
    workspace.write_config()
    done = cli(workspace, "ensure", "rpa", "--local")
    assert done.returncode == 2
    assert "unknown profile 'rpa' (configured: demo" in done.stderr
    assert done.stdout == ""


def test_a_failed_start_exits_1(workspace: Workspace):
    workspace.add_profile("demo", "--exit-code", "7")
    workspace.write_config()
    done = cli(workspace, "ensure", "demo", "--local")
    assert done.returncode == 1
    assert "demo: start failed: pid" in done.stdout and "exited with code 7" in done.stdout


def test_bad_usage_exits_2(workspace: Workspace):
    workspace.add_profile()
    workspace.write_config()
    assert cli(workspace, "enforce", "demo", "--local", "--max-workers", "0").returncode == 2
    assert cli(workspace, "ensure", "--local").returncode == 2


def test_redis_unreachable_exits_1_and_touches_nothing(workspace: Workspace):
    workspace.add_profile()
    workspace.redis_url = "redis://:pw-secret@127.0.0.1:1/0"
    workspace.write_config()
    manual = [workspace.hand_started() for _ in range(2)]
    done = cli(workspace, "enforce", "demo", "--local")
    assert done.returncode == 1
    assert "redis unreachable" in done.stderr and "pw-secret" not in done.stderr
    assert all(p.poll() is None for p in manual)
