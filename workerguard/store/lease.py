"""Leases of cluster slots: claim, renew, release, each one Lua script on the Redis primary.

A cluster profile runs ``max_workers`` instances across the fleet, one per *slot*. A slot
is held through a lease, a key with a server-side TTL (``lease_ms``, L) whose value names
the holder, its fencing token and its instance (``<host>|<token>|<instance id>``). Only a
claim creates the key, under every check at once (pause, epoch and hold-off, the Redis
clock inside the window the claimer expects, the fleet's spec, ``max_per_host``); a
renewal only extends a key that still names its owner, and a release only deletes one
that does. So a lease is never re-created behind its owner's back and never taken over
while it lives.

The **fencing token** of a grant is ``max(last token + 1, Redis TIME in µs)``: strictly
increasing per profile while the counter lives, and above any token lost with an old
primary: no claim runs until a hold-off after a failover has passed, so the ``TIME``
floor is then above every token the old primary issued.

Times are the Redis server's (``TIME`` inside the scripts): the TTL runs on its clock
anyway, and every guard compares against the same one. The client is meant to have no
hidden retries (``ops.connect.lease_client``): a renewal that failed must be seen as
failed at once, never retried past its deadline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import redis

from workerguard.store import keys

_NOW = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
"""

# KEYS: slot 0..N-1, token, spec, epoch, paused.
# ARGV: host, fingerprint, max_per_host, lease_ms, holdoff_ms, identity, window_lo_ms,
#       window_hi_ms (0: no window), instance id, wanted slot (-1: the lowest vacant one),
#       the spec record to write if there is none (store.cluster_spec; empty: the fingerprint).
_CLAIM = _NOW + """
local n = #KEYS - 4
local token_key, spec_key, epoch_key, paused_key = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3], KEYS[n + 4]
local host, fp = ARGV[1], ARGV[2]
local max_per_host, lease_ms, holdoff_ms = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local identity, lo, hi = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
local iid, wanted = ARGV[9], tonumber(ARGV[10])
if redis.call('EXISTS', paused_key) == 1 then return {'refused', 'paused'} end
local epoch = redis.call('GET', epoch_key)
if not epoch then return {'held_off', 'no epoch'} end
local sep = string.find(epoch, '|', 1, true)
local since = tonumber(string.sub(epoch, 1, sep - 1))
if string.sub(epoch, sep + 1) ~= identity then return {'held_off', 'primary changed'} end
if now_ms - since < holdoff_ms then return {'held_off', tostring(holdoff_ms - (now_ms - since))} end
if hi > 0 and (now_ms < lo or now_ms > hi) then return {'refused', 'clock'} end
local spec = redis.call('GET', spec_key)
if spec then
  local ok, record = pcall(cjson.decode, spec)
  local spec_fp = spec
  if ok and type(record) == 'table' and record['fp'] then spec_fp = record['fp'] end
  if spec_fp ~= fp then return {'refused', 'spec_mismatch'} end
end
local mine, vacant = 0, -1
local prefix = host .. '|'
for i = 1, n do
  local value = redis.call('GET', KEYS[i])
  if value then
    if string.sub(value, 1, #prefix) == prefix then mine = mine + 1 end
  elseif vacant < 0 and (wanted < 0 or wanted == i - 1) then
    vacant = i - 1
  end
end
if mine >= max_per_host then return {'refused', 'max_per_host'} end
if vacant < 0 then return {'lost', 'no vacant slot'} end
if not spec then redis.call('SET', spec_key, ARGV[11] ~= '' and ARGV[11] or fp) end
local last = tonumber(redis.call('GET', token_key) or '0')
local token = string.format('%.0f', math.max(last + 1, now_us))
redis.call('SET', token_key, token)
redis.call('SET', KEYS[vacant + 1], host .. '|' .. token .. '|' .. iid, 'PX', lease_ms)
return {'won', tostring(vacant), token}
"""

# KEYS: the slots this guard holds, then each one's info key (optional); ARGV: lease_ms,
# then the value each slot must still have. A renewed slot's info lives as long as it.
_RENEW = """
local out = {}
local n = #ARGV - 1
for i = 1, n do
  if redis.call('GET', KEYS[i]) == ARGV[i + 1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
    if KEYS[n + i] then redis.call('PEXPIRE', KEYS[n + i], ARGV[1]) end
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

# KEYS: slot, info. ARGV: the lease's "<host>|<token>|" prefix, host, token, pid, start,
# the instance's age in ms. Written only while the lease names this holder and token, with
# the lease's own TTL; the same pid and token keep their start time.
_INFO = _NOW + """
local value = redis.call('GET', KEYS[1])
if not value or string.sub(value, 1, #ARGV[1]) ~= ARGV[1] then return 0 end
local pttl = redis.call('PTTL', KEYS[1])
if pttl <= 0 then return 0 end
local same = redis.call('HMGET', KEYS[2], 'token', 'pid', 'start')
if not (same[1] == ARGV[3] and same[2] == ARGV[4] and same[3] == ARGV[5]) then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], 'host', ARGV[2], 'token', ARGV[3], 'pid', ARGV[4],
             'start', ARGV[5], 'started_ms', string.format('%.0f', now_ms - tonumber(ARGV[6])))
end
redis.call('PEXPIRE', KEYS[2], pttl)
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: epoch. ARGV: identity (run_id:replid), reason. Rewrites the epoch when the primary
# is another than the one recorded (or none is): the hold-off starts now.
_EPOCH = _NOW + """
local epoch = redis.call('GET', KEYS[1])
if epoch then
  local sep = string.find(epoch, '|', 1, true)
  if string.sub(epoch, sep + 1) == ARGV[1] and ARGV[2] == '' then
    return {0, tonumber(string.sub(epoch, 1, sep - 1)), now_ms}
  end
end
redis.call('SET', KEYS[1], string.format('%.0f', now_ms) .. '|' .. ARGV[1])
return {1, now_ms, now_ms}
"""

Result = Literal["won", "lost", "held_off", "refused"]


@dataclass(frozen=True)
class Grant:
    """What a claim got: a slot and its token (``won``), or why not."""

    result: Result
    reason: str = ""
    slot: int = -1
    token: int = 0


@dataclass(frozen=True)
class Epoch:
    """The primary the fleet agreed on since ``since_ms`` (Redis clock); ``changed``: this
    call rewrote it (the hold-off starts now)."""

    changed: bool
    since_ms: int
    now_ms: int


@dataclass(frozen=True)
class SlotInfo:
    """The instance a slot's holder runs for it (``keys.cluster_info``)."""

    host: str
    token: int
    pid: int
    start: int
    """The process's start on its host (``workers.identity``), with ``pid`` its identity."""
    started_ms: int
    """When it started, on the Redis clock (ms): uptimes need no host's wall clock."""


def renew_keys(profile: str, slots: list[int]) -> list[str]:
    """The keys of a renewal of ``slots``: their leases, then their infos."""
    return ([keys.cluster_slot(profile, s) for s in slots]
            + [keys.cluster_info(profile, s) for s in slots])


def lease_value(host: str, token: int, instance_id: str) -> str:
    return f"{host}|{token}|{instance_id}"


def parse_value(value: str) -> tuple[str, int, str] | None:
    """(host, token, instance id) of a lease value; None if it is not one."""
    parts = value.split("|")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]), parts[2]


class LeaseStore:
    """The lease scripts of one cluster profile."""

    def __init__(self, client: redis.Redis, profile: str, slots: int) -> None:
        self.client = client
        self.profile = profile
        self.slots = slots
        self._claim = client.register_script(_CLAIM)
        self.renew_script = client.register_script(_RENEW)
        """The owner-checked extend; ``Leases.renew`` sends it in its pipeline."""
        self._release = client.register_script(_RELEASE)
        self._info = client.register_script(_INFO)
        self._epoch = client.register_script(_EPOCH)

    def slot_keys(self) -> list[str]:
        return [keys.cluster_slot(self.profile, i) for i in range(self.slots)]

    def claim(self, host: str, fingerprint: str, instance_id: str, *, max_per_host: int,
              lease_ms: int, holdoff_ms: int, identity: str,
              window_ms: tuple[int, int] | None = None, slot: int | None = None,
              spec: str = "") -> Grant:
        """One atomic claim of the lowest vacant slot (or ``slot``); ``spec`` is the record
        the first claim writes (``store.cluster_spec.Spec.encode``; empty: the fingerprint)."""
        lo, hi = window_ms or (0, 0)
        reply = cast(list[bytes], self._claim(
            keys=[*self.slot_keys(), keys.cluster_token(self.profile), keys.cluster_spec(self.profile),
                  keys.EPOCH, keys.cluster_paused(self.profile)],
            args=[host, fingerprint, max_per_host, lease_ms, holdoff_ms, identity, lo, hi,
                  instance_id, -1 if slot is None else slot, spec]))
        result = cast(Result, reply[0].decode())
        if result == "won":
            return Grant("won", slot=int(reply[1]), token=int(reply[2]))
        return Grant(result, reason=reply[1].decode())

    def renew(self, held: dict[int, str], lease_ms: int) -> dict[int, bool]:
        """Extend each held slot whose key still has its value; False: the lease is lost."""
        if not held:
            return {}
        slots = sorted(held)
        reply = cast(list[int], self.renew_script(keys=renew_keys(self.profile, slots),
                                                  args=[lease_ms, *(held[s] for s in slots)]))
        return {slot: bool(ok) for slot, ok in zip(slots, reply, strict=True)}

    def release(self, slot: int, value: str) -> bool:
        """Delete the slot's lease if it is still ``value`` (ours)."""
        return bool(self._release(keys=[keys.cluster_slot(self.profile, slot)], args=[value]))

    def publish_info(self, slot: int, host: str, token: int, pid: int, start: int,
                     age_seconds: float) -> bool:
        """Say which instance runs for ``slot`` (``status --cluster`` shows its pid and
        uptime), if the lease still names ``host`` and ``token``; False if it does not."""
        return bool(self._info(
            keys=[keys.cluster_slot(self.profile, slot), keys.cluster_info(self.profile, slot)],
            args=[f"{host}|{token}|", host, token, pid, start, round(age_seconds * 1000)]))

    def infos(self) -> dict[int, SlotInfo]:
        """Each slot's instance as its holder last said (slots without one left out)."""
        pipe = self.client.pipeline(transaction=False)
        for slot in range(self.slots):
            pipe.hgetall(keys.cluster_info(self.profile, slot))
        out = {}
        for slot, raw in enumerate(cast(list[dict[bytes, bytes]], pipe.execute())):
            try:
                fields = {k.decode(): v.decode() for k, v in raw.items()}
                out[slot] = SlotInfo(fields["host"], int(fields["token"]), int(fields["pid"]),
                                     int(fields["start"]), int(fields["started_ms"]))
            except (KeyError, ValueError):
                continue
        return out

    def holders(self) -> dict[int, tuple[str, int, str, int]]:
        """Every held slot: (host, token, instance id, milliseconds left)."""
        pipe = self.client.pipeline(transaction=False)
        for key in self.slot_keys():
            pipe.get(key)
            pipe.pttl(key)
        replies = pipe.execute()
        out = {}
        for slot in range(self.slots):
            value, pttl = replies[2 * slot], replies[2 * slot + 1]
            parsed = parse_value(value.decode()) if value else None
            if parsed is not None:
                out[slot] = (*parsed, max(0, int(pttl)))
        return out


def observe_epoch(client: redis.Redis, identity: str, reason: str = "") -> Epoch:
    """Compare the primary's ``identity`` with the fleet's epoch record; rewrite it (the
    hold-off starts) if it differs, is missing, or ``reason`` is given (a clock jump)."""
    changed, since, now = cast(list[int], client.eval(_EPOCH, 1, keys.EPOCH, identity, reason))
    return Epoch(bool(changed), int(since), int(now))
