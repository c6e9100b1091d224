"""The host fence under faults: shared whatever TMPDIR/HOME, bounded, and safe in its directory.

Every test here runs real processes: a guard held at a failpoint (tests/failpoint_guard.py)
and ``workerguard ensure --local`` calls with their own environment.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Workspace
from tests.support import HERE, cli_env, poll_for, run_cli, short_tmpdir, tiny_tmpfs
from workerguard.config import Settings
from workerguard.store import keys
from workerguard.workers.rundir import default_runtime_dir

FAILPOINT = HERE / "failpoint_guard.py"


def private_env(base: Path, name: str) -> dict[str, str]:
    """An environment whose TMPDIR and HOME are its own (as under PrivateTmp or another HOME)."""
    own = base / name
    (own / "tmp").mkdir(parents=True)
    return cli_env(TMPDIR=str(own / "tmp"), HOME=str(own), XDG_STATE_HOME=str(own / "state"))


def local_ensure(workspace: Workspace, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli("ensure", "demo", "--local", "--config", str(workspace.config_path), env=env,
                   timeout=120)


def hold_fence(workspace: Workspace, env: dict[str, str]) -> subprocess.Popen[str]:
    """A guard stopped inside its converge, holding the Redis lock and the host fence."""
    proc = workspace.tracker.popen(
        [sys.executable, str(FAILPOINT), str(workspace.write_config()), "lock_held"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "STAGE lock_held", (line, proc.stderr.read() if proc.stderr else "")
    return proc


def test_the_default_runtime_dir_depends_on_the_user_not_on_tmpdir_or_home():
    base = {"TMPDIR": "/somewhere", "HOME": "/home/x"}
    if os.geteuid() == 0:
        assert default_runtime_dir(base) == Path("/run/workerguard")
    else:
        uid = os.geteuid()
        assert default_runtime_dir(base) == Path(f"/tmp/workerguard-{uid}")
        assert default_runtime_dir({**base, "XDG_RUNTIME_DIR": f"/run/user/{uid}"}) == Path(
            f"/run/user/{uid}/workerguard")


def test_two_guards_with_different_tmpdir_and_home_share_one_fence_bounded_by_the_deadline(
        workspace: Workspace, redis_client):
    """Guard A holds the fence; its Redis lock is lost. Guard B (other TMPDIR and HOME)
    takes the Redis lock at once, waits on the same fence, and gives up at its lock
    deadline naming the fence and A's pid; nothing started. When A dies, B goes on."""
    workspace.add_profile(start_seconds=0.3)
    workspace.guard_settings["lock_timeout"] = 3
    base = short_tmpdir("wg-env-")
    try:
        holder = hold_fence(workspace, private_env(base, "a"))
        fence = Settings().fence_dir / f"{workspace.host_id}.demo.lock"
        redis_client.delete(keys.lock(workspace.host_id, "demo"))  # A's Redis lock is lost
        began = time.monotonic()
        refused = local_ensure(workspace, private_env(base, "b"))
        waited = time.monotonic() - began
        assert refused.returncode == 1, refused.stderr
        line = re.fullmatch(rf"error: host fence {re.escape(str(fence))} still held by pid "
                            rf"{holder.pid} after ([0-9.]+) s; nothing was touched\n",
                            refused.stderr)
        assert line, refused.stderr
        assert float(line[1]) < 3.5  # fence wait + lock wait end at the 3 s lock deadline
        assert waited < 3 + 10, waited  # the deadline, plus the CLI's own start
        assert workspace.running() == []  # B did not act while A held the fence
        redis_client.delete(keys.lock(workspace.host_id, "demo"))
        waiting = workspace.tracker.popen(
            [sys.executable, "-m", "workerguard.cli", "ensure", "demo", "--local", "--config",
             str(workspace.config_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=private_env(base, "c"))
        poll_for(lambda: redis_client.exists(keys.lock(workspace.host_id, "demo")),
                 timeout=20, message="the third guard to take the Redis lock")
        holder.send_signal(signal.SIGKILL)  # the kernel releases A's fence
        holder.wait(10)
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, err
        assert "started" in out
        assert len(workspace.running()) == 1
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def runtime_dir(workspace: Workspace) -> Iterator[Path]:
    """A runtime dir of this test's own, set through WORKERGUARD_RUNTIME_DIR's config key."""
    base = short_tmpdir("wg-rt-")
    workspace.guard_settings["runtime_dir"] = str(base / "rt")
    yield base / "rt"
    shutil.rmtree(base, ignore_errors=True)


def assert_refused(done: subprocess.CompletedProcess[str], expected: str) -> None:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1, done.stderr  # one line, no traceback
    assert expected in done.stderr, done.stderr


def test_a_symlink_planted_in_the_fence_directory_is_refused_and_its_target_untouched(
        workspace: Workspace, runtime_dir: Path):
    workspace.add_profile()
    workspace.write_config()
    fences = runtime_dir / "fences"
    fences.mkdir(parents=True, mode=0o700)
    runtime_dir.chmod(0o700)
    victim = runtime_dir.parent / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    missing = runtime_dir.parent / "created-through-the-link"
    link = fences / f"{workspace.host_id}.demo.lock"
    for target in (victim, missing):
        link.unlink(missing_ok=True)
        link.symlink_to(target)
        assert_refused(local_ensure(workspace, cli_env()),
                       f"error: refusing host fence {link}: it is a symlink")
    assert victim.read_text() == "precious\n"
    assert victim.stat().st_mode & 0o777 == 0o644
    assert not missing.exists()
    link.unlink()
    fences.rmdir()
    fences.symlink_to(runtime_dir.parent)  # the fence directory itself replaced by a link
    assert_refused(local_ensure(workspace, cli_env()),
                   f"error: refusing directory {fences}: it is a symlink")
    assert workspace.running() == []


def test_a_fence_directory_with_a_wrong_mode_or_owner_is_refused_with_a_clear_message(
        workspace: Workspace, runtime_dir: Path):
    workspace.add_profile()
    workspace.write_config()
    runtime_dir.mkdir(mode=0o700)
    runtime_dir.chmod(0o777)
    assert_refused(local_ensure(workspace, cli_env()),
                   f"error: refusing directory {runtime_dir}: writable by group or others "
                   "(mode 777; want 700)")
    runtime_dir.chmod(0o700)
    if os.geteuid() != 0:
        pytest.skip("changing a directory's owner needs root")
    os.chown(runtime_dir, 65534, 65534)  # nobody
    assert_refused(local_ensure(workspace, cli_env()),
                   f"error: refusing directory {runtime_dir}: owned by uid 65534, not by this "
                   "user (uid 0)")
    assert workspace.running() == []
    os.chown(runtime_dir, 0, 0)
    done = local_ensure(workspace, cli_env())
    assert done.returncode == 0, done.stderr
    assert len(workspace.running()) == 1


def test_a_full_disk_gives_a_one_line_error_naming_the_fence(workspace: Workspace):
    """The runtime dir on a tmpfs that has no inode left (ENOSPC on create)."""
    workspace.add_profile()
    with tiny_tmpfs(inodes=2) as full:
        (full / "fences").mkdir(mode=0o700)  # the second and last inode
        workspace.guard_settings["runtime_dir"] = str(full)
        workspace.write_config()
        assert_refused(local_ensure(workspace, cli_env()),
                       f"error: cannot open host fence {full}/fences/{workspace.host_id}.demo.lock:"
                       " No space left on device")
        assert workspace.running() == []


def test_runtime_dir_comes_from_the_environment_and_must_be_absolute():
    from workerguard.config import parse_config
    from workerguard.errors import ConfigError

    config = parse_config({}, "t.toml", environ={"WORKERGUARD_RUNTIME_DIR": "/srv/wg-run"})
    assert config.settings.fence_dir == Path("/srv/wg-run/fences")
    with pytest.raises(ConfigError, match=r"runtime_dir: must be an absolute path, got 'run'"):
        parse_config({"guard": {"runtime_dir": "run"}}, "t.toml", environ={})
