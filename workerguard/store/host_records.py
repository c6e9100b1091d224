"""Host records: which guards are alive, what they run and hold, and who they are.

Each guard with a cluster profile writes its record every renew period P (``PX 3P``, so a
departed host vanishes within 3P) and its last-seen time in a sorted set (so ``hosts``
can show the departed too). Placement ranks the live, eligible, undrained hosts from
these records; ``workerguard hosts`` prints them.

A record names the machine (``/etc/machine-id``) and the boot (``boot_id``). Two guards
with one ``host_id`` on two machines would share each other's leases, so a write that
finds a live record of the same ``host_id`` from another machine is refused (atomically,
in one script) and the guard refuses cluster profiles. A reboot of the same machine is
the same host.

Times are the Redis server's (``TIME`` in the script), the clock every guard shares.
"""

from __future__ import annotations

import functools
import json
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import redis

from workerguard.store import keys

MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")

_PUBLISH = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local current = redis.call('GET', KEYS[1])
if current then
  local ok, old = pcall(cjson.decode, current)
  if ok and type(old) == 'table' and old['machine'] ~= ARGV[2] then
    return {'conflict', old['machine'] or ''}
  end
end
local record = cjson.decode(ARGV[1])
record['seen_ms'] = now_ms
record['clock_offset'] = (now_ms - tonumber(ARGV[5])) / 1000
redis.call('SET', KEYS[1], cjson.encode(record), 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], now_ms, ARGV[4])
return {'ok', tostring(now_ms)}
"""

_FORGET = """
local pttl = redis.call('PTTL', KEYS[1])
if pttl ~= -2 then
  return {'live', pttl}
end
local listed = redis.call('ZREM', KEYS[2], ARGV[1])
local drained = redis.call('SREM', KEYS[3], ARGV[1])
return {'forgotten', listed + drained}
"""


@functools.cache
def machine_id() -> str:
    """This machine's id (systemd's ``/etc/machine-id``); the host name where there is none."""
    for path in MACHINE_ID_FILES:
        try:
            with open(path, encoding="ascii") as file:
                found = file.read().strip()
        except OSError:
            continue
        if found:
            return found
    return f"hostname:{socket.gethostname()}"


@dataclass(frozen=True)
class HostRecord:
    """What one guard says about itself."""

    host: str
    machine: str
    boot: str
    version: str
    fingerprints: dict[str, str] = field(default_factory=dict)
    """Cluster profile -> the fingerprint of its definition in this guard's config."""
    slots: dict[str, list[int]] = field(default_factory=dict)
    """Cluster profile -> the slots this host holds."""
    draining: bool = False
    primary: str = ""
    """The Redis primary this guard sees (``run_id:replid``, shortened)."""
    clock_offset: float = 0.0
    """Redis ``TIME`` minus this host's wall clock, seconds, at the last write (the script
    compares the two; the error is at most the write's one-way latency)."""
    seen_ms: int = 0
    """Redis time of the write (set by the script)."""

    @property
    def held(self) -> int:
        """Cluster slots held in total (placement spreads by it)."""
        return sum(len(s) for s in self.slots.values())

    @classmethod
    def from_json(cls, raw: bytes | str) -> HostRecord | None:
        try:
            data = json.loads(raw)
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (ValueError, TypeError):
            return None


@dataclass(frozen=True)
class Forgotten:
    """What ``HostRecords.forget`` did."""

    live: bool
    """The host's record exists: its guard is alive (nothing was removed)."""
    expires_in: float | None
    """With ``live``: seconds until the record expires unless rewritten (None: no expiry)."""
    removed: bool
    """Whether the host was listed or marked draining, and now is not."""


class HostIdConflict(Exception):
    """Another machine's guard is alive with this ``host_id``."""

    def __init__(self, host: str, other_machine: str) -> None:
        super().__init__(f"host_id {host!r} is in use by a live guard on another machine "
                         f"(machine-id {other_machine[:12]}...): set a unique host_id; cluster "
                         f"profiles are refused until then")
        self.host = host
        self.other_machine = other_machine


class HostRecords:
    """Writes this guard's record; reads everyone's."""

    def __init__(self, client: redis.Redis, wall_clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.wall_clock = wall_clock
        """This host's wall clock, compared with Redis ``TIME`` at each write."""
        self._publish = client.register_script(_PUBLISH)
        self._forget = client.register_script(_FORGET)

    def publish(self, record: HostRecord, ttl_seconds: float) -> int:
        """Write ``record`` (``PX ttl``); the Redis time of the write. Raises
        ``HostIdConflict`` if a live record of the same host comes from another machine."""
        body = {k: v for k, v in asdict(record).items() if k not in ("seen_ms", "clock_offset")}
        reply = cast(list[bytes], self._publish(
            keys=[keys.host_record(record.host), keys.HOSTS],
            args=[json.dumps(body), record.machine, max(1, round(ttl_seconds * 1000)),
                  record.host, round(self.wall_clock() * 1000)]))
        if reply[0] == b"conflict":
            raise HostIdConflict(record.host, reply[1].decode())
        return int(reply[1])

    def live(self) -> dict[str, HostRecord]:
        """Every host whose record has not expired, by host id."""
        return {r.host: r for r in self._read(self.known()) if r is not None}

    def known(self) -> dict[str, int]:
        """Every host ever seen, with its last-seen Redis time (ms), newest first."""
        pairs = cast(list[tuple[bytes, float]],
                     self.client.zrevrange(keys.HOSTS, 0, -1, withscores=True))
        return {host.decode(): int(score) for host, score in pairs}

    def _read(self, hosts: Mapping[str, int]) -> list[HostRecord | None]:
        if not hosts:
            return []
        raw = cast(list[bytes | None], self.client.mget([keys.host_record(h) for h in hosts]))
        return [HostRecord.from_json(r) if r is not None else None for r in raw]

    def forget(self, host: str) -> Forgotten:
        """Drop a departed host from the list and its drain mark (``hosts --forget``), in
        one script: a host whose record is live (its guard writes it every P) is left
        alone, so a guard that comes back is never forgotten half-way."""
        state, value = cast(list[Any], self._forget(
            keys=[keys.host_record(host), keys.HOSTS, keys.DRAINING], args=[host]))
        if state == b"live":
            pttl = int(value)
            return Forgotten(live=True, expires_in=pttl / 1000 if pttl >= 0 else None,
                             removed=False)
        return Forgotten(live=False, expires_in=None, removed=int(value) > 0)

    # drain -----------------------------------------------------------------------------
    def set_draining(self, host: str, draining: bool) -> None:
        if draining:
            self.client.sadd(keys.DRAINING, host)
        else:
            self.client.srem(keys.DRAINING, host)

    def draining(self) -> set[str]:
        """Every host marked draining."""
        return {h.decode() for h in cast(set[bytes], self.client.smembers(keys.DRAINING))}


def describe(record: HostRecord) -> dict[str, Any]:
    """A record as the ``hosts --json`` output shows it."""
    return {**asdict(record), "held": record.held}
