"""Run a module with ``pidfd_open`` failing as on a kernel older than 5.3 (``ENOSYS``).

usage: no_pidfd.py MODULE [ARGS...]   (e.g. ``no_pidfd.py workerguard.cli worker ...``)

A seccomp filter makes the system call itself fail with ``ENOSYS`` for this process, its
threads and everything it starts (as a container runtime's seccomp profile or an old
kernel would). Where seccomp is not available, ``os.pidfd_open`` is replaced by one that
raises ``OSError(ENOSYS)`` (Python code only: the same for workerguard, which calls it
through ``os``). Announces ``PIDFD_OPEN seccomp`` or ``PIDFD_OPEN injected`` on stdout.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import runpy
import struct
import sys
from typing import NoReturn

PIDFD_OPEN_NR = 434
"""pidfd_open's number on every architecture with the unified table (x86_64, aarch64)."""
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
LD_W_ABS, JEQ_K, RET_K = 0x20, 0x15, 0x06


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _seccomp() -> bool:
    """Install the filter: syscall 434 of this architecture fails ENOSYS. True if done."""
    arch = AUDIT_ARCH.get(platform.machine())
    if arch is None or not sys.platform.startswith("linux"):
        return False
    program = [
        (LD_W_ABS, 0, 0, 4),                              # A = seccomp_data.arch
        (JEQ_K, 0, 3, arch),                              # another ABI: allow
        (LD_W_ABS, 0, 0, 0),                              # A = seccomp_data.nr
        (JEQ_K, 0, 1, PIDFD_OPEN_NR),
        (RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.ENOSYS),
        (RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
    raw = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buffer = ctypes.create_string_buffer(raw, len(raw))
    prog = SockFprog(len(program), ctypes.cast(buffer, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return False
    return bool(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) == 0)


def _injected(pid: int, flags: int = 0) -> NoReturn:
    raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))


def forbid_pidfd_open() -> str:
    if _seccomp():
        try:
            os.close(os.pidfd_open(os.getpid()))
        except OSError as exc:
            if exc.errno == errno.ENOSYS:
                return "seccomp"
    os.pidfd_open = _injected
    return "injected"


def main() -> None:
    how = forbid_pidfd_open()
    print(f"PIDFD_OPEN {how}", flush=True)
    module, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
