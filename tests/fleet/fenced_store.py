"""The "protected resource" of F5/F6 (../shared/FLEET.md §5.5): a Redis hash per slot that
the bed's worker (tests/fleet/writer.py) writes to with its fencing token, through a
check-and-set script that refuses a token below the highest it has seen for the slot.

Per slot the hash counts ``accepted`` and ``refused`` writes, keeps the ``top`` token
and counts ``stale``: writes it *accepted* although the slot's lease (read in the same
script, atomically) had already been granted under a greater token. A stale write is
what fencing exists to prevent: an old holder writing after a new one was granted the
slot, before the new one wrote (so the check-and-set alone could not refuse it). With
the leash the old holder is dead by then, so ``stale`` must stay 0. Each stale write is
also listed (``stale_writes``: token, writer, when) so that a check can say whose it was.
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
local seen = redis.call('HGET', KEYS[1], 'top') or '0'
local top = tonumber(seen)
if token < top then
  redis.call('HINCRBY', KEYS[1], 'refused', 1)
  return 0
end
redis.call('HSET', KEYS[1], 'top', ARGV[1], 'writer', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'accepted', 1)
local lease = redis.call('GET', KEYS[2])
if lease then
  local issued = string.match(lease, '|(%d+)|')
  local granted = tonumber(issued)
  if granted and token < granted then
    redis.call('HINCRBY', KEYS[1], 'stale', 1)
    local now = redis.call('TIME')
    redis.call('RPUSH', KEYS[1] .. ':stale', ARGV[1] .. ' ' .. issued .. ' ' .. ARGV[2] .. ' '
               .. seen .. ' ' .. now[1] .. '.' .. string.format('%06d', tonumber(now[2])))
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


@dataclass(frozen=True)
class StaleWrite:
    """One write accepted stale: its token, the greater token the slot's lease had then,
    the writer's host, the store's top token before it, and the Redis time (Unix s)."""

    slot: int
    token: int
    granted: int
    writer: str
    top: int
    at: float

    def line(self) -> str:
        return (f"slot {self.slot}: {self.writer} wrote token {self.token} at {self.at:.3f} "
                f"(lease granted {self.granted}, top {self.top})")


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

    def stale_writes(self, slot: int) -> list[StaleWrite]:
        """Every write the store accepted stale, oldest first."""
        raw: list[bytes] = self.client.lrange(self.key.format(slot=slot) + ":stale", 0, -1)  # type: ignore[assignment]
        found = []
        for entry in raw:
            token, granted, writer, top, at = entry.decode().split()
            found.append(StaleWrite(slot, int(token), int(granted), writer, int(top), float(at)))
        return found

    def writes(self, slot: int) -> SlotWrites:
        found: dict[bytes, bytes] = self.client.hgetall(self.key.format(slot=slot))  # type: ignore[assignment]
        raw = {k.decode(): v.decode() for k, v in found.items()}
        return SlotWrites(slot, int(raw.get("accepted", 0)), int(raw.get("refused", 0)),
                          int(raw.get("stale", 0)), int(raw.get("top", 0)))
