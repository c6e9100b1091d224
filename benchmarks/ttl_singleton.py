"""The second system of the failover row: a singleton kept by a plain TTL lock (redis-py's
``Lock``), without a leash. One contender runs on each simulated host (benchmarks/failover.py
boots it in the host's namespaces instead of a guard worker):

    python ttl_singleton.py REDIS_URL LOCK TTL PERIOD GROUP_DIR LEASE_FILE ALIVE_FILE -- argv...

It blocks on the lock (``timeout = TTL``, polling every 50 ms); once it holds it, it starts
the worker in a new cgroup below GROUP_DIR (where the bed's monitor counts instances) and
extends the lock every PERIOD (``reacquire``: the TTL again). It runs the worker while it
believes it holds the lock: a renewal that fails on the network (timeout, no route) leaves
the belief unchanged, as python-redis-lock's auto-renewal thread or a ``with lock:`` block
does; only Redis saying the lock is someone else's (``LockNotOwnedError``) ends it: the
worker's group is killed and the contender waits for the lock again.

For the monitor's ``steady`` it writes what it believes its deadline is (the send time of
its last successful extend + TTL, ``CLOCK_BOOTTIME``) to LEASE_FILE, and touches ALIVE_FILE
after every answer from Redis (the bench's "host is live").
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.exceptions import LockError, LockNotOwnedError, RedisError
from redis.retry import Retry


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    os.replace(temp, path)


def _start(group_dir: Path, argv: list[str], n: int) -> tuple[subprocess.Popen[bytes], Path]:
    group = group_dir / f"lock{os.getpid()}-{n}-{secrets.token_hex(3)}"  # pids repeat across boots
    group.mkdir(parents=True)
    procs = group / "cgroup.procs"

    def join() -> None:
        procs.write_text("0")

    worker = subprocess.Popen(argv, preexec_fn=join)  # the contender is single-threaded
    return worker, group


def _kill(worker: subprocess.Popen[bytes], group: Path) -> None:
    with contextlib.suppress(OSError):
        (group / "cgroup.kill").write_text("1")
    worker.wait()
    for _ in range(200):
        try:
            group.rmdir()
            return
        except OSError:
            time.sleep(0.01)


def main(args: list[str]) -> None:
    split = args.index("--")
    url, name, ttl, period, group_dir, lease_file, alive = args[:split]
    argv = args[split + 1:]
    ttl_s, period_s = float(ttl), float(period)
    client = redis.Redis.from_url(url, socket_timeout=period_s, socket_connect_timeout=period_s,
                                  retry=Retry(NoBackoff(), 0))
    alive_file, lease = Path(alive), Path(lease_file)
    starts = 0
    while True:
        lock = client.lock(name, timeout=ttl_s, sleep=0.05)
        try:
            sent = boottime()
            held = lock.acquire(blocking=True, blocking_timeout=period_s)
            alive_file.touch()
        except RedisError:
            time.sleep(period_s)
            continue
        if not held:
            continue
        _write(lease, f"{sent + ttl_s:.6f}\n")
        starts += 1
        worker, group = _start(Path(group_dir), argv, starts)
        while worker.poll() is None:
            time.sleep(period_s)
            try:
                sent = boottime()
                lock.reacquire()
                alive_file.touch()
                _write(lease, f"{sent + ttl_s:.6f}\n")
            except LockNotOwnedError:  # Redis says it is another's: only now does it stop
                alive_file.touch()
                break
            except (RedisError, LockError):  # the network failed: it still believes it holds it
                continue
        _kill(worker, group)
        with contextlib.suppress(RedisError, LockError):
            lock.release()


if __name__ == "__main__":
    main(sys.argv[1:])
