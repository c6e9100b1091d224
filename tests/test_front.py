"""The front door: every caller gets a clear answer, fast; reload; worker log rotation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import CeleryHarness, Workspace
from tests.support import cli_env, poll_for, run_cli
from workerguard.workers.logs import log_path

QUEUED = [("status",), ("ensure", "demo"), ("enforce", "demo"), ("stop", "demo"), ("ping",),
          ("reload",)]


def cli(workspace: Workspace, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "--config", str(workspace.config_path), env=cli_env())


def test_every_queued_command_against_an_unreachable_redis_prints_one_line_and_exits_1(
        workspace: Workspace):
    workspace.add_profile()
    workspace.redis_url = "redis://:pw-secret@127.0.0.1:1/0"
    workspace.write_config()
    manual = workspace.hand_started()
    for command in QUEUED:
        began = time.monotonic()
        done = cli(workspace, *command)
        took = time.monotonic() - began
        assert done.returncode == 1, (command, done.stderr)
        # which server was tried, never its password
        assert done.stderr == ("error: redis unreachable at redis://127.0.0.1:1/0 "
                               "(ConnectionError)\n"), (command, done.stderr)
        assert done.stdout == ""
        assert took < 5, (command, took)
    assert manual.poll() is None


def test_an_unknown_profile_exits_2_at_once_with_no_guard_running(workspace: Workspace):
    workspace.add_profile()
    workspace.write_config()
    for command in (("ensure", "dmeo"), ("enforce", "dmeo"), ("stop", "dmeo"), ("status", "dmeo")):
        began = time.monotonic()
        done = cli(workspace, *command)
        assert done.returncode == 2, done.stderr
        assert done.stderr == "error: unknown profile 'dmeo' (configured: demo)\n"
        assert time.monotonic() - began < 5
    # Another host may configure other profiles: its own guard decides.
    other = cli(workspace, "ensure", "dmeo", "--host", "elsewhere", "--timeout", "1")
    assert other.returncode == 1
    assert "no guard answered on workerguard.elsewhere within 1 s (is `workerguard up` or " \
           "`workerguard worker` running for that host?)" in other.stderr


@pytest.mark.celery
@pytest.mark.parametrize("serializer", ["msgpack", "yaml"])
def test_a_message_in_another_serializer_gets_a_failed_result_at_once(
        workspace: Workspace, harness: CeleryHarness, serializer: str):
    workspace.add_profile()
    manual = workspace.hand_started()
    harness.start_worker()
    app = harness.client_app()
    app.conf.accept_content = ["json", serializer]
    began = time.monotonic()
    request = app.send_task("workerguard.stop_all", args=["demo"], queue=harness.queue,
                            serializer=serializer)
    request.get(timeout=10, propagate=False)
    took = time.monotonic() - began
    assert request.state == "FAILURE"
    assert "is not accepted; workerguard takes JSON only" in str(request.result)
    assert took < 5.0, took  # answered (within a second when not loaded), not left to time out
    assert manual.poll() is None
    assert harness.call("workerguard.status", "demo").result["running"] == [manual.pid]


# reload ---------------------------------------------------------------------------------

def _running(harness: CeleryHarness) -> list[int]:
    return list(harness.call("workerguard.status", "demo").result["running"])


@pytest.mark.celery
def test_reload_refuses_a_broken_file_and_applies_a_lowered_max_workers(
        workspace: Workspace, harness: CeleryHarness):
    workspace.add_profile(min_workers=2, max_workers=2)
    harness.start_worker()
    started = harness.call("workerguard.ensure", "demo").result["started"]
    assert len(started) == 2
    good = workspace.config_path.read_text()

    workspace.config_path.write_text(good + "\n[profiles.broken\n")
    refused = cli(workspace, "reload")  # refused by the CLI, which reads the same file
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: reload refused, the running config stays: ")
    assert "not valid TOML" in refused.stderr and refused.stderr.count("\n") == 1
    # Refused by the guard itself (the CLI reads an intact copy).
    copy = workspace.home / "cli.toml"
    copy.write_text(good)
    refused = run_cli("reload", "--config", str(copy), env=cli_env())
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.startswith("error: reload refused, the running config stays: ")
    assert "not valid TOML" in refused.stderr and refused.stderr.count("\n") == 1
    workspace.config_path.write_text(good.replace("[guard]\n", "[guard]\nhost_id = \"other\"\n", 1)
                                     .replace(f'host_id = "{workspace.host_id}"\n', "", 1))
    fixed = cli(workspace, "reload", "--host", workspace.host_id)
    assert fixed.returncode == 1 and "host_id cannot change without a restart" in fixed.stderr
    assert sorted(_running(harness)) == sorted(started)  # nothing changed

    workspace.profiles["demo"].update(min_workers=1, max_workers=1)
    workspace.write_config()
    done = cli(workspace, "reload", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["action"] == "reloaded" and result["changed"] == ["profiles.demo"]
    [swept] = result["swept"]
    assert swept["action"] == "stopped_extras" and len(swept["stopped"]) == 1
    assert _running(harness) == swept["running"] and len(swept["running"]) == 1


@pytest.mark.celery
def test_sighup_to_the_guard_worker_reloads_and_converges(workspace: Workspace,
                                                          harness: CeleryHarness):
    workspace.add_profile(min_workers=2, max_workers=2)
    worker = harness.start_worker()
    assert len(harness.call("workerguard.ensure", "demo").result["started"]) == 2
    good = workspace.config_path.read_text()
    workspace.config_path.write_text("not toml [")
    os.kill(worker.pid, signal.SIGHUP)
    poll_for(lambda: "SIGHUP: reload refused" in harness.log_tail(), timeout=20)
    assert worker.poll() is None and len(_running(harness)) == 2
    workspace.config_path.write_text(good)
    workspace.profiles["demo"].update(min_workers=1, max_workers=1)
    workspace.write_config()
    os.kill(worker.pid, signal.SIGHUP)
    poll_for(lambda: len(_running(harness)) == 1, timeout=30, message="the extra to be stopped")
    assert worker.poll() is None
    # The new config serves the next requests: ensure keeps one.
    assert harness.call("workerguard.ensure", "demo").result["action"] == "already_running"


# log rotation ---------------------------------------------------------------------------

LINE = 200


def _sizes(log: Path) -> int:
    try:
        return log.stat().st_size
    except FileNotFoundError:
        return 0


@pytest.mark.celery
def test_worker_logs_rotate_at_the_cap_and_the_worker_keeps_writing_to_the_live_file(
        workspace: Workspace, harness: CeleryHarness):
    cap, interval = 64 * 1024, 0.5
    workspace.add_profile("demo", "--chatter", str(LINE))
    workspace.guard_settings.update(log_max_bytes=cap, log_backups=2, sweep_interval=interval)
    harness.start_worker()
    [pid] = harness.call("workerguard.ensure", "demo").result["started"]
    log = log_path(workspace.home / "logs", "demo", 0)
    harness.start_beat()
    backups = [log.with_name("demo.0.log.1"), log.with_name("demo.0.log.2")]
    # Sizes sampled while the worker writes ~40 kB/s and sweeps rotate every 0.5 s.
    biggest = 0
    deadline = time.monotonic() + 60
    while not all(b.exists() for b in backups) and time.monotonic() < deadline:
        biggest = max(biggest, _sizes(log))
        time.sleep(0.01)
    assert all(b.exists() for b in backups), "two rotations within 60 s"
    assert not log.with_name("demo.0.log.3").exists()
    # Rotation keeps the live file near the cap; how near depends on the sweep cadence,
    # which a loaded machine stretches (a bound in time belongs in a benchmark): bounded,
    # never growing without end.
    assert biggest <= 4 * cap, (biggest, cap)
    for backup in backups:
        assert _sizes(backup) > cap
        assert b"\x00" not in backup.read_bytes()  # O_APPEND: no hole after a truncate
    before = _sizes(log)
    poll_for(lambda: _sizes(log) > before, timeout=5, message="the worker to keep writing")
    assert b"\x00" not in log.read_bytes()[:LINE * 10]
    assert harness.call("workerguard.status", "demo").result["running"] == [pid]


def test_rotation_with_no_backups_truncates_only(tmp_path: Path):
    from workerguard.workers.logs import rotate

    log = tmp_path / "demo.log"
    log.write_bytes(b"x" * 100)
    assert not rotate(log, max_bytes=100, backups=0)
    log.write_bytes(b"x" * 101)
    assert rotate(log, max_bytes=100, backups=0)
    assert log.read_bytes() == b"" and sorted(p.name for p in tmp_path.iterdir()) == [
        ".demo.log.rotate", "demo.log"]
