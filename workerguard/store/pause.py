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


class Pauses:
    """The pause flags of one host's profiles."""

    def __init__(self, client: redis.Redis, host: str) -> None:
        self.client = client
        self.host = host

    def pause(self, profile: str, requested_by: str) -> None:
        self.client.set(keys.paused(self.host, profile),
                        json.dumps({"since": time.time(), "by": requested_by}))

    def unpause(self, profile: str) -> bool:
        """Clear the flag; True if it was set."""
        return bool(self.client.delete(keys.paused(self.host, profile)))

    def read(self, profiles: Sequence[str]) -> dict[str, PauseInfo | None]:
        """Pause info per profile (None: not paused), in one round trip."""
        if not profiles:
            return {}
        values = self.client.mget([keys.paused(self.host, p) for p in profiles])
        return {p: info(v) for p, v in zip(profiles, values, strict=True)}


def info(raw: bytes | str | None) -> PauseInfo | None:
    """Decode a stored flag (None: absent)."""
    return json.loads(raw) if raw else None
