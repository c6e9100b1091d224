"""Run one guard action with a failpoint: stop at a stage, say so, then block or go on.

usage: failpoint_guard.py CONFIG STAGE [GO_FILE]

Stages (each announces ``STAGE <name>`` on stdout when reached):
  lock_held            after the first discover, holding the lock: block forever
  after_stop           after stopping extras, before starting: block forever
  after_spawn          after spawning, before verifying: block forever
  lose_lock_at_spawn   delete our Redis lock key, wait for GO_FILE, then spawn

The tests SIGKILL this process at the stage, or let it go on; the guard's own code
is unchanged (the failpoints live in the process table it is given).
"""

import os
import sys
import time
from pathlib import Path
from typing import Any

from workerguard.config import load_config
from workerguard.ops.connect import redis_client
from workerguard.policy.guard import Guard
from workerguard.store import keys
from workerguard.workers.host import HostProcesses


def announce(stage: str) -> None:
    print(f"STAGE {stage}", flush=True)


def block() -> None:
    while True:
        time.sleep(3600)


class FailpointTable(HostProcesses):
    """The guard's process table with a failpoint at one stage (injected, not patched)."""

    def __init__(self, stage: str, go_file: Path | None, on_spawn: Any, *args: Any,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stage, self.go_file, self.on_spawn = stage, go_file, on_spawn
        self.discovers = 0

    def discover(self, *args: Any, **kwargs: Any) -> Any:
        found = super().discover(*args, **kwargs)
        self.discovers += 1
        if self.stage == "lock_held" and self.discovers == 1:
            announce(self.stage)
            block()
        return found

    def stop(self, *args: Any, **kwargs: Any) -> Any:
        outcome = super().stop(*args, **kwargs)
        if self.stage == "after_stop":
            announce(self.stage)
            block()
        return outcome

    def spawn(self, *args: Any, **kwargs: Any) -> Any:
        if self.stage == "lose_lock_at_spawn":
            self.on_spawn()
            announce(self.stage)
            while self.go_file is not None and not self.go_file.exists():
                time.sleep(0.01)
        result = super().spawn(*args, **kwargs)
        if self.stage == "after_spawn":
            announce(self.stage)
            block()
        return result


def main() -> None:
    config_path, stage = sys.argv[1], sys.argv[2]
    go_file = Path(sys.argv[3]) if len(sys.argv) > 3 else None
    config = load_config(config_path)
    client = redis_client(config.settings.redis_url or "", config.settings)
    settings = config.settings
    table = FailpointTable(stage, go_file,
                           lambda: client.delete(keys.lock(settings.host_id, "demo")),
                           settings.host_id, registry_dir=settings.registry_dir,
                           log_dir=settings.log_dir, identity=settings.identity,
                           cgroup_root=settings.cgroup_root)
    result = Guard(client, config, table=table).ensure(
        "demo", requested_by=f"failpoint {os.getpid()}").contract()
    print(f"RESULT {result['action']} {result['running']}", flush=True)


if __name__ == "__main__":
    main()
