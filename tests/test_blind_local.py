"""A ``--local`` call that cannot see the guard's instances refuses instead of starting a
duplicate (issue 17): run as another uid, or with another runtime dir, than the guard
that runs the host's instances, it would find none of them. A real guard worker runs the
instance; the ``--local`` calls are real processes, as root with another runtime dir and
as uid 65534 (``nobody``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import CeleryHarness, Workspace
from tests.support import cli_env, run_cli, short_tmpdir
from workerguard.store import keys
from workerguard.store.host_owner import HostOwner, Viewpoint, blind_spot

NOBODY = 65534
ACTIONS = [["ensure", "demo"], ["status"], ["stop", "demo"], ["enforce", "demo"]]

needs_root = pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0,
                                reason="a call as another uid needs root (Linux)")


def run_as_nobody(args: list[str], out: Path, timeout: float = 60) -> tuple[int, str]:
    """``workerguard ARGS`` in a forked child that became uid 65534: this interpreter lives
    where that user may not exec it, so the child runs the CLI in-process (every module it
    needs is imported here first). Its exit code and its output."""
    import getpass  # noqa: F401 (imported before the fork: the child cannot read the stdlib)
    import pwd  # noqa: F401
    import tomllib  # noqa: F401

    import workerguard.cli
    import workerguard.ops.connect
    import workerguard.policy.guard

    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 70
        stream = open(fd, "w", closefd=False)  # noqa: SIM115 (flushed before _exit)
        try:
            sys.stdout = sys.stderr = stream
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            for name in [k for k in os.environ if k.startswith("WORKERGUARD_")]:
                del os.environ[name]
            try:
                workerguard.cli.main(args, prog_name="workerguard")
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # reported in the output, with a code the test shows
            traceback.print_exc(file=stream)
            code = 71
        finally:
            stream.flush()
            os._exit(code)
    os.close(fd)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), out.read_text()
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"workerguard {args} as uid {NOBODY} did not end in {timeout} s")
        time.sleep(0.05)


@pytest.fixture
def readable_config(workspace: Workspace) -> Iterator[Callable[[], Path]]:
    """Copies the workspace's config where uid 65534 may read it (its home is 0700)."""
    directory = short_tmpdir("wg-cfg-")
    directory.chmod(0o755)
    path = directory / "workerguard.toml"

    def copy() -> Path:
        shutil.copy(workspace.write_config(), path)
        path.chmod(0o644)
        return path

    yield copy
    shutil.rmtree(directory, ignore_errors=True)


def one_error_line(text: str) -> str:
    assert text.count("\n") == 1 and text.startswith("error: "), text  # no traceback
    return text


@needs_root
def test_a_local_call_that_cannot_see_the_guards_instances_refuses_instead_of_a_duplicate(
        workspace: Workspace, harness: CeleryHarness, redis_client: redis.Redis,
        readable_config: Callable[[], Path]) -> None:
    workspace.add_profile()
    harness.start_worker()
    started = harness.call("workerguard.ensure", "demo")
    assert started.result["action"] == "started", started.result
    [pid] = started.result["started"]
    guards_dir = os.path.realpath(workspace.config().settings.runtime_dir)
    owner = HostOwner(redis_client, workspace.host_id).read()
    assert owner == Viewpoint(0, guards_dir)  # the guard worker said from where it looks

    other = short_tmpdir("wg-other-rt-")
    try:
        for action in ACTIONS:  # root, another runtime dir
            done = run_cli(*action, "--local", "--config", str(workspace.config_path),
                           env=cli_env(WORKERGUARD_RUNTIME_DIR=str(other / "rt")))
            assert done.returncode == 2, (action, done.stdout, done.stderr)
            line = one_error_line(done.stderr)
            assert line.startswith(f"error: --local runs as uid 0 (root) with runtime dir {other}/rt, "
                                   f"but host {workspace.host_id}'s instances are run by a guard "
                                   f"of uid 0 (root) with runtime dir {guards_dir}: this call "
                                   "would see none of them and start duplicates; set "
                                   f"WORKERGUARD_RUNTIME_DIR={guards_dir}"), line
            assert "run it as uid" not in line
        for action in ACTIONS:  # uid 65534, its own default runtime dir
            code, output = run_as_nobody([*action, "--local", "--config", str(readable_config())],
                                         other / "out")
            assert code == 2, (action, output)
            line = one_error_line(output)
            assert re.match(rf"error: --local runs as uid {NOBODY} \(nobody\) with runtime dir \S+, "
                            f"but host {workspace.host_id}'s instances are run by a guard of uid 0 "
                            rf"\(root\) with runtime dir {re.escape(guards_dir)}: ", line), line
            assert "; run it as uid 0 (root) and set WORKERGUARD_RUNTIME_DIR=" in line, line
            assert line.endswith(", or leave out --local to ask the guard worker\n"), line
    finally:
        shutil.rmtree(other, ignore_errors=True)
    assert workspace.running() == [pid]  # nothing started, nothing stopped
    assert not redis_client.exists(keys.paused(workspace.host_id, "demo"))
    same = run_cli("status", "--local", "--config", str(workspace.config_path), env=cli_env())
    assert same.returncode == 0 and str(pid) in same.stdout, same.stderr  # the guard's own view


@needs_root
def test_records_a_root_local_call_made_refuse_a_local_call_of_another_uid(
        workspace: Workspace, redis_client: redis.Redis, readable_config: Callable[[], Path]) -> None:
    workspace.add_profile()
    first = run_cli("ensure", "demo", "--local", "--config", str(workspace.write_config()),
                    env=cli_env())
    assert first.returncode == 0 and "started" in first.stdout, first.stderr
    [pid] = workspace.running()
    out = short_tmpdir("wg-out-")
    try:
        code, output = run_as_nobody(["ensure", "demo", "--local", "--config",
                                      str(readable_config())], out / "out")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    assert code == 2 and "run it as uid 0 (root)" in one_error_line(output), output
    assert workspace.running() == [pid]


def test_who_may_act_locally() -> None:
    root = Viewpoint(0, "/run/workerguard")
    assert blind_spot(None, Viewpoint(1000, "/tmp/x"), "h") is None  # nothing recorded yet
    assert blind_spot(root, Viewpoint(0, "/run/workerguard"), "h") is None
    uid_only = blind_spot(root, Viewpoint(1000, "/run/workerguard"), "h")
    assert uid_only is not None and "run it as uid 0" in uid_only
    assert "WORKERGUARD_RUNTIME_DIR" not in uid_only
    no_uids = blind_spot(Viewpoint(None, "C:/a"), Viewpoint(None, "C:/b"), "h")  # Windows
    assert no_uids is not None and "uid" not in no_uids.split(":")[0]


def test_an_unreadable_record_is_no_record(redis_client: redis.Redis) -> None:
    owner = HostOwner(redis_client, "h-unreadable")
    for raw in (b"{", b"[]", b'{"uid": "0", "runtime_dir": "/x"}', b'{"uid": 0}'):
        redis_client.set(keys.host_owner("h-unreadable"), raw)
        assert owner.read() is None
    with contextlib.suppress(Exception):
        redis_client.delete(keys.host_owner("h-unreadable"))
