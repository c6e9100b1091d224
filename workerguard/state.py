"""What workerguard remembers in Redis: pause flags, crash-loop backoff, the action log.

Every key lives under ``workerguard:``. The action log is one capped stream
(``XADD MAXLEN ~``) shared by all hosts; each entry names its host.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

EVENTS_KEY = "workerguard:events"


def pause_key(host: str, profile: str) -> str:
    return f"workerguard:paused:{host}:{profile}"


def backoff_key(host: str, profile: str) -> str:
    return f"workerguard:backoff:{host}:{profile}"


@dataclass(frozen=True)
class Backoff:
    failures: int = 0
    next_attempt: float = 0.0

    def active(self, now: float) -> bool:
        return self.next_attempt > now


class State:
    def __init__(self, client: redis.Redis, host: str, events_maxlen: int = 10_000) -> None:
        self.client = client
        self.host = host
        self.events_maxlen = events_maxlen

    # pause ---------------------------------------------------------------------------
    def pause(self, profile: str, requested_by: str) -> None:
        value = json.dumps({"since": time.time(), "by": requested_by})
        self.client.set(pause_key(self.host, profile), value)

    def unpause(self, profile: str) -> bool:
        return bool(self.client.delete(pause_key(self.host, profile)))

    def paused(self, profiles: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        """Pause info per profile, in one round trip."""
        if not profiles:
            return {}
        values = self.client.mget([pause_key(self.host, p) for p in profiles])
        return {p: (json.loads(v) if v else None) for p, v in zip(profiles, values, strict=True)}

    # backoff -------------------------------------------------------------------------
    def backoffs(self, profiles: Sequence[str]) -> dict[str, Backoff]:
        if not profiles:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for p in profiles:
            pipe.hgetall(backoff_key(self.host, p))
        out = {}
        for p, raw in zip(profiles, pipe.execute(), strict=True):
            out[p] = Backoff(int(raw.get(b"failures", 0)), float(raw.get(b"next_attempt", 0)))
        return out

    def record_failure(self, profile: str, start_retries: int, backoff_max: float,
                       now: float) -> Backoff:
        """Count a failed start; after ``start_retries`` in a row, delay 1, 2, 4 ... s."""
        key = backoff_key(self.host, profile)
        failures = int(self.client.hincrby(key, "failures", 1))
        delay = 0.0
        if failures >= start_retries:
            delay = min(float(2 ** min(failures - start_retries, 30)), backoff_max)
        backoff = Backoff(failures, now + delay if delay else 0.0)
        self.client.hset(key, "next_attempt", backoff.next_attempt)
        return backoff

    def reset_backoff(self, profile: str) -> None:
        self.client.delete(backoff_key(self.host, profile))

    # sweeps --------------------------------------------------------------------------
    def claim_sweep(self, interval: float) -> bool:
        """True for the first sweep of this host in the current half-interval.

        Two beats running by mistake send each sweep twice, milliseconds apart; the
        second finds the key and is skipped.
        """
        key = f"workerguard:sweep:{self.host}"
        return bool(self.client.set(key, "1", nx=True, px=max(1, int(interval * 500))))

    # action log ----------------------------------------------------------------------
    def record(self, profile: str, action: str, pids: Iterable[int], requested_by: str,
               detail: str = "") -> None:
        self.client.xadd(
            EVENTS_KEY,
            {
                "time": f"{time.time():.3f}",
                "host": self.host,
                "profile": profile,
                "action": action,
                "pids": ",".join(str(p) for p in pids),
                "requested_by": requested_by,
                "detail": detail[:500],
            },
            maxlen=self.events_maxlen,
            approximate=True,
        )


def read_events(client: redis.Redis, *, since: str = "-", count: int = 100,
                ) -> list[tuple[str, dict[str, str]]]:
    """Events after the stream id ``since`` (``-`` for the beginning), oldest first."""
    entries: Any = client.xrange(EVENTS_KEY, min=since, max="+", count=count)
    return [
        (_text(eid), {_text(k): _text(v) for k, v in fields.items()})
        for eid, fields in entries
    ]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
