"""A Redis that answers but refuses to write is treated like a Redis that cannot be reached.

Around a failover a Redis answers reads and refuses every write: an isolated or new
primary with ``min-replicas-to-write`` (``NOREPLICAS Not enough good replicas to
write``), a demoted primary (``READONLY You can't write against a read only replica``),
a replica cut off from its primary with ``replica-serve-stale-data no`` (``MASTERDOWN``).
Inside a Lua script the same refusal arrives wrapped (``ERR Error running script ...:
-NOREPLICAS ...``). redis-py raises all of these as ``ResponseError``, which the guard's
code (``store.lock.REDIS_ERRORS``) rightly does not take for "Redis unreachable": a
``ResponseError`` is usually a bug.

``RefusalParser`` (the parser of every client ``ops.connect`` builds) turns these
replies into ``WriteRefused``, a ``ConnectionError``: nothing was written, the request
fails with "redis unreachable ... nothing was touched" and the worker is left alone, as
for a lost connection; redis-py drops the connection, so the next command reconnects
(to the primary the Sentinels name now, with a ``sentinel://`` URL).
"""

from __future__ import annotations

from typing import Any

import redis
import redis.utils
from redis._parsers import _RESP2Parser, _RESP3Parser

REFUSALS = ("NOREPLICAS", "READONLY", "MASTERDOWN", "UNBLOCKED")
"""The error codes of a Redis that is up but takes no writes (``UNBLOCKED``: a blocked
``BLPOP`` of a primary being demoted)."""


class WriteRefused(redis.exceptions.ConnectionError):
    """Redis refused a write until its replication is back (nothing was written).

    Not also a ``ResponseError``: redis-py's pipeline keeps reading after a
    ``ResponseError``, from the connection this error has just closed."""


def is_refusal(reply: str) -> bool:
    """True for an error reply (without its ``-``) that refuses a write for now, also
    as a Lua script reports it."""
    code = reply.split(" ", 1)[0]
    return code in REFUSALS or (reply.removeprefix("ERR ").startswith("Error running script")
                                and any(f"-{c} " in reply for c in REFUSALS))


class _Refusals:
    @classmethod
    def parse_error(cls, response: str) -> Any:
        if is_refusal(response):
            return WriteRefused(response)
        return super().parse_error(response)  # type: ignore[misc]


class Resp2RefusalParser(_Refusals, _RESP2Parser):
    """redis-py's RESP2 parser, raising the refusals as ``WriteRefused``."""


class Resp3RefusalParser(_Refusals, _RESP3Parser):
    """redis-py's RESP3 parser, raising the refusals as ``WriteRefused``."""


RefusalParser: type[Any] = (Resp3RefusalParser
                            if getattr(redis.utils, "DEFAULT_RESP_VERSION", 2) == 3
                            else Resp2RefusalParser)
"""The parser of redis-py's default protocol (RESP3 from redis-py 8; a RESP2 parser on a
RESP3 connection would turn off redis-py's maintenance notifications check). A server
without ``HELLO`` makes redis-py fall back to its own RESP2 parser: there (Redis 5 and
older) the refusals stay ``ResponseError``."""
