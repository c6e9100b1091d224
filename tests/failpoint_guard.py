"""Run one guard action with a failpoint: stop at a stage, say so, then block or go on.

usage: failpoint_guard.py CONFIG STAGE [GO_FILE]

Stages (each announces ``STAGE <name>`` on stdout when reached):
  lock_held            after the first discover, holding the lock: block forever
  after_stop           after stopping extras, before starting: block forever
  after_spawn          after spawning, before verifying: block forever
  lose_lock_at_spawn   delete our Redis lock key, wait for GO_FILE, then spawn

The tests SIGKILL this process at the stage, or let it go on; the guard's own code
is unchanged (the failpoints wrap the functions it calls).
"""

import os
import sys
import time
from pathlib import Path
from typing import Any

from workerguard import guard as guard_module
from workerguard.config import load_config
from workerguard.connect import redis_client


def announce(stage: str) -> None:
    print(f"STAGE {stage}", flush=True)


def block() -> None:
    while True:
        time.sleep(3600)


def main() -> None:
    config_path, stage = sys.argv[1], sys.argv[2]
    go_file = Path(sys.argv[3]) if len(sys.argv) > 3 else None
    config = load_config(config_path)
    client = redis_client(config.settings.redis_url or "")
    real_discover = guard_module.discover
    real_stop = guard_module.stop_instances
    real_spawn = guard_module.spawn_instances
    calls = {"discover": 0}

    def discover(*args: Any, **kwargs: Any) -> Any:
        found = real_discover(*args, **kwargs)
        calls["discover"] += 1
        if stage == "lock_held" and calls["discover"] == 1:
            announce(stage)
            block()
        return found

    def stop_instances(*args: Any, **kwargs: Any) -> Any:
        outcome = real_stop(*args, **kwargs)
        if stage == "after_stop":
            announce(stage)
            block()
        return outcome

    def spawn_instances(*args: Any, **kwargs: Any) -> Any:
        if stage == "lose_lock_at_spawn":
            client.delete(f"workerguard:lock:{config.settings.host_id}:demo")
            announce(stage)
            while go_file is not None and not go_file.exists():
                time.sleep(0.01)
        result = real_spawn(*args, **kwargs)
        if stage == "after_spawn":
            announce(stage)
            block()
        return result

    guard_module.discover = discover
    guard_module.stop_instances = stop_instances
    guard_module.spawn_instances = spawn_instances
    result = guard_module.Guard(client, config).ensure("demo", requested_by=f"failpoint {os.getpid()}")
    print(f"RESULT {result['action']} {result['running']}", flush=True)


if __name__ == "__main__":
    main()
