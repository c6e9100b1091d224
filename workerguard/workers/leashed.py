"""A cluster instance starts under its leash: the grant it runs under, told to the worker and
to the leash (workers/leash.py) that kills it when the lease lapses.

The leash becomes the instance's main process (the trampoline execs it in the instance's
group, with the instance's pid); it forks the worker. The worker learns its grant from
its environment:

* ``WORKERGUARD_FENCING_TOKEN``: the grant's token, strictly greater than every earlier
  grant's of the profile: store it with every write and refuse lower ones;
* ``WORKERGUARD_SLOT``: the slot (also ``WORKERGUARD_INDEX``);
* ``WORKERGUARD_SCOPE=cluster``;
* ``WORKERGUARD_LEASE_FILE``: the file with the hard deadline (``CLOCK_BOOTTIME`` seconds),
  for a cheap "still leased?" before a long side effect.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

LEASH = Path(__file__).with_name("leash.py")
"""Run as a file, never imported here: it asserts a POSIX platform at import."""

TOKEN_VARIABLE = "WORKERGUARD_FENCING_TOKEN"  # noqa: S105 (a variable name, not a secret)
SLOT_VARIABLE = "WORKERGUARD_SLOT"
SCOPE_VARIABLE = "WORKERGUARD_SCOPE"
LEASE_FILE_VARIABLE = "WORKERGUARD_LEASE_FILE"


@dataclass(frozen=True)
class LeaseTerms:
    """The grant a cluster instance starts under, and how its leash ends it."""

    slot: int
    token: int
    lease_file: Path
    grace: float
    """Seconds before the hard deadline the leash sends the stop signal."""
    stop_signal: str = "SIGTERM"
    leashed: bool = True
    """False for ``guarantee = "at_least"``: no leash, the instance outlives a lost lease
    until its guard hears of the loss (it still gets its token)."""


def leashed_argv(argv: list[str], terms: LeaseTerms, group: Path | None) -> list[str]:
    """``argv`` behind its leash: isolated Python (``-I``), the standard library only."""
    return [sys.executable, "-I", str(LEASH), "--lease-file", str(terms.lease_file),
            "--grace", f"{terms.grace:g}", "--signal", terms.stop_signal,
            *(["--group", str(group)] if group is not None else []), "--", *argv]


def lease_environment(terms: LeaseTerms) -> dict[str, str]:
    return {TOKEN_VARIABLE: str(terms.token), SLOT_VARIABLE: str(terms.slot),
            SCOPE_VARIABLE: "cluster", LEASE_FILE_VARIABLE: str(terms.lease_file)}


def lease_dir(runtime_dir: Path, host: str) -> Path:
    """Where a guard keeps its lease files: the cluster loop writes them, the converge and
    the leashes read them."""
    return runtime_dir / "leases" / host


def lease_file(directory: Path, profile: str, slot: int) -> Path:
    return directory / f"{profile}.{slot}.lease"


def read_deadline(path: Path) -> float:
    """The deadline a lease file holds; 0 (lapsed) when it cannot be read as one. The leash
    reads it the same way (workers/leash.py, a standalone file that is never imported)."""
    try:
        return float(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return 0.0


def write_deadline(path: Path, deadline: float) -> None:
    """Write a lease file whole (temporary file, then ``os.replace``): the leash never
    reads half a number."""
    _write_whole(path, f"{deadline:.6f}\n")


def _write_whole(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    temp.write_text(text, encoding="ascii")
    os.replace(temp, path)


def released_marker(path: Path) -> Path:
    """Beside a lease file: the token of the grant a converge on this host gave back."""
    return path.with_name(path.name + ".released")


def mark_released(path: Path, token: int) -> None:
    """Say, before the key goes, that this host gives the grant ``token`` back: the cluster
    loop (another process, perhaps) then finds the key gone and knows it was not lost."""
    _write_whole(released_marker(path), f"{token}\n")


def released_token(path: Path) -> int | None:
    """The token ``mark_released`` last wrote for this lease file, if any."""
    try:
        return int(released_marker(path).read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None
