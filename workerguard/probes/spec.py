"""What a probe is: one of four kinds, with timings named after Kubernetes and Docker.

A profile may carry one probe (``[profiles.NAME.probe]`` in TOML). It serves twice:
as **readiness** (a new instance counts as started when the probe first passes,
within ``start_timeout``) and as **liveness** (an instance that fails it
``failure_threshold`` times in a row is unhealthy and gets replaced).

Field            default  Kubernetes (default)            Docker HEALTHCHECK (default)
---------------  -------  ------------------------------  -----------------------------
interval         10 s     periodSeconds (10)              --interval (30s)
timeout          5 s      timeoutSeconds (1)              --timeout (30s)
failure_threshold 3       failureThreshold (3)            --retries (3)
initial_delay    0 s      initialDelaySeconds (0)         --
start_interval   1 s      --                              --start-interval (5s)
start_timeout    60 s     startupProbe failureThreshold   --start-period (0s)
                          x periodSeconds (3 x 10)
(always 1)                successThreshold (1 for liveness; so is it here)

- ``timeout`` is 5 s, between Kubernetes' 1 s (too tight for a command probe that
  starts an interpreter on a loaded host) and Docker's 30 s (longer than the interval).
- ``initial_delay``: no probe at all until this long after the instance started.
- Until its first pass an instance is *starting*: it is probed every
  ``start_interval`` and its failures do not count, for up to ``start_timeout``
  after it started (Docker's start period, Kubernetes' startup probe), counted from
  its exact start on the monotonic clock. A readiness wait's last probe starts then
  (with its own ``timeout``): it never gives up sooner; after that the watcher counts
  failures at ``interval``.
- A pass resets the count; ``failure_threshold`` failures in a row make the
  instance unhealthy. ``timeout`` is one total deadline for the whole probe (an HTTP
  probe's redirects and a trickling answer included, see ``deadline``): a probe that
  outlives it is killed and is a failure; so is a probe that raises anything.

Placeholders, expanded per instance when the probe runs: ``{pid}`` (the instance's
main process), ``{instance}`` (its instance id, hex), ``{index}`` (its 0-based slot
within the profile). Every string field that names something takes them (command
arguments, url, host, path); ``{{``/``}}`` are literal braces. Anything else in
braces is rejected when the config is loaded.

Several instances of one profile each listen on their own port: set ``port`` to the
first instance's port; instance ``index`` is probed on ``port + index`` (a tcp probe
always, an http probe through ``{port}`` in its url). Instances that share one port
cannot be told apart by a network probe; use a command or heartbeat probe for them.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

PLACEHOLDERS = ("pid", "instance", "index")
"""Placeholders every probe may use."""
MAX_PORT = 65535
"""The highest TCP port, for every port the config names (a probe's, the metrics')."""
_HEX = re.compile(r"[0-9a-f]{1,64}")

ProbeSeconds = Annotated[float, Field(strict=True, gt=0, le=86_400)]
"""A probe's period or timeout: > 0 and at most a day (``config.schema.Seconds`` has no
upper bound)."""
ProbeDelay = Annotated[float, Field(strict=True, ge=0, le=86_400)]
"""A probe's delay: 0 allowed, at most a day."""
Port = Annotated[int, Field(strict=True, ge=1, le=MAX_PORT)]
ProbeText = Annotated[str, Field(strict=True, min_length=1, max_length=4096)]
"""A probe's string field: 1 to 4096 characters (``config.schema.Text`` has no upper
bound); its validator rejects a NUL (``no_nul``), after the field's own checks."""


def no_nul(value: str, field: str | None = None) -> str:
    """``value``, unless it holds a NUL (no argv, path or URL can carry one): the one NUL
    check of the config, probes included. Its error is a finished line for
    ``config.explain``; ``field`` names the key when a check of a whole table asks."""
    if "\x00" in value:
        raise PydanticCustomError("workerguard", "must not contain NUL",
                                  {"field": field} if field else None)
    return value


@dataclass(frozen=True)
class ProbeTarget:
    """The instance a probe looks at.

    ``env`` and ``cwd`` are those a command probe runs with; the guard passes the
    instance's own (the profile's ``env`` and ``cwd``). Without ``env`` a command
    probe gets a minimal environment, never the guard's (it may hold a Redis URL).
    """

    pid: int
    instance: str
    index: int = 0
    env: Mapping[str, str] | None = field(default=None, repr=False)
    cwd: str | None = None

    def __post_init__(self) -> None:
        if not _HEX.fullmatch(self.instance):
            raise ValueError(f"instance id must be lowercase hex, got {self.instance[:80]!r}")
        if self.pid <= 0 or self.index < 0:
            raise ValueError(f"pid must be > 0 and index >= 0, got pid={self.pid} index={self.index}")

    def values(self, port: int | None = None) -> dict[str, str]:
        found = {"pid": str(self.pid), "instance": self.instance, "index": str(self.index)}
        if port is not None:
            found["port"] = str(port + self.index)
        return found


def placeholders_in(template: str) -> list[str]:
    """The placeholder names in ``template``; ValueError for a malformed one."""
    names = []
    for _literal, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if spec or conversion:
            raise ValueError(f"placeholder {{{name}}} takes no format or conversion")
        names.append(name)
    return names


def expand(template: str, values: Mapping[str, str]) -> str:
    """``template`` with each ``{name}`` replaced by ``values[name]`` (validated names only:
    no attribute or index access, unlike ``str.format``)."""
    parts = []
    for literal, name, _spec, _conversion in string.Formatter().parse(template):
        parts.append(literal)
        if name is not None:
            parts.append(values[name])
    return "".join(parts)


def _check_placeholders(field_name: str, templates: Iterable[str], allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    for template in templates:
        try:
            names = placeholders_in(template)
        except ValueError as exc:
            raise ValueError(f"{field_name}: {exc} in {template[:80]!r}") from None
        for name in names:
            if name not in allowed:
                known = ", ".join(f"{{{a}}}" for a in allowed)
                raise ValueError(f"{field_name}: unknown placeholder {{{name}}} in {template[:80]!r} "
                                 f"(known: {known})")


class _Timing(BaseModel):
    """The fields every kind shares (see the module docstring for their meaning)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    interval: ProbeSeconds = 10.0
    timeout: ProbeSeconds = 5.0
    failure_threshold: Annotated[int, Field(strict=True, ge=1, le=1000)] = 3
    initial_delay: ProbeDelay = 0.0
    start_interval: ProbeSeconds = 1.0
    start_timeout: ProbeSeconds = 60.0


class CommandProbe(_Timing):
    """Run ``command`` (argv, no shell); exit 0 is healthy. Its environment also holds
    WORKERGUARD_PID, WORKERGUARD_PROBED_INSTANCE and WORKERGUARD_INDEX (never an
    instance's own marks: a probe is not an instance)."""

    kind: Literal["command"]
    command: Annotated[tuple[ProbeText, ...], Field(min_length=1, max_length=256)]

    @field_validator("command")
    @classmethod
    def _placeholders(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for arg in value:
            no_nul(arg)
        _check_placeholders("command", value, PLACEHOLDERS)
        return value


class HttpProbe(_Timing):
    """GET ``url``; any 2xx answer within ``timeout`` is healthy (at most 5 redirects are
    followed, http and https only, all within the one deadline; proxies from the
    environment are not used; certificates are verified)."""

    kind: Literal["http"]
    url: ProbeText
    port: Port | None = None
    """The first instance's port; ``{port}`` in ``url`` is ``port + index``."""

    @model_validator(mode="after")
    def _check_url(self) -> HttpProbe:
        if not re.match(r"https?://[^/]", self.url):
            raise ValueError(f"url: must start with http:// or https://, got {self.url[:80]!r}")
        no_nul(self.url, field="url")
        if self.port is None and "{port}" in self.url:
            raise ValueError("url: {port} is the instance's port, so the probe needs `port = "
                             "<the first instance's port>` (instance i gets port + i)")
        allowed = (*PLACEHOLDERS, "port") if self.port is not None else PLACEHOLDERS
        _check_placeholders("url", [self.url], allowed)
        if self.port is not None and "port" not in placeholders_in(self.url):
            raise ValueError("url: port is set but the url has no {port} placeholder")
        return self


class TcpProbe(_Timing):
    """Connect to ``host``:``port + index`` within ``timeout``."""

    kind: Literal["tcp"]
    host: ProbeText = "127.0.0.1"
    port: Port

    @field_validator("host")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        _check_placeholders("host", [no_nul(value)], PLACEHOLDERS)
        return value


class HeartbeatProbe(_Timing):
    """The file at ``path`` must have been modified at most ``max_age`` seconds ago.
    A missing file is a failure (while the instance is starting, failures do not count)."""

    kind: Literal["heartbeat"]
    path: ProbeText
    max_age: ProbeSeconds

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        _check_placeholders("path", [no_nul(value)], PLACEHOLDERS)
        if not Path(value).expanduser().is_absolute():
            raise ValueError(f"path: must be absolute (or start with ~), got {value[:80]!r}")
        return value


ProbeSpec = Annotated[CommandProbe | HttpProbe | TcpProbe | HeartbeatProbe, Field(discriminator="kind")]
"""A probe definition, told apart by ``kind``; embed as ``probe: ProbeSpec | None = None``."""
AnyProbe = CommandProbe | HttpProbe | TcpProbe | HeartbeatProbe
PROBE_KINDS: tuple[str, ...] = tuple(
    get_args(kind.model_fields["kind"].annotation)[0] for kind in get_args(AnyProbe))
"""command, http, tcp, heartbeat."""
