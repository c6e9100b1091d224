"""Turn settings into Redis clients and broker URLs; the only place that reads redis_url."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from workerguard import timing
from workerguard.config.lease_timing import lease_socket_timeout
from workerguard.config.schema import Settings
from workerguard.errors import RedisUnavailable
from workerguard.ops import sentinel, sentinel_order
from workerguard.ops.embedded import embedded_redis
from workerguard.ops.write_refusal import RefusalParser
from workerguard.timing import RESULT_STORE_PATIENCE

SOCKET_TIMEOUT = timing.SOCKET_TIMEOUT
"""Named in ``timing`` (the lease client's bound in ``store.lease`` needs it too); here for
the callers that have always read it from here."""

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


def redis_client(url: str, settings: Settings) -> redis.Redis:
    """A client for the lock and state, with ``SOCKET_OPTIONS``: a dead Redis (or a path
    that silently drops packets) fails within ``SOCKET_TIMEOUT``, and the next command
    reconnects. A ``sentinel://`` URL gives a client of the primary the Sentinels name
    (``settings.sentinel_master``), which follows a failover on its next connection.

    Only connection errors are retried (twice, briefly): a command that timed out may
    have run, and re-sending ``SET NX`` would make us wait on our own lock. A Redis that
    refuses writes (NOREPLICAS, READONLY: ``ops.write_refusal``) counts as a lost
    connection, for every client built here.
    """
    retry = Retry(ExponentialBackoff(cap=0.25, base=0.05), 2,
                  supported_errors=(redis.exceptions.ConnectionError,))
    return _client(url, settings, retry, socket_options(url))


def lease_client(url: str, settings: Settings, renew_period: float) -> redis.Redis:
    """The client of the cluster loop (store.leases): no retry at all, and a socket timeout
    of at most ``renew_period``. A renewal that failed must be seen as failed at once:
    redis-py's default retries (10, with backoff) would hide a partition for longer than a
    renew deadline (measured: a 4 s partition went unreported by a 1 s-timeout client)."""
    timeout = lease_socket_timeout(renew_period)
    options = socket_options(url) | {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    return _client(url, settings, Retry(NoBackoff(), 0), options, NewestEpochSentinel)


def watch_client(url: str, settings: Settings) -> redis.Redis:
    """The client the Redis watch reads through (``ops.primary_watch``): no retry and a
    socket timeout of ``timing.REDIS_WATCH_TIMEOUT``, so a primary cut off without a RST
    is seen as gone within that, not after the general client's 5 s and its retries.
    It only reads: what the watch records goes through the guard's general client."""
    timeout = timing.REDIS_WATCH_TIMEOUT
    connect = min(timeout, SENTINEL_CONNECT_TIMEOUT) if sentinel.is_sentinel(url) else timeout
    options = socket_options(url) | {"socket_timeout": timeout, "socket_connect_timeout": connect}
    return _client(url, settings, Retry(NoBackoff(), 0), options)


class NewestEpochSentinel(Sentinel):
    """Finds the primary the way a failover decided it: of every Sentinel that answers,
    the one with the highest ``config-epoch`` names it.

    redis-py takes the first Sentinel's answer. Right after a failover a Sentinel that has
    not heard of it yet (they spread it in hello messages, every 2 s) still names the old
    primary, which is by then a replica: a lease client reconnecting through it gets only
    ``READONLY`` until the renew deadline fences its instance (seen in
    tests/test_cluster_sentinel.py). Asking all of them costs a round trip per Sentinel
    per new connection, which a lease client makes rarely."""

    def discover_master(self, service_name: str) -> tuple[str, int]:
        best: tuple[int, int, str, int] | None = None
        for number, node in enumerate(self.sentinels):
            try:
                masters = cast(dict[str, dict[str, Any]], node.sentinel_masters())
            except (redis.exceptions.ConnectionError, redis.exceptions.ResponseError,
                    redis.exceptions.TimeoutError):
                continue
            state = masters.get(service_name)
            if state and self.check_master_state(state, service_name):  # type: ignore[no-untyped-call]
                epoch = int(state.get("config-epoch", 0))
                if best is None or epoch > best[0]:
                    best = (epoch, number, str(state["ip"]), int(state["port"]))
        if best is None:  # its error names every Sentinel
            found = cast(tuple[str, int], super().discover_master(service_name))
            return found
        _epoch, number, host, port = best
        # first, as redis-py puts the one that answered (ops.sentinel_order remembers it once
        # a reading on the primary it named confirms it)
        self.sentinels[0], self.sentinels[number] = self.sentinels[number], self.sentinels[0]
        return host, port


def _client(url: str, settings: Settings, retry: Retry, options: dict[str, Any],
            sentinel_class: type[Sentinel] = Sentinel) -> redis.Redis:
    options = options | {"parser_class": RefusalParser}
    if not sentinel.is_sentinel(url):
        return redis.Redis.from_url(url, retry=retry, **options)
    parsed = sentinel.parse(url)
    sentinels = sentinel_order.follow(
        sentinel_class(parsed.nodes, sentinel_kwargs=sentinel_kwargs(settings), **options))
    client: redis.Redis = sentinels.master_for(
        str(settings.sentinel_master), redis_class=redis.Redis, retry=retry, db=parsed.db,
        username=parsed.username, password=parsed.password)
    return client


SENTINEL_CONNECT_TIMEOUT = 0.5
"""Seconds to connect to one Sentinel, or to a Redis found through them (a connect is
the kernel's work, done in well under this on any network a Redis should serve).
redis-py asks the Sentinels in turn, so a Sentinel cut off with the old primary (its box
partitioned: no RST) costs every new connection this long before the next is asked.
kombu and Celery make a new Sentinel client for each connection they open: with
``SOCKET_TIMEOUT`` (5 s) a guard took 20 s to consume again after an isolated
primary's failover (``tests/test_sentinel.py``)."""
SENTINEL_SOCKET_TIMEOUT = 1.0
"""Seconds any read from a Sentinel may take (one already connected, then cut off)."""


def sentinel_kwargs(settings: Settings) -> dict[str, Any]:
    """How to reach the Sentinels themselves: ``SOCKET_OPTIONS`` with the shorter
    Sentinel timeouts, and ``sentinel_password`` (never the Redis password of the URL)."""
    kwargs = SOCKET_OPTIONS | {"socket_connect_timeout": SENTINEL_CONNECT_TIMEOUT,
                               "socket_timeout": SENTINEL_SOCKET_TIMEOUT}
    if settings.sentinel_password:
        kwargs["password"] = settings.sentinel_password
    return kwargs


def sentinel_options(url: str, settings: Settings) -> dict[str, Any]:
    """The transport options kombu's ``SentinelChannel`` and Celery's ``SentinelBackend``
    need for a sentinel URL (none for any other): the master's name, how to reach the
    Sentinels. In ``app.conf``, where ``inspect conf`` and Flower mask the ``password``."""
    if not sentinel.is_sentinel(url):
        return {}
    return {"master_name": settings.sentinel_master, "sentinel_kwargs": sentinel_kwargs(settings)}


def result_transport_options(url: str, settings: Settings) -> dict[str, Any]:
    """Celery's ``result_backend_transport_options``: how long a result write is retried
    (longer across a Sentinel failover, ``timing.RESULT_STORE_PATIENCE``), and the
    Sentinel options."""
    patience = RESULT_STORE_PATIENCE if sentinel.is_sentinel(url) else 5.0
    return {"retry_policy": {"timeout": patience}, **sentinel_options(url, settings)}


def endpoint(url: str, master: str | None = None) -> str:
    """Where ``url`` points, for an error line: scheme, host and port (or socket path) and
    database, or the Sentinels and the ``master`` they are asked for; never a user name
    or password."""
    if sentinel.is_sentinel(url):
        try:
            return sentinel.parse(url).where(master)
        except sentinel.SentinelURLError:
            return f"sentinels (master {master or '?'})"
    parts = urlsplit(url)
    if parts.scheme in ("unix", "redis+socket"):
        return f"{parts.scheme}://{parts.path}"
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host or 'localhost'}:{parts.port or 6379}{parts.path}"


def client_endpoint(client: redis.Redis) -> str:
    """``endpoint`` of the server a client talks to."""
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    if isinstance(pool, SentinelConnectionPool):
        nodes = tuple((s.connection_pool.connection_kwargs.get("host", "localhost"),
                       s.connection_pool.connection_kwargs.get("port", sentinel.DEFAULT_PORT))
                      for s in pool.sentinel_manager.sentinels)
        return sentinel.SentinelURL(nodes, kwargs.get("db", 0)).where(pool.service_name)
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def unreachable(where: str, exc: BaseException, then: str = "") -> RedisUnavailable:
    """The one error line for a Redis that did not answer: which server, and what failed."""
    return RedisUnavailable(f"redis unreachable at {where} ({type(exc).__name__}){then}")


def socket_options(url: str) -> dict[str, Any]:
    """``SOCKET_OPTIONS`` for ``url``: a unix socket has no TCP keepalive (and redis-py's
    unix connection refuses the keyword); with Sentinel, connecting to a Redis may take
    ``SENTINEL_CONNECT_TIMEOUT`` only: after a partition's failover, redis-py reconnects
    a connection that failed to the address it had (the old primary, a black hole)
    before it asks the Sentinels again, and the Celery consumer's loop waits for it."""
    options = dict(SOCKET_OPTIONS)
    if urlsplit(url).scheme in ("unix", "redis+socket"):
        del options["socket_keepalive"]
    if sentinel.is_sentinel(url):
        options["socket_connect_timeout"] = SENTINEL_CONNECT_TIMEOUT
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
    """redis-py's ``unix:///path?db=N`` is kombu's ``redis+socket:///path?virtual_host=N``;
    a sentinel URL gets its credentials and database into every part (``sentinel.kombu_url``)."""
    if sentinel.is_sentinel(url):
        return sentinel.kombu_url(url)
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
