"""A cluster instance starts behind its leash (workers/leashed.py): in its grant's slot, with
its token in its environment and its record, found again by discovery with that token, and
ended whole by the leash (children included) the moment its lease file says the lease
lapsed, with no guard involved; in both identity modes."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from tests import test_identity
from tests.conftest import Workspace
from tests.support import poll_for
from workerguard.ops.primary_watch import boottime
from workerguard.workers.leashed import LeaseTerms

mode = test_identity.mode
"""Both identity modes (cgroup, registry), as the identity tests run them."""


def _write(path: Path, deadline: float) -> None:
    temp = path.with_suffix(".tmp")
    temp.write_text(f"{deadline:.6f}\n", encoding="ascii")
    os.replace(temp, path)


def _tree(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _tree_of_at_least(pid: int, size: int) -> list[int]:
    tree = _tree(pid)
    return tree if len(tree) >= size else []


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def test_a_cluster_instance_runs_behind_its_leash_and_knows_its_grant(workspace: Workspace,
                                                                      mode: str, tmp_path: Path):
    workspace.add_profile("demo")
    profile = workspace.config().profile("demo")
    lease_file = tmp_path / "demo.1.lease"
    _write(lease_file, boottime() + 120)
    terms = LeaseTerms(slot=1, token=1_796_402_245_115_190, lease_file=lease_file, grace=0.5)
    outcome = workspace.table().spawn(profile, 1, leases=[terms])
    assert not outcome.failures
    [started] = outcome.started
    assert (started.index, started.token) == (1, terms.token)
    assert "leash.py" in " ".join(started.cmdline)  # the leash is the instance's main process
    [worker] = poll_for(lambda: _tree(started.pid), timeout=30, message="the leashed worker")
    env = psutil.Process(worker).environ()
    assert env["WORKERGUARD_FENCING_TOKEN"] == str(terms.token)
    assert (env["WORKERGUARD_SLOT"], env["WORKERGUARD_INDEX"]) == ("1", "1")
    assert env["WORKERGUARD_SCOPE"] == "cluster"
    assert env["WORKERGUARD_LEASE_FILE"] == str(lease_file)
    [found] = workspace.table().discover([profile], [profile]).instances["demo"]
    assert (found.pid, found.index, found.token) == (started.pid, 1, terms.token)
    assert (started.cgroup is not None) == (mode == "cgroup")


def test_a_lapsed_lease_ends_the_whole_instance_with_no_guard_looking(workspace: Workspace,
                                                                      mode: str, tmp_path: Path):
    workspace.add_profile("demo", "--children", "2")
    profile = workspace.config().profile("demo")
    lease_file = tmp_path / "demo.0.lease"
    _write(lease_file, boottime() + 120)
    outcome = workspace.table().spawn(profile, 1, leases=[LeaseTerms(0, 7, lease_file, 0.5)])
    [started] = outcome.started
    tree = poll_for(lambda: _tree_of_at_least(started.pid, 3), timeout=30,
                    message="the worker and its two children")
    _write(lease_file, 0.0)  # what store.leases writes when the lease is lost
    poll_for(lambda: not _alive([started.pid, *tree]), timeout=30,
             message="every process of the instance to be gone")
    assert lease_file.with_name(lease_file.name + ".fenced").exists()  # a self-fence, said so
    assert workspace.table().discover([profile], [profile]).instances["demo"] == []
