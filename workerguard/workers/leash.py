"""The leash: a cluster instance's main process, which kills the instance when its lease lapses.

Run as ``python -I leash.py --lease-file F [--group G] [--grace S] [--signal SIG] -- argv...``
(standard library only, so it starts in milliseconds and imports nothing of workerguard or
of the worker's environment). It forks the worker with ``PR_SET_PDEATHSIG = SIGKILL``,
forwards stop signals to it, and exits with the worker's status (a signal death is
re-raised on itself).

The lease file holds one number: the hard deadline in ``CLOCK_BOOTTIME`` seconds (a
suspend counts as elapsed time; no wall clock takes part). The guard rewrites it
atomically after each acknowledged renewal, and writes 0 when the lease is lost. The
leash reads it at least every ``POLL`` seconds:

* at ``deadline - grace`` it sends ``SIG`` (the profile's stop signal) to the worker;
* at ``deadline`` it writes a marker (``F.fenced``, JSON) and kills the whole instance:
  ``1`` into ``G/cgroup.kill`` (itself included), or, without a group, SIGKILL to its
  process group.

When the worker exits, before its deadline or because of the stop signal, the leash kills
what it left in the group (a daemon that left the session) before it exits itself: with
its worker gone the instance is over. It does all this whether the guard is alive,
stopped or cut off from Redis: that is what makes
"at most N" hold through partitions (inequality I). A lease file that is missing at the
start means no lease: the instance is killed at once. One that becomes unreadable later
keeps the last deadline read. The leash dies only if killed itself, and the worker then
dies with it (PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

assert sys.platform != "win32", "the leash is POSIX (fork, process groups, CLOCK_BOOTTIME)"

POLL = 0.3
"""The longest the leash sleeps between two looks at its lease file and the clock. Each
wakeup of a sleeping Python costs ~35-70 µs of CPU here (a bare ``time.sleep(0.05)`` loop:
0.07 % of a core on this 2-core VM; 10 leashes polling every 50 ms: 0.3 % each, every 100 ms:
0.09-0.12 %), against check F10's budget of 0.1 % per leash. Over F10's 5 minutes the
busiest of 10 leashes took 0.115 % at 200 ms (median 0.090 %), 0.101 % at 250 ms (median
0.076 %) and 0.093 % at 300 ms (median 0.085 %; a 10 ms tick is 0.003 % of 300 s). Nothing
it bounds needs less:
the stop signal and the kill are timed to the deadline itself (the sleep ends there), a
timer that ran out while the host was frozen wakes the leash at the thaw, a lease the guard
knows lost (file 0) is fenced within POLL, and a suspend (the sleep's clock stops, the
deadline's does not) makes it late by at most POLL, well inside the kill budget K."""
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)
REREAD = 1.0
"""Seconds after which the file is read even if its ``stat`` looks unchanged (a belt to the
braces of inode, mtime and size)."""
_PR_SET_PDEATHSIG = 1


def now() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def read_deadline(path: str) -> float | None:
    """The deadline in the lease file; None if it cannot be read as one."""
    try:
        with open(path, encoding="ascii") as file:
            return float(file.read().strip())
    except (OSError, ValueError):
        return None


def _version(path: str) -> tuple[int, int, int] | None:
    """What tells one write of the lease file from the next (the guard replaces it whole):
    one ``stat`` is a third of an open and read, and the file changes once per renewal."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _child(argv: list[str], parent: int) -> None:
    """In the forked child: die with the leash, then become the worker. (``ctypes`` is
    imported here: in the leash's memory it would stay for the instance's whole life.)"""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the leash died before prctl took effect
        os._exit(137)
    for signum in FORWARDED:
        signal.signal(signum, signal.SIG_DFL)
    try:
        os.execvp(argv[0], argv)  # noqa: S606 (the profile's argv, as the trampoline runs it)
    except OSError as exc:
        os.write(2, f"leash: cannot run {argv[0]}: {exc.strerror}\n".encode())
        os._exit(127 if exc.errno == 2 else 126)


def _mark(lease_file: str, deadline: float, graceful: bool) -> None:
    """Leave the marker that tells the guard this exit was a self-fence, not a crash (JSON,
    written by hand: importing ``json`` at the deadline would delay the kill, and keeping it
    imported would cost the leash's memory for the instance's whole life)."""
    marker = (f'{{"at": {now()!r}, "deadline": {float(deadline)!r}, '
              f'"graceful": {"true" if graceful else "false"}, "pid": {os.getpid()}}}')
    with contextlib.suppress(OSError), open(lease_file + ".fenced", "w", encoding="ascii") as file:
        file.write(marker)  # the kill matters more than its record


def _fence(lease_file: str, group: str | None, deadline: float, graceful: bool) -> None:
    _mark(lease_file, deadline, graceful)
    if group is not None:
        try:
            with open(os.path.join(group, "cgroup.kill"), "w", encoding="ascii") as file:
                file.write("1")
        except OSError:
            pass
        else:
            time.sleep(1)  # SIGKILL is on its way to this process too
    os.killpg(os.getpgid(0), signal.SIGKILL)


def _clear(group: str) -> None:
    """SIGKILL every other process of the group (what the worker left behind), until none is
    left: with the worker gone the instance is over, and nothing of it may outlive its lease."""
    me = os.getpid()
    for _ in range(1000):
        try:
            with open(os.path.join(group, "cgroup.procs"), encoding="ascii") as file:
                others = [int(line) for line in file if line.strip() and int(line) != me]
        except OSError:
            return
        if not others:
            return
        for pid in others:
            _kill_member(pid, group)
        time.sleep(0.005)


def _kill_member(pid: int, group: str) -> None:
    """SIGKILL ``pid`` only while it is still a member of ``group``: a pidfd pins the
    process, then its membership is read again, so a pid reused meanwhile by a process
    outside the group is never signalled."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return  # gone already (or no pidfds: the group's cgroup.kill at the deadline remains)
    try:
        with open(f"/proc/{pid}/cgroup", encoding="ascii") as file:
            member = f"0::{_relative(group)}" in (line.rstrip("\n") for line in file)
        if member:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(pidfd)


def _relative(group: str) -> str:
    """``group`` as /proc/<pid>/cgroup names it: the path below the cgroup2 mount."""
    with open("/proc/self/mountinfo", encoding="ascii") as file:
        for line in file:
            fields = line.split()
            mount = fields[4]
            if " - cgroup2 " in line and group.startswith(mount.rstrip("/") + "/"):
                return group[len(mount.rstrip("/")):]
    return group


def _exit_like(status: int) -> None:
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        with contextlib.suppress(OSError, ValueError):  # SIGKILL's cannot be set: it is SIG_DFL
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        sys.exit(128 + signum)
    sys.exit(os.waitstatus_to_exitcode(status))


def run(lease_file: str, group: str | None, grace: float, stop_signal: int, argv: list[str]) -> None:
    deadline = read_deadline(lease_file)
    if deadline is None:
        deadline = 0.0  # no lease: fenced at once
    parent = os.getpid()
    worker = os.fork()
    if worker == 0:
        _child(argv, parent)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):  # it just exited: the loop reaps it
            os.kill(worker, signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    warned = False
    last_seen: tuple[int, int, int] | None = None
    read_at = 0.0
    while True:
        pid, status = os.waitpid(worker, os.WNOHANG)
        if pid == worker:
            if warned:  # it obeyed the stop signal the lapsing lease sent
                _mark(lease_file, deadline, graceful=True)
            if group is not None:
                _clear(group)
            _exit_like(status)
        seen = _version(lease_file)
        if seen != last_seen or now() >= read_at + REREAD:  # rewritten: read the new deadline
            last_seen, read_at = seen, now()
            latest = read_deadline(lease_file)
            if latest is not None:
                deadline = latest
        left = deadline - now()
        if left <= 0:
            _fence(lease_file, group, deadline, warned)
        if left <= grace and not warned:
            warned = True
            os.kill(worker, stop_signal)
        time.sleep(min(POLL, max(0.001, left - grace if not warned else left)))


def main(args: list[str]) -> None:
    lease_file, group, grace, stop_signal = "", None, 0.0, int(signal.SIGTERM)
    while args and args[0] != "--":
        option, value, args = args[0], args[1], args[2:]
        if option == "--lease-file":
            lease_file = value
        elif option == "--group":
            group = value
        elif option == "--grace":
            grace = float(value)
        elif option == "--signal":
            stop_signal = signal.Signals[value].value if not value.isdigit() else int(value)
        else:
            sys.exit(f"leash: unknown option {option}")
    if not lease_file or len(args) < 2:
        sys.exit("usage: leash.py --lease-file F [--group G] [--grace S] [--signal SIG] -- argv...")
    run(lease_file, group, grace, stop_signal, args[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
