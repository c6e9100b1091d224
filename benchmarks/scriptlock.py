"""A faithful Python port of ``ensure_rpa_worker.ps1``'s temp-file lock and start logic.

The script (see ``/work/shared/seed/SEED_EN.md``): while the lock file exists, sleep
100 ms; after 10 s call it stale, delete it and go on; then create it. With the lock
"held": if no worker runs, start one; every exit path deletes the file again.
Test-then-create is not atomic, which is the bug workerguard exists to fix.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psutil

POLL = 0.1
STALE_AFTER = 10.0


def acquire(path: Path, *, poll: float = POLL, stale_after: float = STALE_AFTER,
            on_wait: Callable[[], None] | None = None) -> None:
    """``while (Test-Path $lock) { Start-Sleep -Milliseconds 100; if stale: Remove-Item }``,
    then ``New-Item $lock``."""
    started = time.monotonic()
    while path.exists():
        if on_wait is not None:
            on_wait()
        if time.monotonic() - started > stale_after:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # "stale": broken, whoever holds it
            break
        time.sleep(poll)
    path.touch()


def release(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


@contextlib.contextmanager
def script_lock(path: Path) -> Iterator[None]:
    acquire(path)
    try:
        yield
    finally:
        release(path)


def running_workers(argv: Sequence[str]) -> list[int]:
    """``Get-Process``: every process whose command line is ``argv``."""
    wanted = list(argv)
    pids = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and proc.info["cmdline"] == wanted:
            pids.append(proc.pid)
    return pids


def ensure(path: Path, argv: Sequence[str], started: list[subprocess.Popen[bytes]]) -> str:
    """The script's ensure path: lock, "already running" or start one, unlock."""
    with script_lock(path):
        if running_workers(argv):
            return "already_running"
        # UseShellExecute=$false, CreateNoWindow=$true: one direct process.
        started.append(subprocess.Popen(list(argv), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True))
        return "started"


def holder_main(path: str) -> None:
    """Run as a separate process: take the lock and hold it until killed (a crashed holder)."""
    acquire(Path(path))
    print("locked", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    import sys

    holder_main(sys.argv[1])
    os._exit(0)
