"""Where instance groups go, by systemd's delegation rules (systemd.io/CGROUP_DELEGATION).

Two rules decide it. **Single writer**: a program creates cgroups only in a subtree
delegated to it (``Delegate=yes`` on its unit), never below cgroups someone else manages,
the root cgroup above all. **No processes in inner nodes**: a cgroup with children holds no
process, so a delegated service moves itself into a leaf of its subtree and puts what it
runs in siblings of that leaf. ``decide`` reads the guard's situation and answers with one
``Layout``:

- **delegated**: the guard's own cgroup was delegated to it. systemd marks such a group with
  the xattr ``trusted.delegate`` (read by root) or ``user.delegate``; for a guard that is not
  root, write access to the directory and to what systemd hands ``User=`` with it
  (``cgroup.procs``, ``cgroup.threads``, ``cgroup.subtree_control``) says the same. The
  guard moves into the leaf ``<own>/guard`` as the guard worker starts, and again before
  any start (``place``: every process of ``<own>``, as systemd's ``DelegateSubgroup=``
  would) and its instances go
  beside it, ``<own>/workerguard/<host>/<profile>/<instance>``. A guard already in
  ``<unit>/guard`` (a ``DelegateSubgroup=guard`` unit, or one that moved itself) takes
  ``<unit>`` as its own.
- **dedicated**: root, not delegated (started by hand, by another init, in a container).
  One subtree of its own at the top, ``<mount>/workerguard/<host>/<profile>/<instance>``:
  a plain name (``workerguard.slice`` would claim systemd's namespace: a unit of that name
  would make systemd the second writer of it), the only cgroup workerguard creates outside
  a delegated subtree, and what a root guard used before delegation was detected. Under
  systemd this still writes beside systemd's tree, and ``note`` says to set
  ``Delegate=yes``.
- **configured**: ``cgroup_root`` is set; used as it is.
- **none**: not root and not delegated: no cgroup mode, ``note`` says why (registry mode).

``legacy`` lists older roots still read (discovery, stop, ``prune``) but never written:
a root guard that moves from the dedicated subtree into a delegated unit still finds, stops
and collects the instance groups it made there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from workerguard.workers.cgroups import cgroup2_mount, join, members, own_cgroup

GUARD_LEAF = "guard"
"""The leaf of a delegated subtree the guard moves into."""
INSTANCES = "workerguard"
"""The subtree instance groups go under (in a delegated group, or at the top for root)."""
DELEGATED_FILES = ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control")
"""What systemd chowns to ``User=`` with a delegated group (the kernel's list is
``/sys/kernel/cgroup/delegate``; these three are what moving and nesting need)."""
_XATTRS = ("trusted.delegate", "user.delegate")
log = logging.getLogger("workerguard.workers")
_SYSTEMD_RUNNING = Path("/run/systemd/system")

Kind = Literal["delegated", "dedicated", "configured", "none"]


@dataclass(frozen=True)
class Layout:
    """Where this guard's instance groups go, and where the guard itself runs."""

    kind: Kind
    root: Path | None
    """The directory instance groups go under (``<root>/<host>/<profile>/<id>``); None: no
    cgroup mode."""
    guard_leaf: Path | None = None
    """Delegated only: the leaf the guard moves into before its first start."""
    legacy: tuple[Path, ...] = field(default_factory=tuple)
    """Older roots still read (discovery, stop, prune), never written."""
    note: str | None = None
    """One line for the log and ``status`` when the layout is not the one systemd wants
    (no cgroup mode, or a dedicated subtree under systemd); None otherwise."""


def marked_delegated(group: Path) -> bool:
    """systemd's mark on a delegated group (the ``trusted.delegate`` or ``user.delegate``
    xattr is ``1``), as ``cg_is_delegated`` reads it."""
    if sys.platform != "linux":
        return False
    for name in _XATTRS:
        with contextlib.suppress(OSError):
            if os.getxattr(group, name).strip() == b"1":
                return True
    return False


def writable_as_delegated(group: Path) -> bool:
    """The directory and the files systemd hands a delegated ``User=`` are writable by us."""
    return os.access(group, os.W_OK | os.X_OK) and all(
        os.access(group / name, os.W_OK) for name in DELEGATED_FILES if (group / name).exists())


def is_delegated(group: Path, euid: int) -> bool:
    """Root trusts systemd's mark only (root can write anywhere); others also their rights."""
    return marked_delegated(group) or (euid != 0 and writable_as_delegated(group))


def decide(configured: Path | None = None, *, mount: Path | None = None, own: str | None = None,
           euid: int | None = None, delegated: Callable[[Path, int], bool] = is_delegated,
           under_systemd: bool | None = None) -> Layout:
    """The layout of this process (the arguments default to what the host says; tests pass
    them). See the module docstring for the four answers."""
    if configured is not None:
        return Layout("configured", configured)
    mount = mount if mount is not None else cgroup2_mount()
    if mount is None:
        return Layout("none", None, note="no cgroup v2 hierarchy: registry mode")
    own = own if own is not None else own_cgroup()
    euid = euid if euid is not None else _euid()
    dedicated = mount / INSTANCES
    base = _delegated_base(mount, own, euid, delegated)
    if base is not None:
        legacy = (dedicated,) if euid == 0 and dedicated != base / INSTANCES else ()
        return Layout("delegated", base / INSTANCES, base / GUARD_LEAF, legacy)
    if euid == 0:
        systemd = under_systemd if under_systemd is not None else _SYSTEMD_RUNNING.is_dir()
        note = (f"cgroup subtree {dedicated} is beside systemd's tree, not in a delegated "
                "one: set Delegate=yes on the guard's unit") if systemd else None
        return Layout("dedicated", dedicated, note=note)
    where = f"cgroup {own}" if own is not None else "this process's cgroup"
    return Layout("none", None, note=(
        f"{where} is not delegated to uid {euid}: registry mode (run the guard in a systemd "
        "unit with Delegate=yes for cgroup mode)"))


def _delegated_base(mount: Path, own: str | None, euid: int,
                    delegated: Callable[[Path, int], bool]) -> Path | None:
    """The delegated group this process owns: its own, or the parent of its ``guard`` leaf."""
    if own is None or own == "/":
        return None  # the root cgroup is never delegated (a cgroup namespace's root: dedicated)
    group = mount / own.lstrip("/")
    candidates = [group.parent, group] if group.name == GUARD_LEAF else [group]
    return next((c for c in candidates if c != mount and delegated(c, euid)), None)


def _euid() -> int:
    return os.geteuid() if hasattr(os, "geteuid") else -1


@dataclass
class Placed:
    """What ``place`` did: the processes moved into the leaf, and those it could not move."""

    moved: list[int] = field(default_factory=list)
    left: list[int] = field(default_factory=list)
    error: str | None = None


def place(layout: Layout) -> Placed:
    """Move this process, and every other process of the delegated group, into the guard's
    leaf, so the group becomes an inner node with no process (a no-op for other layouts).

    Never raises: a leaf that cannot be made is told in ``error`` (the guard then stays where
    it is, and instances still start in their groups: the kernel enforces the rule only where
    a controller is enabled, which workerguard never does)."""
    placed = Placed()
    if layout.kind != "delegated" or layout.guard_leaf is None:
        return placed
    leaf = layout.guard_leaf
    try:
        leaf.mkdir(exist_ok=True)
        join(leaf, os.getpid())
    except OSError as exc:
        placed.error = f"{leaf}: {exc.strerror or exc}"
        return placed
    placed.moved.append(os.getpid())
    for pid in _procs(leaf.parent):
        try:
            join(leaf, pid)
        except ProcessLookupError:
            continue  # gone meanwhile
        except OSError:
            placed.left.append(pid)
        else:
            placed.moved.append(pid)
    return placed


def settle(layout: Layout) -> Placed:
    """``place``, and a warning for what it could not do (nothing raises)."""
    placed = place(layout)
    if placed.error is not None:
        log.warning("could not move the guard into its cgroup leaf (%s); it stays in its "
                    "delegated group", placed.error)
    elif placed.left:
        log.warning("processes %s stay in the delegated group %s (not movable into %s)",
                    placed.left, layout.root and layout.root.parent, layout.guard_leaf)
    return placed


def settle_at_start(identity: str, configured: Path | None) -> Layout:
    """Where the guard worker starts (before its pool forks, before it is ready): in a
    delegated group it moves into its leaf at once, with its whole unit, so the group is an
    inner node with no process for as long as the guard runs, whether it ever starts an
    instance or not (systemd asks for this before a service reports ready)."""
    layout = decide(configured) if identity != "registry" else Layout("none", None)
    settle(layout)
    return layout


def inner_processes(group: Path) -> dict[Path, list[int]]:
    """Every cgroup at or below ``group`` that has children and holds processes (what the
    "no processes in inner nodes" rule forbids), with its processes."""
    found: dict[Path, list[int]] = {}
    for directory, subdirs, _ in os.walk(group):
        procs = _procs(Path(directory))
        if subdirs and procs:
            found[Path(directory)] = procs
    return found


def _procs(group: Path) -> list[int]:
    try:
        return members(group)
    except OSError:
        return []
