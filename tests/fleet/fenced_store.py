"""The "protected resource" of F5/F6 (../shared/FLEET.md §5.5): a Redis hash per slot that
the bed's worker (tests/fleet/writer.py) writes to with its fencing token, through a
check-and-set script that refuses a token below the highest it has seen for the slot.

Per slot the hash counts ``accepted`` and ``refused`` writes, keeps the ``top`` token
and counts ``stale``: writes it *accepted* although the slot's lease (read in the same
script, atomically) had already been granted under a greater token. A stale write is
what fencing exists to prevent: an old holder writing after a new one was granted the
slot, before the new one wrote (so the check-and-set alone could not refuse it). With
the leash the old holder is dead by then, so ``stale`` must stay 0.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.fleet import writer
from workerguard.store import keys

SCRIPT = """
local token = tonumber(ARGV[1])
local top = tonumber(redis.call('HGET', KEYS[1], 'top') or '0')
if token < top then
  redis.call('HINCRBY', KEYS[1], 'refused', 1)
  return 0
end
redis.call('HSET', KEYS[1], 'top', ARGV[1], 'writer', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'accepted', 1)
local lease = redis.call('GET', KEYS[2])
if lease then
  local granted = tonumber(string.match(lease, '|(%d+)|'))
  if granted and token < granted then
    redis.call('HINCRBY', KEYS[1], 'stale', 1)
  end
end
return 1
"""


@dataclass(frozen=True)
class SlotWrites:
    slot: int
    accepted: int
    refused: int
    stale: int
    top: int

    def line(self) -> str:
        return (f"slot {self.slot}: {self.accepted} writes accepted, {self.refused} refused "
                f"(lower token), {self.stale} accepted stale")


class FencedStore:
    """The store on the bed's Redis: ``install`` loads the script and writes the file the
    workers read; ``command`` is the profile's command; ``writes`` reads the counters."""

    def __init__(self, client: redis.Redis, profile: str, prefix: str) -> None:
        self.client = client
        self.profile = profile
        self.key = f"{prefix}:store:{{slot}}"

    def install(self, directory: Path, host: str, port: int, password: str) -> Path:
        sha = self.client.script_load(SCRIPT)
        path = directory / "store"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(f"{host} {port} {password} {sha}\n")
        return path

    def command(self, store_file: Path) -> list[str]:
        lease_key = keys.cluster_slot(self.profile, 0).removesuffix("0") + "{slot}"
        return [sys.executable, writer.__file__, "--store", str(store_file),
                "--key", self.key, "--lease-key", lease_key]

    def writes(self, slot: int) -> SlotWrites:
        found: dict[bytes, bytes] = self.client.hgetall(self.key.format(slot=slot))  # type: ignore[assignment]
        raw = {k.decode(): v.decode() for k, v in found.items()}
        return SlotWrites(slot, int(raw.get("accepted", 0)), int(raw.get("refused", 0)),
                          int(raw.get("stale", 0)), int(raw.get("top", 0)))
