"""The fleet's spec record of a cluster profile: the definition every claimer must have.

``workerguard:cluster:<profile>:spec`` holds ``{"fp", "max_workers", "lease_ms"}``. The
first claim writes it (``store.lease``); a claim whose fingerprint differs is refused
(``spec_mismatch``), so a half-rolled config never makes two hosts disagree about N. The
record changes only by ``move``, a compare-and-set on the value read before: a guard's
cluster loop sends it once every live eligible host reports the same new fingerprint
(``policy.spec_agreement`` decides). When N shrinks, the same script also refuses while
any slot at or beyond the new N is still held, so the fleet never holds more slots than
the spec it agreed on says.

The fingerprint covers what the fleet must agree on: the command (``workers.discover``'s
fingerprint, what makes a running instance ``outdated``), ``max_workers`` and the lease
length L. A record written by an older guard (the bare command fingerprint) still reads.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import cast

import redis

from workerguard.config.schema import Profile
from workerguard.store import keys
from workerguard.workers.discover import fingerprint

# KEYS: spec, then the slot keys that must be vacant (new N .. old N - 1).
# ARGV: the value read before (empty: none), the new value.
_MOVE = """
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[1] then return 'changed' end
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then return 'held' end
end
redis.call('SET', KEYS[1], ARGV[2])
return 'moved'
"""


@dataclass(frozen=True)
class Spec:
    """One cluster profile's definition as the fleet agrees on it."""

    fp: str
    max_workers: int
    lease_ms: int

    def encode(self) -> str:
        return json.dumps({"fp": self.fp, "lease_ms": self.lease_ms,
                           "max_workers": self.max_workers}, sort_keys=True)

    @classmethod
    def decode(cls, raw: bytes | str) -> Spec:
        """A stored record; an unreadable one (or an older guard's bare fingerprint) keeps
        its text as the fingerprint and N = 0 (unknown)."""
        text = raw.decode() if isinstance(raw, bytes) else raw
        try:
            data = json.loads(text)
            return cls(str(data["fp"]), int(data["max_workers"]), int(data["lease_ms"]))
        except (ValueError, TypeError, KeyError):
            return cls(text, 0, 0)


def profile_spec(profile: Profile, lease_seconds: float) -> Spec:
    """This config's spec of a cluster profile (``lease_seconds``: its effective L)."""
    lease_ms = round(lease_seconds * 1000)
    described = json.dumps([fingerprint(profile), profile.max_workers, lease_ms])
    fp = hashlib.sha1(described.encode(), usedforsecurity=False).hexdigest()[:16]
    return Spec(fp, profile.max_workers, lease_ms)


def read_spec(client: redis.Redis, profile: str) -> tuple[Spec | None, str]:
    """The fleet's spec of ``profile`` (None: no claim yet) and its raw value, for ``move``."""
    raw = cast(bytes | None, client.get(keys.cluster_spec(profile)))
    if raw is None:
        return None, ""
    return Spec.decode(raw), raw.decode()


def move_spec(client: redis.Redis, profile: str, before: str, new: Spec, old_slots: int) -> str:
    """Replace the spec read as ``before`` with ``new``: ``moved``; ``changed`` if someone
    else changed it meanwhile; ``held`` while a slot in ``new.max_workers .. old_slots - 1``
    is still held (N shrinks only once those slots are vacant)."""
    vacate = [keys.cluster_slot(profile, i) for i in range(new.max_workers, old_slots)]
    reply = client.eval(_MOVE, 1 + len(vacate), keys.cluster_spec(profile), *vacate,
                        before, new.encode())
    return (reply.decode() if isinstance(reply, bytes) else str(reply))
