"""Settings and profiles: read from one TOML file, overridable by WORKERGUARD_* variables.

The models below are the schema (pydantic v2): strict types (``"1"`` is not a number,
``1.5`` is not a whole number), unknown keys rejected rather than dropped, so a typo
never silently becomes a default. ``workerguard schema`` prints them as JSON Schema for
editors. ``config_errors.explain`` turns a validation failure into one line that names
the file, the profile and the field.

Adding a field is one line in ``Settings`` (the ``[guard]`` table; its
``WORKERGUARD_<KEY>`` variable follows) or ``Profile``, with a type from the aliases
below; a sub-table is a field whose type is another ``Table``.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    model_validator,
)
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from workerguard.probes.spec import MAX_PORT, ProbeSpec, no_nul
from workerguard.redact import redact_url
from workerguard.workers.rundir import default_runtime_dir

PROFILE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
HOST_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
Keep = Literal["newest", "oldest"]
KEEP_CHOICES: tuple[Keep, ...] = get_args(Keep)
StopSignal = Literal["SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2"]
STOP_SIGNALS: tuple[StopSignal, ...] = get_args(StopSignal)
Identity = Literal["auto", "cgroup", "registry"]
"""How a host tells its instances apart (``Settings.identity``; ``workers.host`` takes it)."""
MAX_WORKERS_LIMIT = 1000
"""No profile may ask for more instances than this: a guard against typos like 10000."""
REDIS_SCHEMES = re.compile(r"^(rediss?|redis\+socket|unix)://")
ENV_PREFIX = "WORKERGUARD_"


def default_home() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "workerguard"


# field types ---------------------------------------------------------------------------
def _fail(problem: str, field: str | None = None) -> PydanticCustomError:
    """A finished problem text for ``config_errors.explain``; ``field`` names the key
    when a check of a whole table fails."""
    return PydanticCustomError("workerguard", problem, {"field": field} if field else None)


def _as_whole(problem: str) -> WrapValidator:
    """Report any problem inside a list or table as one ``problem`` of the whole field."""
    def validate(value: Any, handler: Any) -> Any:
        try:
            return handler(tuple(value) if isinstance(value, list) else value)  # TOML arrays
        except ValidationError:
            raise _fail(f"{problem}, got {value!r}") from None
    return WrapValidator(validate)


def _regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise _fail(f"is not a valid regular expression: {exc}") from None
    return pattern


def _redis_url(url: str) -> str:
    if not REDIS_SCHEMES.match(url):
        raise _fail(f"must start with redis://, rediss:// or unix://, got {redact_url(url)!r}")
    return url


def _path(value: Any) -> Path:
    """A non-empty string (TOML) or a Path (environment) -> Path, ``~`` expanded."""
    if isinstance(value, str) and value:
        value = Path(no_nul(value))
    if not isinstance(value, Path):
        raise _fail(f"must be a non-empty string, got {value!r}")
    return value.expanduser()


def _absolute(path: Path) -> Path:
    if not path.is_absolute():
        raise _fail(f"must be an absolute path, got {str(path)!r}")
    return path


def _from_config_dir(cwd: str | None, info: ValidationInfo) -> str | None:
    """A relative ``cwd`` is taken from the config file's folder (else the current one)."""
    if cwd is None:
        return None
    path = Path(cwd).expanduser()
    base = (info.context or {}).get("base_dir") or Path.cwd()
    return str(path if path.is_absolute() else (base / path).resolve())


def _within(low: int, high: int) -> AfterValidator:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise _fail(f"must be between {low} and {high}, got {value}")
        return value
    return AfterValidator(check)


Text = Annotated[str, StringConstraints(min_length=1), AfterValidator(no_nul)]
"""A non-empty string without NUL, of any length (``probes.spec.ProbeText`` is capped)."""
Name = Annotated[str, StringConstraints(pattern=f"^{PROFILE_NAME.pattern}$")]
Seconds = Annotated[float, Field(gt=0)]
"""A duration of the guard or a profile: > 0, no upper bound (``probes.spec.ProbeSeconds``
is capped at a day)."""
PositiveInt = Annotated[int, Field(gt=0)]
Count = Annotated[int, Field(ge=0)]
Command = Annotated[tuple[Text, ...], Field(min_length=1),
                    _as_whole("must be a non-empty list of non-empty strings")]
Environment = Annotated[dict[str, str], _as_whole("must be a table of string values"),
                        Field(json_schema_extra={"propertyNames": {"not": {"pattern": f"^{ENV_PREFIX}"}}})]
HomePath = Annotated[Path, BeforeValidator(_path), Field(json_schema_extra={"type": "string"})]
AbsolutePath = Annotated[HomePath, AfterValidator(_absolute)]


class Table(BaseModel):
    """A TOML table: strict, frozen, no unknown keys; attribute docstrings become the
    schema's descriptions."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid",
                              use_attribute_docstrings=True)


# the [guard] table ---------------------------------------------------------------------
class Settings(Table):
    """The ``[guard]`` table; each key also settable as WORKERGUARD_<KEY> (the variable
    wins). ``redis_url`` is redacted in ``repr``."""

    redis_url: Annotated[Text, AfterValidator(_redis_url),
                         Field(json_schema_extra={"pattern": REDIS_SCHEMES.pattern})] | None = None
    """redis://, rediss:// or unix:// URL of the broker and lock server; absent: the embedded server."""
    host_id: Annotated[str, StringConstraints(pattern=f"^{HOST_ID.pattern}$")] = Field(
        default_factory=socket.gethostname)
    """This host's name in queues, locks and the action log (default: the hostname)."""
    home: HomePath = Field(default_factory=default_home)
    """Logs, locks and the embedded server (default: ~/.local/state/workerguard)."""
    sweep_interval: Seconds = 30.0
    """Seconds between beat sweeps."""
    lock_expire: PositiveInt = 10
    """Server-side TTL of a profile's lock, renewed while held (seconds)."""
    lock_timeout: Seconds = 30.0
    """How long a request waits for the lock before it retries (seconds)."""
    request_expires: Seconds = 300.0
    """Requests sent by workerguard's client expire after this (seconds)."""
    result_expires: Seconds = 3600.0
    """Task results are kept this long (seconds)."""
    events_maxlen: PositiveInt = 10_000
    """Cap of the action log stream."""
    embedded_linger: Annotated[float, Field(ge=0)] = 5.0
    """Seconds the embedded redis-server outlives its last user (no effect with redis_url)."""
    metrics_port: Annotated[int, Field(gt=0, le=MAX_PORT)] | None = None
    """Port of the guard worker's Prometheus endpoint; absent: none."""
    metrics_addr: Text = "0.0.0.0"  # noqa: S104 (an exporter is scraped from other hosts)
    """Address the metrics endpoint binds to; 127.0.0.1 keeps it local."""
    sweep_on_start: bool = True
    """The guard worker sweeps its host once when it is ready, without waiting for beat."""
    identity: Identity = "auto"
    """How instances are told apart: ``cgroup`` (a cgroup v2 group each), ``registry`` (a
    record of what was spawned), ``auto`` (cgroup where writable, else registry)."""
    cgroup_root: AbsolutePath | None = None
    """The cgroup v2 directory instance groups go under (default: <cgroup2 mount>/workerguard
    for root, a ``workerguard`` group beside the guard's own otherwise)."""
    log_max_bytes: PositiveInt = 10 * 1024 * 1024
    """A worker log larger than this is rotated (before each spawn and on every sweep)."""
    log_backups: Count = 3
    """Rotated copies kept (``<profile>.log.1`` ...); 0 truncates without a copy."""
    runtime_dir: AbsolutePath = Field(default_factory=default_runtime_dir)
    """Host-wide private directory of fences and instance records; absolute."""

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, (redact_url(value) if name == "redis_url" and value else value)

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def fence_dir(self) -> Path:
        """Host-wide, not under ``home``: every guard of this host must share the fences,
        whatever its ``WORKERGUARD_HOME`` or ``TMPDIR``."""
        return self.runtime_dir / "fences"

    @property
    def registry_dir(self) -> Path:
        """Host-wide like the fences: every guard of the host reads the same records."""
        return self.runtime_dir / "registry"


# a [profiles.NAME] table ---------------------------------------------------------------
def _drop_name(schema: dict[str, Any]) -> None:
    """The name is the table's key (``[profiles.NAME]``), not a key inside the table."""
    schema["properties"].pop("name", None)
    schema["required"] = [k for k in schema.get("required", []) if k != "name"]


class Profile(Table):
    """One named worker definition. Tasks name a profile; they never carry a command."""

    model_config = ConfigDict(json_schema_extra=_drop_name)

    name: Annotated[str, BeforeValidator(_not_in_table)]
    """The table's key (checked there)."""
    command: Command
    """argv list; never run through a shell."""
    cwd: Annotated[Text, AfterValidator(_from_config_dir)] | None = None
    """Working directory; a relative path is taken from the config file's folder."""
    env: Environment = Field(default_factory=dict)
    """Added to a minimal environment (PATH, HOME, LANG ...); no WORKERGUARD_* keys."""
    min_workers: Count = 1
    """ensure starts instances up to this."""
    max_workers: Annotated[int, _within(1, MAX_WORKERS_LIMIT),
                           Field(json_schema_extra={"minimum": 1, "maximum": MAX_WORKERS_LIMIT})] = 1
    """ensure/enforce stop instances beyond this (default: max(1, min_workers))."""
    keep: Keep = "newest"
    """Which instances survive when there are too many."""
    match: Annotated[Text, AfterValidator(_regex)] | None = None
    """Regex on the command line: also count instances started outside workerguard."""
    start_seconds: Seconds = 1.0
    """A new instance must stay up this long to count."""
    stop_timeout: Seconds = 10.0
    """Graceful signal, then SIGKILL after this many seconds."""
    stop_signal: StopSignal = "SIGTERM"
    """The graceful signal."""
    start_retries: PositiveInt = 3
    """Failed starts in a row before backoff delays begin."""
    backoff_max: Seconds = 300.0
    """Cap of the exponential delay (1, 2, 4 ... s) between starts of a crash-looping worker."""
    stop_adopted: bool = False
    """May stop processes adopted through ``match`` when there are too many (never by default)."""
    probe: ProbeSpec | None = None
    """Health probe ([profiles.NAME.probe], ``kind`` = command | http | tcp | heartbeat): a new
    instance counts as started once it passes; one that fails it ``failure_threshold``
    times in a row is replaced."""

    @model_validator(mode="before")
    @classmethod
    def _max_follows_min(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_workers" not in data and type(data.get("min_workers")) is int:
            return {**data, "max_workers": max(1, data["min_workers"])}
        return data

    @model_validator(mode="after")
    def _check(self) -> Profile:
        if any(k.startswith(ENV_PREFIX) for k in self.env):
            raise _fail("must not set WORKERGUARD_* variables (they mark instances)", field="env")
        if self.min_workers > self.max_workers:
            raise _fail(f"must be <= max_workers ({self.max_workers}), got {self.min_workers}",
                        field="min_workers")
        return self

    @property
    def match_regex(self) -> re.Pattern[str] | None:
        return re.compile(self.match) if self.match else None


# the file ------------------------------------------------------------------------------
class _NameInTable:
    """Stands for a ``name`` key written inside a profile table: rejected as unknown."""


def _named(key: str, table: Any) -> Any:
    if not isinstance(table, dict):
        return table
    return {**table, "name": _NameInTable() if "name" in table else key}


def _name_profiles(data: Any) -> Any:
    """Give each profile table its key as ``name``."""
    return {key: _named(key, table) for key, table in data.items()} if isinstance(data, dict) else data


def _not_in_table(value: Any) -> Any:
    if isinstance(value, _NameInTable):
        raise _fail("unknown key (a profile is named by its table: [profiles.NAME])")
    return value


class ConfigFile(Table):
    """The whole configuration file: what ``workerguard schema`` describes."""

    model_config = ConfigDict(title="workerguard configuration")

    guard: Settings = Field(default_factory=Settings)
    """Settings of this host's guard."""
    profiles: Annotated[dict[Name, Profile], BeforeValidator(_name_profiles)] = Field(
        default_factory=dict, json_schema_extra={"additionalProperties": False})
    """The worker definitions, by name: [profiles.NAME]."""


class _TomlSchema(GenerateJsonSchema):
    """TOML has no null: an optional key is one that may be left out."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the config file (for taplo / Even Better TOML, ``#:schema``)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            **ConfigFile.model_json_schema(schema_generator=_TomlSchema)}
