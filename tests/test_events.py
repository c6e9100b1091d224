"""The action log: `workerguard events` reads what real actions recorded in Redis."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from tests.conftest import Workspace
from tests.support import LineReader, as_at_a_terminal, cli_env, run_cli
from workerguard.store.events import EventLog, parse_since


def events(workspace: Workspace, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("events", *args, "--config", str(workspace.config_path), env=cli_env())


def test_events_lists_real_actions_oldest_first_with_filters(workspace: Workspace, redis_client):
    workspace.add_profile(stop_adopted=True)
    guard = workspace.guard(redis_client)
    started = guard.ensure("demo", requested_by="test-ensure").contract()
    manual = workspace.hand_started()
    enforced = guard.enforce("demo", max_workers=1, requested_by="test-enforce").contract()
    stopped = guard.stop_all("demo", requested_by="test-stop").contract()
    EventLog(redis_client, "elsewhere").record("demo", "started", [4242], "another guard")

    done = events(workspace, "--json")
    assert done.returncode == 0, done.stderr
    listed = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(e["host"], e["action"], e["pids"], e["requested_by"]) for e in listed] == [
        (workspace.host_id, "started", started["started"], "test-ensure"),
        (workspace.host_id, "stopped_extras", enforced["stopped"], "test-enforce"),
        (workspace.host_id, "stopped_all", started["started"], "test-stop"),
        ("elsewhere", "started", [4242], "another guard"),
    ]
    # the spawned instance survives the enforce; the adopted one goes (stop_adopted)
    assert enforced["stopped"] == [manual.pid] and stopped["stopped"] == started["started"]
    assert all(e["profile"] == "demo" and e["time"] > 0 and e["id"] for e in listed)

    mine = events(workspace, "demo", "--host", workspace.host_id, "--json")
    assert [json.loads(line)["action"] for line in mine.stdout.splitlines()] == [
        "started", "stopped_extras", "stopped_all"]
    assert events(workspace, "other-profile").stdout == ""
    assert len(events(workspace, "--since", "10m").stdout.splitlines()) == 4
    assert events(workspace, "--since", "1d", "--host", "nowhere").stdout == ""
    last_id = listed[-1]["id"]
    assert [json.loads(x)["id"] for x in events(workspace, "--since", last_id, "--json")
            .stdout.splitlines()] == [last_id]

    [latest] = events(workspace, "-n", "1", "--host", workspace.host_id).stdout.splitlines()
    [pid] = started["started"]
    assert f"  {workspace.host_id}  demo  stopped_all  pids {pid}  by test-stop" in latest

    bad = events(workspace, "--since", "yesterday-ish")
    assert bad.returncode == 2 and "--since" in bad.stderr


def test_events_follow_prints_new_actions_until_interrupted(workspace: Workspace, redis_client,
                                                             tracker):
    workspace.add_profile()
    config = str(workspace.write_config())
    follower = tracker.popen(
        [sys.executable, "-m", "workerguard.cli", "events", "--follow", "--json",
         "--host", workspace.host_id, "--config", config],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(), preexec_fn=as_at_a_terminal)
    lines = LineReader(follower.stdout)
    guard = workspace.guard(redis_client)
    # Whether the follower is already blocked in XREAD or still listing the latest events,
    # the event is printed exactly once.
    started = guard.ensure("demo", requested_by="follow-test").contract()
    first = json.loads(lines.next(message="the started event"))
    assert (first["action"], first["pids"]) == ("started", started["started"])
    EventLog(redis_client, "elsewhere").record("demo", "started", [1], "filtered out by --host")
    guard.stop_all("demo", requested_by="follow-test")
    second = json.loads(lines.next(message="the stopped_all event"))
    assert (second["action"], second["host"]) == ("stopped_all", workspace.host_id)

    follower.send_signal(signal.SIGINT)  # Ctrl-C
    assert follower.wait(10) == 0
    lines.join()
    assert lines.lines.empty()


@pytest.mark.parametrize(("text", "expected"), [
    ("10m", f"{(1_000_000 - 600) * 1000}-0"),
    ("2h", f"{(1_000_000 - 7200) * 1000}-0"),
    ("30s", f"{(1_000_000 - 30) * 1000}-0"),
    ("1700000000000-5", "1700000000000-5"),
    ("1700000000000", "1700000000000"),
])
def test_parse_since(text: str, expected: str):
    assert parse_since(text, now=1_000_000) == expected


def test_parse_since_refuses_nonsense():
    with pytest.raises(ValueError, match="--since"):
        parse_since("soon")


def test_events_of_a_misspelt_profile_exit_2_and_of_another_host_s_profile_are_shown(
        workspace: Workspace, redis_client):
    workspace.add_profile()
    workspace.write_config()
    typo = events(workspace, "dmeo")
    assert typo.returncode == 2 and typo.stdout == ""
    assert typo.stderr == "error: unknown profile 'dmeo' (configured: demo)\n"
    # A profile only another host configures is not a typo once that host logged it.
    EventLog(redis_client, "elsewhere").record("scraper", "started", [4242], "another guard")
    theirs = events(workspace, "scraper")
    assert theirs.returncode == 0, theirs.stderr
    assert "elsewhere  scraper  started  pids 4242  by another guard" in theirs.stdout
