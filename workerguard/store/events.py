"""The action log: the capped Redis stream ``keys.EVENTS`` (``workerguard:events``).

Every host writes to the one stream (``EventLog.record``, ``XADD MAXLEN ~``; each entry
names its host); here are also the readers: the filters, the ``--since`` parsing, the
human line and the bounded ``XREAD`` loop of ``--follow``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from workerguard.store import keys

Event = tuple[str, dict[str, str]]
PAGE = 500
FOLLOW_BLOCK_MS = 1000
"""Each XREAD blocks at most this long, well below the client's socket timeout, so
Ctrl-C is answered within a second and a dead Redis is noticed."""
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_STREAM_ID = re.compile(r"\d+(-\d+)?")


class EventLog:
    """The writer of one host's entries of the action log."""

    def __init__(self, client: redis.Redis, host: str, maxlen: int = 10_000) -> None:
        self.client = client
        self.host = host
        self.maxlen = maxlen

    def record(self, profile: str, action: str, pids: Iterable[int], requested_by: str,
               detail: str = "") -> None:
        """Append one entry (``detail`` is cut to 500 characters); the stream is capped near
        ``maxlen`` entries."""
        self.client.xadd(
            keys.EVENTS,
            {
                "time": f"{time.time():.3f}",
                "host": self.host,
                "profile": profile,
                "action": action,
                "pids": ",".join(str(p) for p in pids),
                "requested_by": requested_by,
                "detail": detail[:500],
            },
            maxlen=self.maxlen,
            approximate=True,
        )


def parse_since(value: str, now: float | None = None) -> str:
    """``10m``/``2h``/``1d``/``30s`` ago, a stream id (``1700000000000-0``), or an ISO time
    -> the first stream id to show."""
    text = value.strip()
    if m := _DURATION.fullmatch(text):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
        return f"{int(((now if now is not None else time.time()) - seconds) * 1000)}-0"
    if _STREAM_ID.fullmatch(text):
        return text
    try:
        return f"{int(datetime.fromisoformat(text).timestamp() * 1000)}-0"
    except ValueError:
        raise ValueError(f"--since: expected a duration like 10m or 2h, a stream id or an "
                         f"ISO time, got {value!r}") from None


@dataclass(frozen=True)
class EventFilter:
    profile: str | None = None
    host: str | None = None

    def __call__(self, fields: dict[str, str]) -> bool:
        return ((self.profile is None or fields.get("profile") == self.profile)
                and (self.host is None or fields.get("host") == self.host))


def _decode(entries: Any) -> list[Event]:
    return [(_text(eid), {_text(k): _text(v) for k, v in fields.items()})
            for eid, fields in entries]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def since(client: redis.Redis, start: str, wanted: EventFilter, until: str = "+",
          ) -> Iterator[Event]:
    """Every matching event from the stream id ``start`` to ``until``, oldest first."""
    low = start
    while True:
        page = _decode(client.xrange(keys.EVENTS, min=low, max=until, count=PAGE))
        yield from ((eid, f) for eid, f in page if wanted(f))
        if len(page) < PAGE:
            return
        low = "(" + page[-1][0]  # exclusive: after the last one seen


def latest(client: redis.Redis, count: int, wanted: EventFilter, until: str = "+",
           ) -> list[Event]:
    """The last ``count`` matching events up to the stream id ``until``, oldest first."""
    found: list[Event] = []
    high = until
    while len(found) < count:
        page = _decode(client.xrevrange(keys.EVENTS, max=high, min="-", count=PAGE))
        found += [(eid, f) for eid, f in page if wanted(f)][: count - len(found)]
        if len(page) < PAGE:
            break
        high = "(" + page[-1][0]
    return found[::-1]


def last_id(client: redis.Redis) -> str:
    newest = _decode(client.xrevrange(keys.EVENTS, count=1))
    return newest[0][0] if newest else "0-0"


def follow(client: redis.Redis, after: str, wanted: EventFilter,
           keep_going: Callable[[], bool] = lambda: True) -> Iterator[Event]:
    """New matching events after the stream id ``after``, as they are written."""
    cursor = after
    while keep_going():
        reply: Any = client.xread({keys.EVENTS: cursor}, count=PAGE, block=FOLLOW_BLOCK_MS)
        for _stream, entries in reply or []:
            for eid, fields in _decode(entries):
                cursor = eid
                if wanted(fields):
                    yield eid, fields


def line(event: Event) -> str:
    """``2025-06-01 12:00:03  rpa-01  rpa  started  pids 4242  by cli:ops@box pid 7``."""
    eid, f = event
    try:
        when = datetime.fromtimestamp(float(f.get("time", ""))).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        when = eid
    text = (f"{when}  {f.get('host', '?')}  {f.get('profile', '?')}  {f.get('action', '?')}  "
            f"pids {f.get('pids') or '-'}  by {f.get('requested_by', '?')}")
    return text + (f"  ({f['detail']})" if f.get("detail") else "")


def as_json(event: Event) -> str:
    eid, f = event
    record: dict[str, Any] = {"id": eid, **f}
    record["pids"] = [int(p) for p in f.get("pids", "").split(",") if p]
    if "time" in f:
        record["time"] = float(f["time"])
    return json.dumps(record, sort_keys=True)
