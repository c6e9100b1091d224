"""Run one probe against one instance and say what happened; never raises for a failed probe.

Command probes run in a session of their own, with stdout and stderr in one pipe
read by the calling thread (the first 4 KB are kept, the rest is drained and
dropped). When the probe's main process exits, anything it left behind in its
process group is killed; when it outlives its timeout, the whole group is killed.
The group is always signalled while its leader is still unreaped, so its id cannot
have been reused by an unrelated process.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workerguard.probes.spec import (
    AnyProbe,
    CommandProbe,
    HeartbeatProbe,
    HttpProbe,
    ProbeTarget,
    TcpProbe,
    expand,
)
from workerguard.timing import PROBE_SLICE
from workerguard.workers.childenv import base_environment

OUTPUT_LIMIT = 500
"""Characters of output kept in a result."""
_READ_LIMIT = 4096


def _http_opener() -> urllib.request.OpenerDirector:
    """HTTP(S) only, redirects included, no proxy from the environment (a probe of
    127.0.0.1 must not go through one) and no file:, ftp: or data: handlers."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler({}), urllib.request.HTTPHandler(),
                    urllib.request.HTTPSHandler(), urllib.request.HTTPRedirectHandler(),
                    urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


_OPENER = _http_opener()


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    output: str
    duration: float
    """Seconds the probe took."""
    started_at: float
    """When it started (epoch seconds)."""


def cut(text: str, limit: int = OUTPUT_LIMIT) -> str:
    """``text`` stripped and cut to ``limit`` characters (marked with an ellipsis)."""
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def run_probe(spec: AnyProbe, target: ProbeTarget, timeout: float | None = None,
              cancel: threading.Event | None = None) -> ProbeResult:
    """Probe ``target`` once. ``timeout`` overrides the spec's (a readiness wait clips it to
    its deadline); ``cancel`` ends a running command probe early (as a failure)."""
    limit = spec.timeout if timeout is None else max(0.01, timeout)
    started_at, t0 = time.time(), time.monotonic()
    try:
        if isinstance(spec, CommandProbe):
            ok, output = _command(spec, target, limit, cancel)
        elif isinstance(spec, HttpProbe):
            ok, output = _http(spec, target, limit)
        elif isinstance(spec, TcpProbe):
            ok, output = _tcp(spec, target, limit)
        else:
            ok, output = _heartbeat(spec, target)
    except (OSError, ValueError) as exc:  # e.g. a command that cannot be executed
        ok, output = False, f"{type(exc).__name__}: {exc}"
    return ProbeResult(ok, cut(output), time.monotonic() - t0, started_at)


def wait_ready(spec: AnyProbe, target: ProbeTarget, started_at: float | None = None,
               deadline: float | None = None, cancel: threading.Event | None = None,
               gone: Callable[[], bool] | None = None,
               on_result: Callable[[ProbeResult], None] | None = None) -> ProbeResult:
    """Probe every ``start_interval`` until the first pass or the deadline (epoch seconds;
    default ``started_at + start_timeout``); return the last result. The first probe runs
    ``initial_delay`` after ``started_at`` (default now). No probe outlives the deadline:
    the last one's timeout is clipped to it. ``cancel`` (set) or ``gone`` (True: the
    instance has ended) ends the wait early with the last result."""
    started_at = time.time() if started_at is None else started_at
    end = started_at + spec.start_timeout if deadline is None else deadline
    cancel = cancel or threading.Event()
    cancel.wait(max(0.0, started_at + spec.initial_delay - time.time()))
    while True:
        result = run_probe(spec, target, timeout=min(spec.timeout, end - time.time()),
                           cancel=cancel)
        if on_result is not None:
            on_result(result)
        pause = spec.start_interval - result.duration
        if (result.ok or cancel.is_set() or time.time() + max(pause, 0.0) >= end
                or (gone is not None and gone())):
            return result
        cancel.wait(max(0.0, pause))


def probe_environment(target: ProbeTarget) -> dict[str, str]:
    """The instance's environment (or a minimal one) plus the probe's marks."""
    env = dict(target.env) if target.env is not None else base_environment()
    env.update(WORKERGUARD_PID=str(target.pid), WORKERGUARD_INSTANCE=target.instance,
               WORKERGUARD_INDEX=str(target.index))
    return env


def _command(spec: CommandProbe, target: ProbeTarget, limit: float,
             cancel: threading.Event | None) -> tuple[bool, str]:
    if sys.platform == "win32":  # process groups and pidfds: POSIX only (a failed probe)
        raise OSError("command probes need a POSIX host; use an http, tcp or heartbeat probe")
    values = target.values()
    argv = [expand(arg, values) for arg in spec.command]
    deadline = time.monotonic() + limit
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=probe_environment(target), cwd=target.cwd,
                            start_new_session=True, close_fds=True)
    assert proc.stdout is not None
    kept = bytearray()
    verdict: str | None = None
    with contextlib.ExitStack() as stack:
        stack.callback(proc.stdout.close)
        selector = stack.enter_context(selectors.DefaultSelector())
        os.set_blocking(proc.stdout.fileno(), False)
        selector.register(proc.stdout, selectors.EVENT_READ)
        pidfd = _pidfd(proc.pid)
        if pidfd is not None:
            stack.callback(os.close, pidfd)
            selector.register(pidfd, selectors.EVENT_READ)
        while not _exited(proc.pid):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                verdict = f"timed out after {limit:g} s"
                break
            if cancel is not None and cancel.is_set():
                verdict = "cancelled"
                break
            slice_ = remaining if pidfd is not None and cancel is None else min(remaining, PROBE_SLICE)
            for key, _events in selector.select(slice_):
                if key.fileobj is proc.stdout and not _drain(proc.stdout.fileno(), kept):
                    selector.unregister(proc.stdout)
        # Leader exited or is given up on, and still unreaped: its group id is still ours.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _drain(proc.stdout.fileno(), kept)
    text = kept.decode("utf-8", "replace")
    if verdict is not None:
        return False, f"{verdict}: {text}" if text.strip() else verdict
    code = proc.returncode
    if code == 0:
        return True, text
    status = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    return False, f"{status}: {text}" if text.strip() else status


def _pidfd(pid: int) -> int | None:
    if sys.platform != "linux":
        return None
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux >= 5.3: poll in slices
        return None


def _exited(pid: int) -> bool:
    """True once ``pid`` (our child) has exited, without reaping it."""
    if sys.platform == "win32":  # not reached: _command refuses first
        raise OSError("POSIX only")
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped by someone else
        return True
    return info is not None


def _drain(fd: int, kept: bytearray) -> bool:
    """Read what is available into ``kept`` (up to the limit; the rest is dropped).
    False at end of file."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not chunk:
            return False
        kept += chunk[: max(0, _READ_LIMIT - len(kept))]


def _http(spec: HttpProbe, target: ProbeTarget, limit: float) -> tuple[bool, str]:
    url = expand(spec.url, target.values(spec.port))
    # The spec admits only http:// and https:// urls, and the opener only those schemes.
    request = urllib.request.Request(url, method="GET",  # noqa: S310
                                     headers={"User-Agent": "workerguard-probe"})
    try:
        with _OPENER.open(request, timeout=limit) as response:
            status = int(response.status)
            body = response.read(_READ_LIMIT).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:  # a non-2xx status that urllib raises for
        with contextlib.closing(exc):
            body = exc.read(_READ_LIMIT).decode("utf-8", "replace") if exc.fp is not None else ""
        return False, f"HTTP {exc.code} from {url}: {body}"
    except urllib.error.URLError as exc:
        return False, f"{url}: {exc.reason}"
    except (TimeoutError, OSError) as exc:
        return False, f"{url}: {type(exc).__name__}: {exc or 'timed out'}"
    ok = 200 <= status < 300
    return ok, f"HTTP {status} from {url}: {body}"


def _tcp(spec: TcpProbe, target: ProbeTarget, limit: float) -> tuple[bool, str]:
    host = expand(spec.host, target.values())
    port = spec.port + target.index
    try:
        with socket.create_connection((host, port), timeout=limit):
            return True, f"connected to {host}:{port}"
    except TimeoutError:
        return False, f"connect to {host}:{port}: timed out after {limit:g} s"
    except OSError as exc:
        return False, f"connect to {host}:{port}: {exc.strerror or exc}"


def _heartbeat(spec: HeartbeatProbe, target: ProbeTarget) -> tuple[bool, str]:
    path = Path(expand(spec.path, target.values())).expanduser()
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False, f"no heartbeat file {path}"
    ok = age <= spec.max_age
    return ok, f"heartbeat {max(age, 0.0):.1f} s old (max_age {spec.max_age:g} s): {path}"
