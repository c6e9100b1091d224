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
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workerguard.probes.deadline import Deadline, http_get, tcp_connect
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
from workerguard.workers.childenv import helper_environment

log = logging.getLogger("workerguard.probes")
OUTPUT_LIMIT = 500
"""Characters of output kept in a result."""
_READ_LIMIT = 4096


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
    except Exception as exc:  # any error of a probe is its failure, never the prober's
        ok, output = False, failed_with(exc)
    return ProbeResult(ok, cut(output), time.monotonic() - t0, started_at)


def failed_with(exc: BaseException) -> str:
    """The reason of a probe that raised ``exc``: its type and message (a port that answers
    something other than HTTP raises ``http.client.BadStatusLine``, a command that cannot
    be executed an ``OSError``, ...)."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def failed(output: str) -> ProbeResult:
    """A failed probe that did not run (or whose run ended in an error of its own)."""
    return ProbeResult(False, cut(output), 0.0, time.time())


def wait_ready(spec: AnyProbe, target: ProbeTarget, started: float | None = None,
               cancel: threading.Event | None = None, gone: Callable[[], bool] | None = None,
               on_result: Callable[[ProbeResult], None] | None = None) -> ProbeResult:
    """Probe until the first pass, for ``start_timeout`` after ``started`` (the instance's
    start on the monotonic clock, ``time.monotonic()``; default now); return the last result.

    The first probe runs ``initial_delay`` after ``started``, the next ones every
    ``start_interval``; each one's timeout is clipped to the deadline, and one last probe
    starts at the deadline with its whole ``timeout``. So an instance that is ready at any
    moment within ``start_timeout`` passes, and a wait never gives up before the deadline
    (it ends at most ``timeout`` after it). Every wait is on the monotonic clock: a wall
    clock set back or forward changes nothing. ``cancel`` (set) or ``gone`` (True: the
    instance has ended) ends the wait early with the last result."""
    started = time.monotonic() if started is None else started
    end = started + spec.start_timeout
    cancel = cancel or threading.Event()
    due = started + spec.initial_delay
    result: ProbeResult | None = None
    while True:
        if cancel.wait(max(0.0, due - time.monotonic())):
            return result or failed("cancelled before the first probe")
        begun = time.monotonic()
        last = begun >= end
        result = run_probe(spec, target, timeout=spec.timeout if last else min(spec.timeout, end - begun),
                           cancel=cancel)
        if on_result is not None:
            _quietly(on_result, result)
        if result.ok or last or cancel.is_set() or (gone is not None and _quietly(gone)):
            return result
        due = min(max(due + spec.start_interval, time.monotonic()), end)


def _quietly(callback: Callable[..., object], *args: object) -> bool:
    """``callback(*args)``; an error of the caller's callback is logged and taken as False
    (a readiness wait goes on to its deadline: a failed attempt, never an aborted wait)."""
    try:
        return bool(callback(*args))
    except Exception:
        log.exception("readiness callback %r failed", getattr(callback, "__name__", callback))
        return False


def probe_environment(target: ProbeTarget) -> dict[str, str]:
    """The instance's environment (or a minimal one) as a helper's (``helper_environment``:
    none of the instance's marks, so discovery never counts the probe as the instance)
    plus what the probe is told: ``WORKERGUARD_PID``, ``WORKERGUARD_PROBED_INSTANCE`` and
    ``WORKERGUARD_INDEX``."""
    env = helper_environment("probe", target.env)
    env.update(WORKERGUARD_PID=str(target.pid), WORKERGUARD_PROBED_INSTANCE=target.instance,
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
    try:
        answer = http_get(url, Deadline(limit), _READ_LIMIT)
    except TimeoutError:
        return False, f"{url}: timed out after {limit:g} s"
    except OSError as exc:
        return False, f"{url}: {exc.strerror or exc}"
    except Exception as exc:  # BadStatusLine, too many redirects ...
        return False, f"{url}: {failed_with(exc)}"
    body = answer.body.decode("utf-8", "replace")
    return 200 <= answer.status < 300, f"HTTP {answer.status} from {answer.url}: {body}"


def _tcp(spec: TcpProbe, target: ProbeTarget, limit: float) -> tuple[bool, str]:
    host = expand(spec.host, target.values())
    port = spec.port + target.index
    try:
        tcp_connect(host, port, Deadline(limit)).close()
    except TimeoutError:
        return False, f"connect to {host}:{port}: timed out after {limit:g} s"
    except OSError as exc:
        return False, f"connect to {host}:{port}: {exc.strerror or exc}"
    return True, f"connected to {host}:{port}"


def _heartbeat(spec: HeartbeatProbe, target: ProbeTarget) -> tuple[bool, str]:
    path = Path(expand(spec.path, target.values())).expanduser()
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False, f"no heartbeat file {path}"
    ok = age <= spec.max_age
    return ok, f"heartbeat {max(age, 0.0):.1f} s old (max_age {spec.max_age:g} s): {path}"
