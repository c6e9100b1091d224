"""What a guard app needs at run time, held beside the app and never in ``app.conf``.

Everything in ``app.conf`` is public: ``celery inspect conf`` and Flower's worker page
print it. The config (profile environments may hold tokens) and the Redis URL (with its
password) therefore live in a ``Runtime`` kept in a weak registry keyed by the app.

A reload swaps the config atomically: requests that already hold the old guard finish
with it, the next ones get a guard built from the new config. Guards are per process
(a forked pool child never shares the parent's sockets) and there is at most one per
app, so nothing grows with the number of requests.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import redis

from workerguard.config.load import Config
from workerguard.errors import ConfigError, WorkerguardError
from workerguard.ops.connect import redis_client
from workerguard.policy.guard import Guard
from workerguard.policy.hooks import GuardHooks
from workerguard.probes.liveness import Health
from workerguard.probes.run import ProbeResult

RESTART_ONLY = ("redis_url", "sentinel_master", "sentinel_password", "host_id", "home",
                "metrics_port", "metrics_addr")
"""Settings a running guard cannot take over: its queues, node name, sockets and listeners
were made from them. A reload that changes one is refused."""


@dataclass
class Runtime:
    """The live config of one guard app, its Redis URL and (per process) its guard."""

    config: Config
    redis_url: str = field(repr=False)
    pool: str | None = None
    """The worker pool, once a worker runs this app (``prefork`` cannot reload)."""
    hooks: list[GuardHooks] = field(default_factory=list)
    """What the guard worker's guards report to: the heal and replace requests of the
    Celery edge (``handlers.register``), the metrics (``runners.run_worker``)."""
    _liveness: tuple[int, Health] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _guard: tuple[int, Guard] | None = field(default=None, repr=False)
    _client: tuple[int, redis.Redis] | None = field(default=None, repr=False)

    def guard(self) -> Guard:
        """This process's guard for the current config (rebuilt after a fork or a reload).

        Only where requests run (the pool): a guard spawns, watches and reaps instances,
        and a prefork pool's main process must do none of that (``ops/runners.py``)."""
        pid = os.getpid()
        with self._lock:
            if self._guard is None or self._guard[0] != pid:
                self._guard = (pid, Guard(self._client_here(pid), self.config, hooks=self.hooks,
                                          liveness=self._liveness_here(pid), watch_exits=True))
            return self._guard[1]

    def client(self) -> redis.Redis:
        """This process's Redis client (for what needs Redis but no guard: the sweep timer)."""
        with self._lock:
            return self._client_here(os.getpid())

    def _client_here(self, pid: int) -> redis.Redis:
        if self._client is None or self._client[0] != pid:
            self._client = (pid, redis_client(self.redis_url, self.config.settings))
        return self._client[1]

    def after_fork_in_child(self) -> None:
        """A fresh lock: another thread may have held it at the fork (the rest is per pid)."""
        self._lock = threading.Lock()

    def _liveness_here(self, pid: int) -> Health:
        """This process's prober (its threads outlive reloads; the lock is held)."""
        if self._liveness is None or self._liveness[0] != pid:
            self._liveness = (pid, Health(self.config.settings.host_id,
                                          on_unhealthy=lambda event: self.guard().unhealthy(event),
                                          on_result=self._probed))
        self._liveness[1].keep_only([n for n, p in self.config.profiles.items() if p.probe])
        return self._liveness[1]

    def _probed(self, profile: str, result: ProbeResult) -> None:
        for hook in self.hooks:
            hook.probed(profile, result.ok, result.duration)

    def swap(self, new: Config) -> list[str]:
        """Take ``new`` as the config; the names of the settings that changed.

        Refuses (``ConfigError``, nothing changed) a config that changes a restart-only
        setting, or any reload on a prefork worker, whose pool children keep their copy.
        """
        if self.pool == "prefork":
            raise ConfigError("reload needs --pool threads or solo: prefork pool children keep "
                              "the config they forked with; restart the guard instead")
        old = self.config.settings
        fixed = [name for name in RESTART_ONLY
                 if getattr(old, name) != getattr(new.settings, name)]
        if fixed:
            raise ConfigError(f"{new.source}: {', '.join(fixed)} cannot change without a "
                              "restart of the guard; nothing was reloaded")
        changed = changes(self.config, new)
        with self._lock:
            self.config = new
            self._guard = None
        return changed

    def close(self) -> None:
        with self._lock:
            if self._client is not None and self._client[0] == os.getpid():
                self._client[1].close()
            if self._liveness is not None and self._liveness[0] == os.getpid():
                self._liveness[1].stop()
            self._client = self._guard = self._liveness = None


def changes(old: Config, new: Config) -> list[str]:
    """What differs, for the reload's answer: ``settings.X`` and ``profiles.NAME``."""
    names = [f"settings.{name}" for name in type(old.settings).model_fields
             if getattr(old.settings, name) != getattr(new.settings, name)]
    names += [f"profiles.{name}" for name in sorted(set(old.profiles) | set(new.profiles))
              if old.profiles.get(name) != new.profiles.get(name)]
    return names


_registry: weakref.WeakKeyDictionary[Any, Runtime] = weakref.WeakKeyDictionary()


class _Registry:
    lock = threading.Lock()


def _after_fork_in_child() -> None:
    """A prefork pool child starts with unheld locks (a thread of the parent may have held
    one at the fork; only the forking thread exists in the child)."""
    _Registry.lock = threading.Lock()
    for runtime in list(_registry.values()):
        runtime.after_fork_in_child()


if sys.platform != "win32":
    os.register_at_fork(after_in_child=_after_fork_in_child)


def attach(app: Any, runtime: Runtime) -> None:
    with _Registry.lock:
        _registry[app] = runtime


def of(app: Any) -> Runtime:
    """The runtime of a workerguard app (``WorkerguardError`` for any other app)."""
    with _Registry.lock:
        found = _registry.get(app)
    if found is None:
        raise WorkerguardError(f"{app!r} is not a workerguard app (built by make_app)")
    return found


def find(app: Any) -> Runtime | None:
    with _Registry.lock:
        return _registry.get(app)
