"""Turn settings into Redis clients and broker URLs; the only place that reads redis_url."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from workerguard.config.schema import Settings
from workerguard.errors import RedisUnavailable
from workerguard.ops.embedded import embedded_redis

SOCKET_TIMEOUT = 5.0
"""Seconds any read or write on a Redis connection may take. Every blocking command of
ours waits less (the lock's BLPOP slices and ``events --follow``'s XREAD: 1 s; kombu's
BRPOP: 1 s), so only a dead or black-holed connection ever reaches it."""
HEALTH_CHECK_INTERVAL = 5
"""redis-py PINGs a connection idle this long before using it; kombu checks its BRPOP
and pub/sub connections this often and drops one whose reply is overdue."""
SOCKET_OPTIONS: dict[str, Any] = {
    "socket_timeout": SOCKET_TIMEOUT,
    "socket_connect_timeout": SOCKET_TIMEOUT,
    "socket_keepalive": True,
    "health_check_interval": HEALTH_CHECK_INTERVAL,
}
"""The same for every connection a guard opens: its own clients, the broker's and the
result backend's (kombu's Redis transport has none of them by default, docs/pitfalls.md)."""


def redis_client(url: str) -> redis.Redis:
    """A client for the lock and state, with ``SOCKET_OPTIONS``: a dead Redis (or a path
    that silently drops packets) fails within ``SOCKET_TIMEOUT``, and the next command
    reconnects.

    Only connection errors are retried (twice, briefly): a command that timed out may
    have run, and re-sending ``SET NX`` would make us wait on our own lock.
    """
    retry = Retry(ExponentialBackoff(cap=0.25, base=0.05), 2,
                  supported_errors=(redis.exceptions.ConnectionError,))
    return redis.Redis.from_url(url, retry=retry, **socket_options(url))


def endpoint(url: str) -> str:
    """Where ``url`` points, for an error line: scheme, host and port (or socket path) and
    database; never a user name or password."""
    parts = urlsplit(url)
    if parts.scheme in ("unix", "redis+socket"):
        return f"{parts.scheme}://{parts.path}"
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host or 'localhost'}:{parts.port or 6379}{parts.path}"


def client_endpoint(client: redis.Redis) -> str:
    """``endpoint`` of the server a client talks to."""
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def unreachable(where: str, exc: BaseException, then: str = "") -> RedisUnavailable:
    """The one error line for a Redis that did not answer: which server, and what failed."""
    return RedisUnavailable(f"redis unreachable at {where} ({type(exc).__name__}){then}")


def socket_options(url: str) -> dict[str, Any]:
    """``SOCKET_OPTIONS`` for ``url``: a unix socket has no TCP keepalive (and redis-py's
    unix connection refuses the keyword)."""
    options = dict(SOCKET_OPTIONS)
    if urlsplit(url).scheme in ("unix", "redis+socket"):
        del options["socket_keepalive"]
    return options


def result_backend_settings(url: str) -> dict[str, Any]:
    """``socket_options`` as Celery settings of its Redis result backend, which reads
    ``redis_*`` keys, not ``result_backend_transport_options``.

    ``retry_on_timeout``: a pooled connection that died silently (a NAT losing state) is
    replaced on its first use instead of failing the task that used it; result writes
    are idempotent, so a retried one is harmless.
    """
    options = socket_options(url)
    return {
        "redis_retry_on_timeout": True,
        "redis_socket_timeout": options["socket_timeout"],
        "redis_socket_connect_timeout": options["socket_connect_timeout"],
        "redis_socket_keepalive": options.get("socket_keepalive", False),
        "redis_backend_health_check_interval": options["health_check_interval"],
    }


def celery_url(url: str) -> str:
    """redis-py's ``unix:///path?db=N`` is kombu's ``redis+socket:///path?virtual_host=N``."""
    parts = urlsplit(url)
    if parts.scheme != "unix":
        return url
    db = parse_qs(parts.query).get("db", ["0"])[0]
    return f"redis+socket://{parts.path}?virtual_host={db}"


@contextlib.contextmanager
def redis_url(settings: Settings) -> Iterator[str]:
    """The configured Redis URL, or the embedded server's for as long as the block runs."""
    if settings.redis_url:
        yield settings.redis_url
        return
    with embedded_redis(settings.home, settings.embedded_linger) as url:
        yield url
