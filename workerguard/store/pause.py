"""The pause flag of a profile: set by ``stop_all``, cleared by ``ensure``.

While it is set, sweeps leave the profile stopped. The value records when and by whom
(JSON: ``since``, ``by``); it has no expiry, so a pause survives restarts of the guard.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import redis

from workerguard.store import keys

PauseInfo = dict[str, Any]


def pause(client: redis.Redis, host: str, profile: str, requested_by: str) -> None:
    client.set(keys.paused(host, profile), json.dumps({"since": time.time(), "by": requested_by}))


def unpause(client: redis.Redis, host: str, profile: str) -> bool:
    """Clear the flag; True if it was set."""
    return bool(client.delete(keys.paused(host, profile)))


def paused(client: redis.Redis, host: str, profiles: Sequence[str]) -> dict[str, PauseInfo | None]:
    """Pause info per profile (None: not paused), in one round trip."""
    if not profiles:
        return {}
    values = client.mget([keys.paused(host, p) for p in profiles])
    return {p: info(v) for p, v in zip(profiles, values, strict=True)}


def info(raw: bytes | str | None) -> PauseInfo | None:
    """Decode a stored flag (None: absent)."""
    return json.loads(raw) if raw else None
