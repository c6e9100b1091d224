"""A runtime directory no one else can take.

Another local user can create ``/tmp/workerguard-<uid>`` before the guard does (``/tmp``
is world-writable). Every way in refuses such a directory with one line naming the fix,
starts nothing and writes nothing into it: the guard worker, ``up`` and every ``--local``
command. Real CLI processes; the foreign owner is ``nobody`` (the tests run as root).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Workspace
from tests.support import cli_env, run_cli, short_tmpdir
from workerguard.errors import HostError
from workerguard.workers import rundir
from workerguard.workers.rundir import checked_runtime_dir, default_runtime_dir

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"),
                                reason="giving a directory to another user needs root")


@pytest.fixture
def foreign_runtime_dir(workspace: Workspace) -> Iterator[Path]:
    """The workspace's runtime dir, created first by another user (``nobody``), open to all."""
    base = short_tmpdir("wg-rt-")
    runtime = base / "rt"
    runtime.mkdir()
    runtime.chmod(0o777)
    os.chown(runtime, NOBODY, NOBODY)
    workspace.guard_settings["runtime_dir"] = str(runtime)
    workspace.add_profile()
    workspace.write_config()
    yield runtime
    shutil.rmtree(base, ignore_errors=True)


@needs_root
@pytest.mark.parametrize("command", [
    ["worker"], ["up"], ["ensure", "demo", "--local"], ["status", "--local"],
    ["stop", "demo", "--local"], ["prune", "--local"], ["enforce", "demo", "--local"],
])
def test_a_runtime_dir_another_user_created_first_is_refused_with_the_fix_by_every_way_in(
        workspace: Workspace, foreign_runtime_dir: Path, command: list[str]):
    done = run_cli(*command, "--config", str(workspace.config_path), env=cli_env(), timeout=120)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1, done.stderr  # one line, no traceback
    assert done.stderr.startswith(f"error: refusing directory {foreign_runtime_dir}: owned by uid "
                                  f"{NOBODY}, not by this user (uid 0); another user may have "
                                  "created it first: set runtime_dir in the config file (or "
                                  "WORKERGUARD_RUNTIME_DIR)"), done.stderr
    assert os.listdir(foreign_runtime_dir) == [], "nothing written into another user's directory"
    assert workspace.tracker.marked() == [], "nothing started"


def test_the_default_for_a_user_without_a_session_is_refused_if_another_user_made_it(
        monkeypatch: pytest.MonkeyPatch):
    """``/tmp/workerguard-<uid>`` made first by root, seen by a user without
    ``XDG_RUNTIME_DIR`` (its uid faked here: the check compares owners, nothing else)."""
    fake_uid = 4_000_000 + os.getpid() % 1000
    monkeypatch.setattr(os, "geteuid", lambda: fake_uid)  # rundir asks os.geteuid()
    default = default_runtime_dir({})
    assert default == Path(f"/tmp/workerguard-{fake_uid}")
    default.mkdir(mode=0o777)
    try:
        with pytest.raises(HostError) as refused:
            checked_runtime_dir(default)
        assert str(refused.value) == (
            f"refusing directory {default}: owned by uid {os.getuid()}, not by this user "
            f"(uid {fake_uid}); {rundir.RUNTIME_DIR_FIX}")
        assert "\n" not in str(refused.value)
    finally:
        default.rmdir()


@needs_root
def test_a_registry_directory_of_another_user_is_skipped_by_status_without_a_traceback(
        workspace: Workspace):
    base = short_tmpdir("wg-rt-")
    try:
        registry = base / "rt" / "registry"
        registry.mkdir(parents=True, mode=0o700)
        (base / "rt").chmod(0o700)
        os.chown(registry, NOBODY, NOBODY)
        workspace.guard_settings["runtime_dir"] = str(base / "rt")
        workspace.add_profile()
        workspace.write_config()
        done = run_cli("status", "--local", "--config", str(workspace.config_path), env=cli_env())
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        assert f"instance registry: {registry}: refused: owned by uid {NOBODY}" in done.stderr
        assert "demo" in done.stdout
    finally:
        shutil.rmtree(base, ignore_errors=True)
