"""Signal a process through a handle, never by a bare number.

A pid is only a number: between "this pid is our worker" and ``kill(pid)`` the worker
can exit, be reaped, and its number go to a bystander. So every signal the guard sends
to a process of an instance goes through ``send_signal``:

1. ``os.pidfd_open(pid)``: a handle on whatever process holds the pid now;
2. verify that this is the very process (``identity.alive``: same pid, same start
   ticks) *while the handle is open*: if it passes, the handle names our process (ours
   held the pid from its start until the check, so also when the handle was opened);
3. ``signal.pidfd_send_signal``: the kernel delivers to the handle's process or, if it
   has exited since, to no one (``ESRCH``), never to a later holder of the number.

Where ``pidfd_open`` is unavailable (``ENOSYS``: a kernel before 5.3 or another system;
``EPERM``: a seccomp filter; ``EMFILE``/``ENFILE``: no descriptor left), the check runs
immediately before ``os.kill``: a window of microseconds in which a reused pid could be
hit remains there, and only there.

``send_signal_if`` is the same with another check: a member of an instance's cgroup is
verified by its membership (``pid in cgroup.procs``) instead of a start read earlier.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable

from workerguard.workers.identity import alive


def send_signal(pid: int, start: int, sig: int) -> bool:
    """Send ``sig`` to the process ``(pid, start)`` if it is still that process (and not a
    zombie). True if it was sent; False if it is gone or ``pid`` names another process."""

    def still_ours() -> bool:
        try:
            return alive(pid, start)
        except OSError:
            return False  # cannot tell: never signal what we cannot verify

    return send_signal_if(pid, sig, still_ours)


def send_signal_if(pid: int, sig: int, is_target: Callable[[], bool]) -> bool:
    """Send ``sig`` to ``pid`` if ``is_target()`` holds, checked while a pidfd pins the
    process (see the module docstring). True if it was sent."""
    handle = _pidfd(pid)
    if handle is None:  # no handle: check, then signal by number at once
        if not is_target():
            return False
        return _kill(pid, sig)
    try:
        if not is_target():
            return False
        if sys.platform != "linux":  # not reached: only Linux has pidfds
            return False
        try:
            signal.pidfd_send_signal(handle, sig)
        except ProcessLookupError:
            return False  # exited after the check: nothing else can get it
        except PermissionError:
            return False
        return True
    finally:
        os.close(handle)


def _pidfd(pid: int) -> int | None:
    """A pidfd for ``pid``; None where there is none to have (any ``OSError``: ``ENOSYS``,
    ``EPERM``, ``EMFILE`` ...) or no such process (``ESRCH``: then the check fails too)."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None or not hasattr(signal, "pidfd_send_signal"):
        return None
    try:
        return int(opener(pid))
    except OSError:
        return None


def _kill(pid: int, sig: int) -> bool:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
        return True
    return False
