"""The host-wide runtime directory, and private directories inside it.

Every guard and CLI of a host must find the same fences (and the same instance
registry) whatever its ``TMPDIR`` or ``HOME``, so the default depends only on the
user: ``/run/workerguard`` for root, ``$XDG_RUNTIME_DIR/workerguard`` for other users
with a session runtime directory, else ``/tmp/workerguard-<uid>`` (``/tmp`` itself, not
``tempfile.gettempdir()``). ``runtime_dir`` / ``WORKERGUARD_RUNTIME_DIR`` overrides it:
set it in the config file when a service and interactive users must agree (a systemd
service usually has no ``XDG_RUNTIME_DIR``).

``private_dir`` is the one way workerguard makes or accepts a directory there: created
0700, and an existing one must be a real directory (not a symlink) owned by this user
and writable by nobody else, or it is refused with a one-line error naming it.

**No one else can take it.** ``/tmp/workerguard-<uid>`` is a name any local user can
create first (``/tmp`` is world-writable), and whoever owns the runtime dir could swap
the fences and records under the guard. So the runtime dir is checked when a guard is
made (every ``--local`` command, every request of the guard worker) and before the guard
worker starts (``checked_runtime_dir``), and again by every fence and record write: one
that is not a private directory of this user is refused with one line that names the fix
(``runtime_dir`` in the config file, or ``WORKERGUARD_RUNTIME_DIR``). Readers skip a
directory or file that is not ours (``directory_problem``, ``owned_file_problem``).
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from workerguard.errors import HostError


def default_runtime_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``/run/workerguard`` (root), ``$XDG_RUNTIME_DIR/workerguard``, else ``/tmp/workerguard-<uid>``."""
    environ = os.environ if environ is None else environ
    if sys.platform == "win32":  # untested here: no Windows host in CI
        base = environ.get("PROGRAMDATA") or tempfile.gettempdir()
        return Path(base) / "workerguard" / "run"
    uid = os.geteuid()
    if uid == 0:
        return Path("/run/workerguard")
    xdg = environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "workerguard"
    return Path("/tmp") / f"workerguard-{uid}"  # noqa: S108 (checked: ours, 0700, no symlink)


def describe(exc: OSError) -> str:
    """``No space left on device``: the reason of an OSError without its repr noise."""
    return exc.strerror or type(exc).__name__


def private_dir(path: Path) -> Path:
    """Make sure ``path`` is a directory only this user can write to; return it.

    A missing directory is created with mode 0700 (missing parents too, with the
    default mode). An existing one is refused, with ``HostError`` naming it, if it is
    a symlink or not a directory, owned by another user, or group/other writable.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        info = os.lstat(path)
    except OSError as exc:
        raise HostError(f"cannot create directory {path}: {describe(exc)}") from None
    problem = directory_problem(info)
    if problem:
        raise HostError(f"refusing directory {path}: {problem}")
    return path


RUNTIME_DIR_FIX = ("another user may have created it first: set runtime_dir in the config file "
                   "(or WORKERGUARD_RUNTIME_DIR) to a directory only this user can write")


def checked_runtime_dir(path: Path) -> Path:
    """``private_dir`` for the runtime dir itself: its refusal says how to choose another."""
    try:
        return private_dir(path)
    except HostError as exc:
        raise HostError(f"{exc}; {RUNTIME_DIR_FIX}") from None


def directory_problem(info: os.stat_result) -> str | None:
    """Why a directory (``lstat``) must not be used: a symlink, not a directory, another
    owner, writable by group or others; None if it is a private one of this user."""
    if stat.S_ISLNK(info.st_mode):
        return "it is a symlink"
    if not stat.S_ISDIR(info.st_mode):
        return "it is not a directory"
    if sys.platform == "win32":
        return None
    uid = os.geteuid()
    if info.st_uid != uid:
        return f"owned by uid {info.st_uid}, not by this user (uid {uid})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by group or others (mode {stat.S_IMODE(info.st_mode):o}; want 700)"
    return None


def owned_file_problem(info: os.stat_result, *, replaced_ok: bool = False) -> str | None:
    """Why an opened file (``fstat``) must not be used: not a regular file, another owner,
    writable by group or others, a second hard link; None if it is a file of this user.

    ``replaced_ok``: no link at all is fine (a file renamed over, or removed, since it was
    opened: what was read is what it held); a lock file wants its one link.
    """
    if not stat.S_ISREG(info.st_mode):
        return "it is not a regular file"
    if sys.platform != "win32":
        if info.st_uid != os.geteuid():
            return f"owned by uid {info.st_uid}, not by this user (uid {os.geteuid()})"
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return f"writable by group or others (mode {stat.S_IMODE(info.st_mode):o})"
    if info.st_nlink > 1 or (info.st_nlink == 0 and not replaced_ok):
        return f"it has {info.st_nlink} hard links"
    return None
