"""Run a module from inside a cgroup, as systemd starts a unit's main process in its group.

usage: in_cgroup.py GROUP MODULE [ARGS...]   (e.g. ``in_cgroup.py /sys/fs/cgroup/x.service
workerguard.cli worker ...``)

The process moves itself into GROUP (writing its pid to ``GROUP/cgroup.procs``) before the
module's first line runs, then runs MODULE as ``__main__`` with ARGS.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path


def main() -> None:
    group, module, *args = sys.argv[1:]
    (Path(group) / "cgroup.procs").write_text(str(os.getpid()))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
