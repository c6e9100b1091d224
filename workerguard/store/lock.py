"""The two locks around a converge.

``ProfileLock`` is python-redis-lock's ``Lock`` (same keys protocol, same Lua scripts)
with four changes:

* keys live under ``workerguard:`` instead of ``lock:`` (``keys.lock``, ``keys.lock_signal``);
* ``acquire_within`` waits in short ``BLPOP`` slices bounded by the holder's remaining
  TTL, so a crashed holder delays the next caller by at most ``expire`` + ~0.1 s
  (the stock wait can miss the expiry: redis-py 8's socket timeout, docs/pitfalls.md);
* the renewal thread logs and stops when the lock was lost instead of dying with an
  unhandled exception, and ``owned()`` lets the holder check before it acts;
* the renewal thread can start later (``acquire_within(renew=False)``, then
  ``start_renewal()``): a hold that only reads (the fast path of an ensure, well under
  a millisecond) does not pay for starting and joining a thread.

The host fence, held inside the Redis lock while acting, is in ``fence``.

``ProfileLock`` reads and writes private attributes of ``redis_lock.Lock`` (``_client``,
``_name``, ``_signal``, ``_id``, ``_expire``, ``_lock_renewal_thread``,
``_start_lock_renewer``, ``_lock_renewer``): pyproject pins python-redis-lock to
``>=4.0.1,<5`` (4.0.0's renewal thread was not a daemon), so a new major version is
adopted only after these are checked again.
"""

from __future__ import annotations

import logging
import time
import weakref
from threading import Event
from typing import Any

import redis
import redis_lock

from workerguard.store import keys

log = logging.getLogger("workerguard.store.lock")
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
_SLICE = 1.0


class ProfileLock(redis_lock.Lock):  # type: ignore[misc]
    def __init__(self, client: redis.Redis, host: str, profile: str, expire: int) -> None:
        super().__init__(client, f"{host}:{profile}", expire=expire, auto_renewal=True,
                         strict=False)
        self._name = keys.lock(host, profile)
        self._signal = keys.lock_signal(host, profile)

    @property
    def key(self) -> str:
        return str(self._name)

    @property
    def lock_id(self) -> str:
        return str(self._id)

    def acquire_within(self, timeout: float, *, renew: bool = True) -> bool:
        """Take the lock, waiting at most ``timeout`` seconds; True if taken.

        With ``renew=False`` the key is not renewed until ``start_renewal()``: call it
        before anything that may take a sizeable part of ``expire``.
        """
        deadline = time.monotonic() + timeout
        client = self._client
        while True:
            if client.set(self._name, self._id, nx=True, ex=self._expire):
                if renew:
                    self._start_lock_renewer()
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            ttl_ms = client.pttl(self._name)
            # Wake on the holder's release signal, or just after its key expires.
            wait = min(remaining, _SLICE, ttl_ms / 1000 + 0.005 if ttl_ms > 0 else 0.01)
            client.blpop([self._signal], timeout=max(wait, 0.01))

    def start_renewal(self) -> None:
        """Start renewing the key while held (no-op if already renewing)."""
        if self._lock_renewal_thread is None:
            self._start_lock_renewer()

    def owned(self) -> bool:
        """True if the key still holds our id (the renewal thread may have lost it)."""
        return bool(self.get_owner_id() == self.id)

    @staticmethod
    def _lock_renewer(name: str, lockref: weakref.ref[Any], interval: float,
                      stop: Event) -> None:
        while not stop.wait(timeout=interval):
            lock = lockref()
            if lock is None:
                return
            try:
                lock.extend(expire=lock._expire)
            except redis_lock.NotAcquired:
                log.warning("lock %s was lost (expired or taken over); renewal stopped", name)
                return
            except REDIS_ERRORS as exc:
                log.warning("renewing lock %s failed: %s; retrying", name, exc)
            del lock
