"""Writes to one Redis every 50 ms and prints each outcome as a JSON line, until killed.

Run inside a cut-off box (``tests/netns_bed.py``) by the isolation tests: the client
still connected to an isolated primary. Each line: ``{"sent": CLOCK_MONOTONIC seconds,
"at": the same when answered, "key": "iso:PID:N", "ok": true}`` or ``{..., "error": "NOREPLICAS ..."}``
(``time.monotonic`` is one clock for every namespace of the machine).

Usage: python minority_writer.py HOST PORT (the password in ``REDIS_PASSWORD``).
"""

from __future__ import annotations

import json
import os
import sys
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    client = redis.Redis(host=host, port=port, password=os.environ["REDIS_PASSWORD"],
                         socket_timeout=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    number = 0
    while True:
        number += 1
        key = f"iso:{os.getpid()}:{number}"  # unique across rounds: a key of an earlier
        # writer, replicated before its own cut, must not read as surviving this one
        line: dict[str, object] = {"key": key, "sent": time.monotonic()}
        try:
            client.set(key, number)
            line["ok"] = True
        except redis.exceptions.RedisError as exc:
            line["error"] = str(exc)[:120]
        line["at"] = time.monotonic()
        print(json.dumps(line), flush=True)
        time.sleep(0.05)  # a pace, not a synchronisation


if __name__ == "__main__":
    main()
