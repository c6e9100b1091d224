"""The cgroup layout follows systemd's delegation rules (see ``workers/cgroup_layout``).

A root guard outside a delegated unit keeps one dedicated subtree, ``<mount>/workerguard``;
a guard in a delegated group (root: systemd's ``trusted.delegate`` mark; another user: the
group and its ``cgroup.procs``/``cgroup.threads``/``cgroup.subtree_control`` are its own)
moves into ``<group>/guard`` and starts its instances beside it, in
``<group>/workerguard/...``, so no cgroup with children holds a process; a root guard that
moves into a delegated unit still finds, stops and removes the groups of the old layout.
The delegated guards are real subprocesses (``tests/delegated_guard.py``), one of them as
uid 65534, in real cgroups the tests make, chown and remove.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import CeleryHarness, Workspace
from tests.support import SLEEPER, LineReader, cli_env, poll_for, short_tmpdir
from workerguard.policy import reports
from workerguard.workers import cgroup_layout, cgroups, host
from workerguard.workers.cgroup_layout import DELEGATED_FILES, Layout, decide
from workerguard.workers.host import HostProcesses

HERE = Path(__file__).resolve().parent
DELEGATED_GUARD = HERE / "delegated_guard.py"
NOBODY = 65534
MOUNT = Path("/sys/fs/cgroup")
KERNEL_DELEGATE_LIST = Path("/sys/kernel/cgroup/delegate")


def no(_group: Path, _euid: int) -> bool:
    return False


def yes(_group: Path, _euid: int) -> bool:
    return True


# what decides the layout (pure: the host's answers are passed in) ------------------------
def test_a_root_guard_that_is_not_delegated_keeps_one_dedicated_subtree():
    layout = decide(mount=MOUNT, own="/system.slice/wg.service", euid=0, delegated=no,
                    under_systemd=False)
    assert layout == Layout("dedicated", MOUNT / "workerguard")
    under_systemd = decide(mount=MOUNT, own="/system.slice/wg.service", euid=0, delegated=no,
                           under_systemd=True)
    assert under_systemd.root == MOUNT / "workerguard" and under_systemd.guard_leaf is None
    assert under_systemd.note is not None and "Delegate=yes" in under_systemd.note


@pytest.mark.parametrize("euid", [0, 1000])
def test_a_delegated_guard_moves_into_a_leaf_with_its_instances_beside_it(euid: int):
    unit = MOUNT / "system.slice" / "wg.service"
    for own in ("/system.slice/wg.service", "/system.slice/wg.service/guard"):
        layout = decide(mount=MOUNT, own=own, euid=euid,
                        delegated=lambda group, _euid: group == unit)
        assert layout.kind == "delegated" and layout.note is None
        assert (layout.root, layout.guard_leaf) == (unit / "workerguard", unit / "guard")
        assert layout.root is not None and layout.guard_leaf is not None
        assert layout.root.parent == layout.guard_leaf.parent  # siblings, under the unit
        assert layout.legacy == ((MOUNT / "workerguard",) if euid == 0 else ())


def test_a_guard_neither_root_nor_delegated_has_no_cgroup_mode_and_says_why():
    for own in ("/user.slice/user-1000.slice/session-3.scope", "/"):
        layout = decide(mount=MOUNT, own=own, euid=1000, delegated=no if own != "/" else yes)
        assert (layout.kind, layout.root) == ("none", None)
        assert layout.note is not None and "Delegate=yes" in layout.note and "registry" in layout.note


def test_a_configured_root_is_used_as_it_is():
    assert decide(Path("/srv/cg"), mount=MOUNT, own="/x", euid=0, delegated=yes) == \
        Layout("configured", Path("/srv/cg"))


def test_the_layout_note_is_logged_once_and_shown_by_status(caplog: pytest.LogCaptureFixture):
    note = f"cgroup /x is not delegated to uid 1000: registry mode ({uuid.uuid4().hex})"
    with caplog.at_level(logging.WARNING, logger="workerguard.workers"):
        host._say_once(note)
        host._say_once(note)
    assert [r.getMessage() for r in caplog.records].count(note) == 1
    report = reports.status_report("h", None, [], {}, {}, {}, 0.0, identity="registry",
                                   identity_note=note)
    assert f"identity: registry ({note})" in report.message.splitlines()


# real cgroups, real processes ----------------------------------------------------------
@pytest.fixture
def mount() -> Path:
    found = cgroups.cgroup2_mount()
    usable = found is not None and cgroups.CgroupTree(found / "workerguard").usable()
    if not usable or os.geteuid() != 0:
        if os.environ.get("CI"):
            raise AssertionError("cgroup v2 is not usable as root here")  # CI fails, never skips
        pytest.skip("needs root and a writable cgroup v2 hierarchy")
    assert found is not None
    return found


@pytest.fixture
def unit(mount: Path) -> Iterator[Path]:
    """A cgroup standing for a systemd unit's (``<mount>/wg-test-<id>.service``), removed
    with everything below it (its processes are this test's: it made the group)."""
    group = mount / f"wg-test-{uuid.uuid4().hex[:10]}.service"
    group.mkdir()
    yield group
    cgroups.kill(group)  # every process of the subtree: the guard and its instances
    for directory in sorted((Path(d) for d, _, _ in os.walk(group)), key=lambda p: -len(p.parts)):
        directory.rmdir()


def delegate(group: Path, uid: int) -> None:
    """What systemd does for ``Delegate=yes`` with ``User=``: chown the group and the files
    the kernel lists as delegatable (``/sys/kernel/cgroup/delegate``)."""
    names = set(DELEGATED_FILES)
    if KERNEL_DELEGATE_LIST.exists():
        names |= set(KERNEL_DELEGATE_LIST.read_text().split())
    os.chown(group, uid, uid)
    for name in names:
        if (group / name).exists():
            os.chown(group / name, uid, uid)


def python_for(uid: int) -> tuple[str, dict[str, str]]:
    """An interpreter ``uid`` can run (this one, or the system's of the same version when this
    one lives where ``uid`` cannot read, e.g. under /root), and the environment that lets it
    import workerguard and its dependencies."""
    env = cli_env()
    as_user: dict[str, Any] = {"user": uid, "group": uid, "extra_groups": []}
    candidates = [sys.executable, f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"]
    for python in candidates:
        try:
            subprocess.run([python, "-c", ""], check=True, cwd="/", **as_user)
        except (OSError, subprocess.CalledProcessError):
            continue
        if python != sys.executable:
            paths = [str(HERE.parent), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
            env["PYTHONPATH"] = os.pathsep.join(paths)
        return python, env
    if os.environ.get("CI"):
        raise AssertionError(f"no interpreter uid {uid} can run among {candidates}")
    pytest.skip(f"no interpreter uid {uid} can run among {candidates}")


def started_in(ws: Workspace, group: Path, argv: list[str], uid: int | None,
               env: dict[str, str]) -> tuple[subprocess.Popen[str], LineReader]:
    """``argv`` (which waits for ``go`` on stdin) moved into ``group`` before it does
    anything, as systemd starts a unit's main process in the unit's group."""
    as_user: dict[str, Any] = {"user": uid, "group": uid, "extra_groups": []} if uid is not None else {}
    proc = ws.tracker.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=str(HERE.parent), env=env, **as_user)
    cgroups.join(group, proc.pid)
    reader = LineReader(proc.stdout)
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    return proc, reader


def start_guard(ws: Workspace, group: Path, home: Path, count: int,
                uid: int | None = None) -> tuple[subprocess.Popen[str], LineReader, dict[str, Any]]:
    """The guard of ``tests/delegated_guard.py`` in ``group``, and its first report."""
    python, env = python_for(uid) if uid is not None else (sys.executable, cli_env())
    command = [python, str(SLEEPER), "--tag", ws.token]
    proc, reader = started_in(ws, group, [python, str(DELEGATED_GUARD), ws.host_id, str(home),
                                          str(count), json.dumps(command)], uid, env)
    return proc, reader, json.loads(reader.next(60, "the guard's report"))


def stop_all(proc: subprocess.Popen[str], reader: LineReader) -> dict[str, Any]:
    assert proc.stdin is not None
    proc.stdin.write("stop\n")
    proc.stdin.flush()
    answer: dict[str, Any] = json.loads(reader.next(60, "the guard's stop report"))
    assert proc.wait(30) == 0
    return answer


def owned_home(uid: int) -> Path:
    home = short_tmpdir("wg-deleg-")
    os.chown(home, uid, uid)
    return home


def cgroup_of(pid: int, mount: Path) -> Path:
    own = cgroups.own_cgroup(pid)
    assert own is not None
    return mount / own.lstrip("/")


def test_a_root_guard_outside_a_delegated_unit_puts_its_groups_in_one_dedicated_subtree(
        workspace: Workspace, mount: Path):
    workspace.add_profile()
    workspace.guard_settings["identity"] = "cgroup"
    table = workspace.table()
    assert table.layout.kind == "dedicated" and table.layout.root == mount / "workerguard"
    [started] = table.spawn(workspace.config().profile("demo"), 1).started
    assert started.cgroup is not None and cgroup_of(started.pid, mount) == Path(started.cgroup)
    assert Path(started.cgroup).relative_to(mount).parts == (
        "workerguard", workspace.host_id, "demo", started.instance_id)
    assert not (mount / workspace.host_id).exists()  # never at the top of the hierarchy
    assert cgroup_layout.inner_processes(mount / "workerguard" / workspace.host_id) == {}


def test_a_delegated_guard_of_another_user_runs_in_a_leaf_beside_its_instances_and_stops_them(
        workspace: Workspace, mount: Path, unit: Path):
    delegate(unit, NOBODY)
    home = owned_home(NOBODY)
    try:
        proc, reader, report = start_guard(workspace, unit, home, 2, uid=NOBODY)
        assert report["failures"] == [] and len(report["started"]) == 2, report
        assert (report["kind"], report["legacy"]) == ("delegated", [])
        assert cgroup_of(proc.pid, mount) == unit / "guard" == Path(report["guard_leaf"])
        root = unit / "workerguard"
        assert report["root"] == str(root)
        for instance in report["started"]:
            group = Path(instance["cgroup"])
            assert group.relative_to(root).parts == (workspace.host_id, "demo", instance["id"])
            assert cgroup_of(instance["pid"], mount) == group
            assert psutil.Process(instance["pid"]).uids().real == NOBODY
        assert sorted(p.name for p in unit.iterdir() if p.is_dir()) == ["guard", "workerguard"]
        assert cgroups.members(unit) == [] and cgroup_layout.inner_processes(unit) == {}
        pids = [i["pid"] for i in report["started"]]

        stopped = stop_all(proc, reader)  # the first by its signals, the second by cgroup.kill
        assert (stopped["stopped"], stopped["killed"], stopped["left"]) == ([pids[0]], [pids[1]], [])
        poll_for(lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status()
                                 != psutil.STATUS_ZOMBIE for pid in pids), message="instances gone")
        assert not (root / workspace.host_id).exists()  # their groups removed too
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_a_root_guard_moved_into_a_delegated_unit_finds_stops_and_removes_the_old_layout_s_groups(
        workspace: Workspace, mount: Path, unit: Path):
    os.setxattr(unit, "trusted.delegate", b"1")  # what systemd sets on a Delegate=yes unit
    home = short_tmpdir("wg-deleg-")
    try:
        old = HostProcesses(workspace.host_id, registry_dir=home / "registry", log_dir=home / "logs",
                            identity="cgroup", cgroup_root=mount / "workerguard")  # the old default
        workspace.add_profile()
        profile = workspace.config().profile("demo").model_copy(update={"match": None})
        [before] = old.spawn(profile, 1).started
        assert before.cgroup is not None and Path(before.cgroup).is_relative_to(mount / "workerguard")

        proc, reader, report = start_guard(workspace, unit, home, 1)
        assert report["kind"] == "delegated" and report["legacy"] == [str(mount / "workerguard")]
        assert [i["pid"] for i in report["found"]] == [before.pid], report  # the old group is found
        [started] = report["started"]
        assert Path(started["cgroup"]).is_relative_to(unit / "workerguard")
        assert cgroup_of(proc.pid, mount) == unit / "guard"
        assert cgroup_layout.inner_processes(unit) == {}

        stopped = stop_all(proc, reader)
        assert sorted(stopped["stopped"] + stopped["killed"]) == sorted([before.pid, started["pid"]])
        assert stopped["left"] == []
        assert not (mount / "workerguard" / workspace.host_id).exists()  # removed from the old place
        assert not (unit / "workerguard" / workspace.host_id).exists()
    finally:
        shutil.rmtree(home, ignore_errors=True)


NOT_DELEGATED = ("import json, sys; from pathlib import Path; "
                 "from workerguard.workers.host import HostProcesses; sys.stdin.readline(); "
                 "home = Path(sys.argv[1]); table = HostProcesses(sys.argv[2], "
                 "registry_dir=home / 'registry', log_dir=home / 'logs'); "
                 "print(json.dumps([table.mode, table.layout.note]), flush=True)")


def test_a_guard_of_another_user_in_a_group_not_delegated_to_it_falls_back_to_registry_and_says_why(
        workspace: Workspace, mount: Path, unit: Path):
    python, env = python_for(NOBODY)
    home = owned_home(NOBODY)
    try:
        proc, reader = started_in(workspace, unit, [python, "-c", NOT_DELEGATED, str(home),
                                                    workspace.host_id], NOBODY, env)
        mode, note = json.loads(reader.next(60, "the table's mode"))
        assert proc.wait(30) == 0
        assert mode == "registry"
        assert note.startswith(f"cgroup /{unit.relative_to(mount)} is not delegated to uid {NOBODY}")
        assert "Delegate=yes" in note
        assert [p for p in unit.iterdir() if p.is_dir()] == []  # nothing made where it is not its own
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_a_guard_worker_started_in_a_delegated_unit_moves_into_its_leaf_before_it_is_ready(
        harness: CeleryHarness, mount: Path, unit: Path, pool: str):
    """The real guard worker, started inside a ``trusted.delegate`` group: by the time it
    answers a ping it runs in ``<unit>/guard`` (main process and pool alike), before any
    instance; then an ``ensure`` starts the instance beside it."""
    os.setxattr(unit, "trusted.delegate", b"1")
    workspace = harness.workspace
    workspace.add_profile()
    workspace.guard_settings["identity"] = "cgroup"
    worker = harness.start_worker("--pool", pool, entry=(str(HERE / "in_cgroup.py"), str(unit),
                                                         "workerguard.cli"))
    assert cgroup_of(worker.pid, mount) == unit / "guard"
    guard_processes = [worker.pid, *(c.pid for c in psutil.Process(worker.pid).children(recursive=True))]
    assert {cgroup_of(pid, mount) for pid in guard_processes} == {unit / "guard"}
    assert cgroups.members(unit) == [] and cgroup_layout.inner_processes(unit) == {}

    result = harness.call("workerguard.ensure", "demo").result
    [pid] = result["started"]
    group = cgroup_of(pid, mount)
    assert group.relative_to(unit).parts[:3] == ("workerguard", workspace.host_id, "demo")
    assert cgroup_layout.inner_processes(unit) == {}
    assert sorted(p.name for p in unit.iterdir() if p.is_dir()) == ["guard", "workerguard"]
