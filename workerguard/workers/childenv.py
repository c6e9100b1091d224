"""The environment a child of the guard starts from: a few basics of the parent, nothing more.

Workers and command probes get only these from the guard's own environment, so nothing of
Celery, multiprocessing, PYTHONPATH or a Redis URL leaks into them. A child that is not an
instance (a command probe, any helper) gets ``helper_environment``: it carries
``MARK_HELPER`` and none of an instance's marks, so discovery can never take it for one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from workerguard.workers.model import INSTANCE_MARKS, MARK_HELPER

BASE_ENV_KEYS = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR",
                 "SYSTEMROOT", "WINDIR", "COMSPEC", "PATHEXT", "TEMP", "TMP", "USERPROFILE")


def base_environment(parent_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``BASE_ENV_KEYS`` of ``parent_env`` (default: this process's environment)."""
    parent_env = os.environ if parent_env is None else parent_env
    return {k: parent_env[k] for k in BASE_ENV_KEYS if k in parent_env}


def helper_environment(kind: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: ``base_environment()``) for a process the guard runs that is not an
    instance (``kind``: ``probe``, ...): every instance mark removed, ``MARK_HELPER`` set.

    A command probe runs with its instance's environment, and is often the worker's own
    command with ``--probe``: with the instance's marks it would be found as a second
    process of that instance (and the real worker stopped as the extra one)."""
    out = {k: v for k, v in (base_environment() if env is None else env).items()
           if k not in INSTANCE_MARKS}
    out[MARK_HELPER] = kind
    return out
