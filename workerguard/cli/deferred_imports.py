"""``redis.asyncio`` loaded on first use, not by ``import redis``.

redis-py's ``__init__`` imports ``redis.asyncio`` (its asyncio client, cluster, sentinel
and connection classes: ~100 modules, 1.4 MB of an idle guard worker's RSS) whatever the
caller uses; the ``workerguard`` command uses none of it. ``defer_redis_asyncio``, run
by the command before anything imports redis-py, puts in ``sys.modules`` a module that
runs redis-py's ``asyncio`` package code into itself on the first attribute it does not have:
``from redis.asyncio import Redis`` and ``redis.asyncio.Redis`` work as before, only
later. It has ``__file__``, ``__path__`` and ``__spec__`` from the start, so what only
looks at a module (``inspect.getmodule``, which pydantic runs over all of
``sys.modules``) does not load it.

asyncio itself stays: redis-py's synchronous parser imports it. This module imports
neither redis-py nor anything else outside the standard library.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import types
from typing import Any

DEFERRED = "redis.asyncio"


class _Deferred(types.ModuleType):
    """A module whose code runs when it is first asked for an attribute it lacks."""

    def __getattr__(self, name: str) -> Any:
        state = object.__getattribute__(self, "__dict__")
        with state["_deferred_lock"]:
            if not state["_deferred_ran"]:
                state["_deferred_ran"] = True  # before: a re-entrant lookup while it runs fails
                state["__spec__"].loader.exec_module(self)
            if name in state:  # also for a thread that waited while another ran it
                return state[name]
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")


def defer_redis_asyncio() -> bool:
    """Defer ``redis.asyncio``; False (nothing done) where redis-py is already imported or
    is not installed."""
    if "redis" in sys.modules or DEFERRED in sys.modules:
        return False
    package = importlib.util.find_spec("redis")  # finds, imports nothing
    if package is None or not package.submodule_search_locations:
        return False
    directory = os.path.join(next(iter(package.submodule_search_locations)), "asyncio")
    spec = importlib.util.spec_from_file_location(
        DEFERRED, os.path.join(directory, "__init__.py"), submodule_search_locations=[directory])
    if spec is None or spec.loader is None:
        return False
    module = _Deferred(DEFERRED)
    module.__dict__.update(__spec__=spec, __file__=spec.origin, __path__=[directory],
                           __loader__=spec.loader, __package__=DEFERRED,
                           _deferred_lock=threading.RLock(), _deferred_ran=False)
    sys.modules[DEFERRED] = module
    return True
