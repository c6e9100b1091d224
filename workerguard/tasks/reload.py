"""Reload the guard's config (task ``workerguard.reload`` or SIGHUP to the guard worker).

Read the file again, validate it, take it over, then sweep once so what changed
converges (``max_workers`` lowered stops the extras, a new profile starts). A broken
file, or one that changes a restart-only setting, is refused: the old config stays,
the error is logged and returned.
"""

from __future__ import annotations

import logging
from typing import Any

from workerguard.config.load import load_config
from workerguard.errors import ConfigError
from workerguard.policy.reports import Result
from workerguard.redact import redact_text
from workerguard.tasks import context
from workerguard.workers.logs import profile_logs, rotate_all

log = logging.getLogger("workerguard.reload")


def rotate_logs(guard: Any) -> None:
    """Rotate the logs of every configured profile that went over ``log_max_bytes``."""
    settings = guard.config.settings
    rotate_all([path for name in guard.config.profiles
                for path in profile_logs(settings.log_dir, name)],
               settings.log_max_bytes, settings.log_backups)


def reload_config(app: Any, requested_by: str) -> Result:
    """Reload the config of ``app``'s guard and sweep once; raises ``ConfigError`` if refused."""
    live = context.of(app)
    source = live.config.source
    try:
        changed = live.swap(load_config(source))
    except ConfigError as exc:
        refused = ConfigError(f"reload refused, the running config stays: {redact_text(str(exc))}")
        log.error("%s", refused)
        raise refused from None
    log.info("reloaded %s for %s; changed: %s", source, requested_by, ", ".join(changed) or "nothing")
    guard = live.guard()
    rotate_logs(guard)
    swept = guard.sweep(requested_by=f"reload by {requested_by}")
    lines = [r.message for r in swept]
    return {
        "host": guard.host, "profile": None, "action": "reloaded", "ok": True,
        "config": source, "changed": changed, "swept": [r.contract() for r in swept],
        "message": "\n".join([f"{guard.host}: reloaded {source} (changed: "
                              f"{', '.join(changed) or 'nothing'})", *lines]),
    }
