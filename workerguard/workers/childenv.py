"""The environment a child of the guard starts from: a few basics of the parent, nothing more.

Workers and command probes get only these from the guard's own environment, so nothing of
Celery, multiprocessing, PYTHONPATH or a Redis URL leaks into them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

BASE_ENV_KEYS = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR",
                 "SYSTEMROOT", "WINDIR", "COMSPEC", "PATHEXT", "TEMP", "TMP", "USERPROFILE")


def base_environment(parent_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``BASE_ENV_KEYS`` of ``parent_env`` (default: this process's environment)."""
    parent_env = os.environ if parent_env is None else parent_env
    return {k: parent_env[k] for k in BASE_ENV_KEYS if k in parent_env}
