"""Celery front: ``celery -A workerguard.tasks worker`` finds ``app`` here.

The app is built on first access from the config (``WORKERGUARD_CONFIG`` or
./workerguard.toml), so importing this package never fails on a bad config.
"""

from __future__ import annotations

from typing import Any

from workerguard.tasks.app import make_app
from workerguard.tasks.routing import BROADCAST, DEFAULT_QUEUE, host_queue

__all__ = ["BROADCAST", "DEFAULT_QUEUE", "app", "host_queue", "make_app"]


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from workerguard.config.load import load_config
        from workerguard.ops.embedded import socket_path, url_for

        config = load_config()
        url = config.settings.redis_url or url_for(socket_path(config.settings.home))
        built = make_app(config, url)
        built.set_current()  # for `celery -A workerguard.tasks flower`: results by id
        globals()["app"] = globals()["celery"] = built
        return built
    raise AttributeError(name)
