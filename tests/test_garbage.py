"""Garbage collected: empty groups, probe dirs and temp records go; nothing live or young does.

Real cgroup directories under a cgroup root of the test's own (never the shared one: other
guards' groups are not the test's to remove), real instances, a real guard sweep and real
``workerguard prune`` processes. Ages are made by setting mtimes back (what the collector
reads), never by waiting.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import Workspace
from tests.support import alive, cli_env, run_cli, short_tmpdir
from workerguard.ops.metrics import GuardMetrics
from workerguard.policy.guard import Guard
from workerguard.timing import LEFTOVER_AGE
from workerguard.workers import cgroups, garbage
from workerguard.workers.discover import SPAWN_GRACE

HOUR = 3600.0
DAY = 86_400.0


def backdate(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def remove_tree(root: Path) -> None:
    """Kill what is left in the test's cgroup root, then remove its groups bottom-up."""
    if not root.exists():
        return
    groups = sorted((Path(d) for d, _, _ in os.walk(root)), key=lambda p: len(p.parts), reverse=True)
    for group in groups:
        cgroups.kill(group)
    for group in groups:
        group.rmdir()


@pytest.fixture
def own_roots(workspace: Workspace) -> Iterator[tuple[Path, Path]]:
    """A cgroup root and a runtime dir of this test's own; cgroup identity."""
    mount = cgroups.cgroup2_mount()
    root = mount / f"wg-gc-{uuid.uuid4().hex[:8]}" if mount is not None else None
    if root is None or not cgroups.CgroupTree(root).usable():
        if os.environ.get("CI"):
            raise AssertionError("cgroup v2 is not usable here")  # CI fails, never skips
        pytest.skip("no writable cgroup v2 hierarchy")
    runtime = short_tmpdir("wg-gc-rt-")
    workspace.guard_settings.update(identity="cgroup", cgroup_root=str(root),
                                    runtime_dir=str(runtime / "rt"))
    workspace.add_profile("demo")
    workspace.write_config()
    yield root, runtime / "rt"
    remove_tree(root)
    shutil.rmtree(runtime, ignore_errors=True)


def empty_group(root: Path, host: str, profile: str = "demo", age: float = HOUR) -> Path:
    group = root / host / profile / uuid.uuid4().hex
    group.mkdir(parents=True)
    return backdate(group, age)


def temp_record(registry: Path, host: str, age: float) -> Path:
    directory = registry / host / "demo"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = directory / f".{uuid.uuid4().hex}.abc123.tmp"
    temp.write_text('{"host": "')
    return backdate(temp, age)


def test_a_sweep_removes_its_own_leftovers_and_never_a_live_young_or_other_hosts_group(
        workspace: Workspace, redis_client: redis.Redis, own_roots: tuple[Path, Path]):
    root, runtime = own_roots
    config = workspace.config()
    metrics = GuardMetrics(config)
    guard = Guard(redis_client, config, hooks=[metrics])
    [live] = guard.ensure("demo").started
    [instance] = workspace.table().discover([config.profile("demo")],
                                            config.profiles.values()).instances["demo"]
    assert instance.cgroup is not None
    backdate(Path(instance.cgroup), DAY)  # old, but a process lives in it

    host = workspace.host_id
    old_empty = empty_group(root, host)
    young_empty = empty_group(root, host, age=SPAWN_GRACE / 3)
    others = empty_group(root, f"{host}-other", age=DAY)  # another host id: prune's, not a sweep's
    backdate(others.parent.parent, DAY)
    old_probe, young_probe = root / f"{cgroups.PROBE_PREFIX}4194304", root / f"{cgroups.PROBE_PREFIX}4194305"
    for probe in (old_probe, young_probe):
        probe.mkdir()
    backdate(old_probe, 2 * LEFTOVER_AGE)
    registry = runtime / "registry"
    old_temp = temp_record(registry, host, 2 * LEFTOVER_AGE)
    young_temp = temp_record(registry, host, LEFTOVER_AGE / 2)

    guard.sweep()
    assert not old_empty.exists() and not old_probe.exists() and not old_temp.exists()
    assert young_empty.exists() and young_probe.exists() and young_temp.exists()
    assert others.exists(), "a sweep leaves other host ids to prune"
    assert Path(instance.cgroup).exists() and alive(live)
    assert [i.pid for i in workspace.table().discover(
        [config.profile("demo")], config.profiles.values()).instances["demo"]] == [live]
    samples = {(s.name, s.labels.get("host")): s.value
               for family in metrics.registry.collect() for s in family.samples}
    assert samples[("workerguard_stale_groups", host)] == 2  # the young one, the other host's
    assert samples[("workerguard_garbage_removed_total", host)] == 3


def prune(workspace: Workspace, *args: str) -> str:
    done = run_cli("prune", "--local", "--config", str(workspace.config_path), *args,
                   env=cli_env(), timeout=120)
    assert done.returncode == 0, (done.stdout, done.stderr)
    return done.stdout


def listed(output: str) -> set[Path]:
    return {Path(line.strip()) for line in output.splitlines() if line.startswith("  ")}


def test_prune_removes_empty_groups_of_host_ids_not_served_for_older_than_and_dry_run_lists_them(
        workspace: Workspace, own_roots: tuple[Path, Path]):
    root, runtime = own_roots
    host, registry = workspace.host_id, runtime / "registry"
    gone_host, served_host, busy_host = f"{host}-gone", f"{host}-served", f"{host}-busy"
    gone = [empty_group(root, gone_host, "a"), empty_group(root, gone_host, "b")]
    young = empty_group(root, gone_host, "c", age=SPAWN_GRACE / 3)
    served = empty_group(root, served_host)
    busy_empty = empty_group(root, busy_host)
    busy = empty_group(root, busy_host, "worker")
    sleeper = workspace.tracker.sleeper("--tag", f"{host}-in-a-group")
    cgroups.join(busy, sleeper.pid)
    old_temp = temp_record(registry, gone_host, 2 * LEFTOVER_AGE)
    for profile_dir in (*(g.parent for g in (*gone, served, busy_empty, busy)), old_temp.parent):
        backdate(profile_dir, HOUR)
    for stamp, age in ((root / gone_host, 2 * DAY), (root / busy_host, 2 * DAY),
                       (root / served_host, HOUR), (registry / gone_host, 2 * DAY)):
        backdate(stamp, age)
    removable = {*gone, gone[0].parent, gone[1].parent, busy_empty, busy_empty.parent,
                 old_temp, old_temp.parent, registry / gone_host}

    assert listed(prune(workspace, "--older-than", "3d")) == set()
    output = prune(workspace, "--dry-run", "--older-than", "1d")
    assert "[dry-run] would remove" in output
    assert listed(output) == removable, output
    assert all(path.exists() for path in removable)

    output = prune(workspace, "--older-than", "1d")
    assert listed(output) == removable, output
    assert not any(path.exists() for path in removable)
    assert young.exists() and served.exists() and busy.exists()
    assert cgroups.members(busy) == [sleeper.pid] and alive(sleeper.pid)
    assert (root / gone_host).exists(), "its young group is still in it"


def test_garbage_of_the_registry_goes_but_records_and_corrupt_records_stay(tmp_path: Path):
    registry = tmp_path / "registry"
    places = garbage.Places(None, registry)
    old_temp = temp_record(registry, "h", 2 * LEFTOVER_AGE)
    young_temp = temp_record(registry, "h", LEFTOVER_AGE / 2)
    record = registry / "h" / "demo" / "abc.json"
    record.write_text("{}")
    corrupt = registry / "h" / "demo" / "def.json.corrupt-20260101T000000-000000001"
    corrupt.write_text("{")
    for path in (record, corrupt):
        backdate(path, 30 * DAY)
    emptied = temp_record(registry, "gone", 2 * LEFTOVER_AGE)
    for directory in (emptied.parent, emptied.parent.parent):
        backdate(directory, 2 * DAY)

    collected = garbage.collect(places, "h", unserved_for=DAY)
    assert set(collected.removed) == {old_temp, emptied, emptied.parent, emptied.parent.parent}
    assert young_temp.exists() and record.exists() and corrupt.exists()
    assert not (registry / "gone").exists()
