"""A guard's process table in whatever cgroup it was put in, for tests/test_cgroup_layout.py.

    delegated_guard.py HOST HOME COUNT COMMAND_JSON

It waits for ``go`` on stdin (the test first moves it into a delegated group, as systemd
does with a unit's main process), then builds the process table of HOST in cgroup mode
(runtime files and logs under HOME), finds the instances already there, starts COUNT more
running COMMAND and prints one JSON line: its layout, its own cgroup, what it found and
started. On ``stop`` it stops the first instance (signals) and kills the others (their
groups' ``cgroup.kill``), then prints the groups of HOST that are left.
"""

import json
import sys
from pathlib import Path

from workerguard.config.schema import Profile
from workerguard.workers.cgroups import own_cgroup
from workerguard.workers.host import HostProcesses
from workerguard.workers.model import Instance, Leftover


def entry(instance: Instance) -> dict[str, object]:
    return {"pid": instance.pid, "cgroup": instance.cgroup, "id": instance.instance_id}


def main() -> None:
    host, home, count, command = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    profile = Profile.model_validate({"name": "demo", "command": json.loads(command),
                                      "start_seconds": 0.3, "stop_timeout": 3, "max_workers": 10})
    if sys.stdin.readline().strip() != "go":
        return
    table = HostProcesses(host, registry_dir=home / "registry", log_dir=home / "logs",
                          identity="cgroup")
    found = table.discover([profile], [profile]).instances["demo"]
    outcome = table.spawn(profile, count, taken=[i.index for i in found])
    layout = table.layout
    print(json.dumps({
        "kind": layout.kind, "root": str(layout.root), "guard_leaf": str(layout.guard_leaf),
        "legacy": [str(p) for p in layout.legacy], "own": own_cgroup(),
        "found": [entry(i) for i in found], "started": [entry(i) for i in outcome.started],
        "failures": [f.describe() for f in outcome.failures]}), flush=True)
    if sys.stdin.readline().strip() != "stop":
        return
    known = [*found, *outcome.started]
    stopped = table.stop(known[:1], profile.stop_signal, profile.stop_timeout).stopped
    killed = table.clean([Leftover(i.profile, i.instance_id or "", i.members, i.cgroup)
                          for i in known[1:]])
    assert table.cgroups is not None
    left = [str(group) for _, _, group in table.cgroups.instances(host)]
    print(json.dumps({"stopped": sorted(stopped), "killed": sorted(killed), "left": left}),
          flush=True)


if __name__ == "__main__":
    main()
