"""Fencing Redis writes with the grant's token: a Lua script that writes only when the
token is at least the greatest it has seen (redis-py).

The script keeps the greatest token in ``KEYS[1]`` and does the write (a SET of ``KEYS[2]``
here; put your own) in the same atomic step. Tokens stay below 2^53, so Lua's numbers
compare them exactly. On Redis Cluster both keys need one hash tag: ``{scraper:0}:fence``,
``{scraper:0}:result``.

Run as a worker would: ``python redis_fence.py REDIS_URL FENCE_KEY KEY VALUE``.
"""

from __future__ import annotations

import sys

import redis
from worker_grant import current_grant

FENCED_SET = """
local highest = tonumber(redis.call('GET', KEYS[1]) or '0')
local mine = tonumber(ARGV[1])
if mine < highest then
  return 0
end
if mine > highest then
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""


def fenced_set(client: redis.Redis, fence_key: str, key: str, value: str, token: int) -> bool:
    """SET ``key`` to ``value`` unless a greater token has written through ``fence_key``."""
    script = client.register_script(FENCED_SET)
    written: int = script(keys=[fence_key, key], args=[token, value])
    return written == 1


def main(url: str, fence_key: str, key: str, value: str) -> int:
    grant = current_grant()
    if grant.seconds_left() < 1.0:
        print("lease lapsed: not writing")
        return 2
    client = redis.Redis.from_url(url)
    try:
        accepted = fenced_set(client, fence_key, key, value, grant.token)
    finally:
        client.close()
    print(f"accepted under token {grant.token}" if accepted
          else f"refused: a token greater than {grant.token} has written")
    return 0 if accepted else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
