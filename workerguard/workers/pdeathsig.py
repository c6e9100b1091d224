"""Tie a child process's life to its parent's (Linux ``PR_SET_PDEATHSIG``).

For the helpers workerguard itself runs — the embedded redis-server under its
supervisor, the worker and beat under ``workerguard up`` — never for managed workers,
which must outlive the guard. If the parent is SIGKILLed the kernel sends the child
SIGTERM, so nothing is left orphaned (docs/pitfalls.md, "The embedded server").
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


die_with_parent: Callable[[], None] | None = _set_pdeathsig if sys.platform == "linux" else None
"""``preexec_fn`` for ``subprocess.Popen``; None where the kernel has no such signal.
Pass it only from a single-threaded parent (``preexec_fn`` is unsafe with threads)."""
