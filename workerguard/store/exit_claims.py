"""Exit claims: each ended instance is reported once per host, or not at all.

A guard that stops an instance on purpose claims its exit first (``SET NX EX``), so no
exit watcher of this host reports that exit as a crash; an exit nobody claimed is a
crash, and the first watcher to claim it records it and asks for a heal. Orphans are
claimed the same way, so each is logged once a day, not at every sweep.
"""

from __future__ import annotations

import redis

from workerguard.store import keys


class ExitClaims:
    """The exit claims of one host's instances."""

    def __init__(self, client: redis.Redis, host: str) -> None:
        self.client = client
        self.host = host

    def claim(self, key: str, ttl: int = 3600) -> bool:
        """True for the first claim of ``key`` on this host within ``ttl`` seconds."""
        return bool(self.client.set(keys.exit_claim(self.host, key), "1", nx=True, ex=ttl))
