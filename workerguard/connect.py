"""Turn settings into Redis clients and broker URLs; the only place that reads redis_url."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .config import Settings
from .embedded import embedded_redis


def redis_client(url: str) -> redis.Redis:
    """A client for the lock and state. Short timeouts: a dead Redis fails fast.

    The lock waits in BLPOP slices of at most 1 s, well below ``socket_timeout``.
    Only connection errors are retried (twice, briefly): a command that timed out may
    have run, and re-sending ``SET NX`` would make us wait on our own lock.
    """
    retry = Retry(ExponentialBackoff(cap=0.25, base=0.05), 2,
                  supported_errors=(redis.exceptions.ConnectionError,))
    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5,
                                health_check_interval=30, retry=retry)


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
