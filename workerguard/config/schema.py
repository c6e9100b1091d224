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

import functools
import os
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

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
from pydantic_core import InitErrorDetails, PydanticCustomError, core_schema

from workerguard.config.lease_timing import Timing, lease_socket_timeout
from workerguard.ops import sentinel
from workerguard.probes.spec import MAX_PORT, ProbeSpec, no_nul
from workerguard.redact import redact_url
from workerguard.workers.identity import this_uid
from workerguard.workers.rundir import default_runtime_dir

PROFILE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
HOST_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
Keep = Literal["newest", "oldest"]
KEEP_CHOICES: tuple[Keep, ...] = get_args(Keep)
StopSignal = Literal["SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2"]
STOP_SIGNALS: tuple[StopSignal, ...] = get_args(StopSignal)
Scope = Literal["host", "cluster"]
"""``host``: ``max_workers`` on each host (the default); ``cluster``: across the fleet."""
Guarantee = Literal["at_most", "at_least"]
"""A cluster profile's promise when a holder is cut off: never more than N (the default), or
never fewer (a replacement starts while the cut-off one may still run)."""
CLUSTER_ONLY = ("hosts", "max_per_host", "guarantee", "lease_seconds", "renew_deadline")
"""Profile keys that only a ``scope = "cluster"`` profile may set."""
Identity = Literal["auto", "cgroup", "registry"]
"""How a host tells its instances apart (``Settings.identity``; ``workers.host`` takes it)."""
MAX_WORKERS_LIMIT = 1000
"""No profile may ask for more instances than this: a guard against typos like 10000."""
REDIS_SCHEMES = re.compile(r"^(rediss?|redis\+socket|unix|sentinel)://")
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
        raise _fail(f"must start with redis://, rediss://, unix:// or sentinel://, "
                    f"got {redact_url(url)!r}")
    if sentinel.is_sentinel(url):
        try:
            sentinel.parse(url)
        except sentinel.SentinelURLError as exc:
            raise _fail(str(exc)) from None
    return url


def _secret(value: Any, handler: Any) -> Any:
    """Validate a secret without ever echoing it in the error line."""
    try:
        return handler(value)
    except (ValidationError, PydanticCustomError):
        raise _fail("must be a non-empty string without NUL (the value is not shown)") from None


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


@functools.lru_cache(maxsize=256)
def _uid_of(user: str | int) -> int | None:
    """The uid of a user name, or the uid itself; None if no user has that name."""
    if isinstance(user, int) or sys.platform == "win32":
        return user if isinstance(user, int) else None
    import pwd

    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def _known_users(users: tuple[str | int, ...]) -> tuple[str | int, ...]:
    if sys.platform == "win32":
        return users  # no uids there: ``match_users`` changes nothing
    for user in users:
        if _uid_of(user) is None:
            raise _fail(f"names no user of this host: {user!r} (write a uid as a number, "
                        f"e.g. 1001, or a name `getent passwd` knows)")
    return users


def _within(low: int, high: int) -> AfterValidator:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise _fail(f"must be between {low} and {high}, got {value}")
        return value
    return AfterValidator(check)


Text = Annotated[str, StringConstraints(min_length=1), AfterValidator(no_nul)]
"""A non-empty string without NUL, of any length (``probes.spec.ProbeText`` is capped)."""
Name = Annotated[str, StringConstraints(pattern=f"^{PROFILE_NAME.pattern}$")]
HostPattern = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.*?!\[\]-]{1,64}$")]
"""A ``host_id`` or an fnmatch pattern of them (``scrape-0[1-5]``, ``gpu-*``)."""
Seconds = Annotated[float, Field(gt=0)]
"""A duration of the guard or a profile: > 0, no upper bound (``probes.spec.ProbeSeconds``
is capped at a day)."""
PositiveInt = Annotated[int, Field(gt=0)]
Count = Annotated[int, Field(ge=0)]
Command = Annotated[tuple[Text, ...], Field(min_length=1),
                    _as_whole("must be a non-empty list of non-empty strings")]
MatchUsers = Annotated[tuple[Text | Annotated[int, Field(ge=0)], ...],
                      _as_whole("must be a list of user names or uids (whole numbers >= 0)"),
                      AfterValidator(_known_users)]
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
    """redis://, rediss:// or unix:// URL of the broker and lock server, or the Sentinels'
    ``sentinel://[:PASS@]h1:26379;sentinel://h2:26379;.../0`` (then with
    ``sentinel_master``); absent: the embedded server."""
    sentinel_master: Name | None = None
    """With a sentinel:// ``redis_url`` (and only then): the name of the primary the
    Sentinels watch (``sentinel monitor NAME ...``)."""
    sentinel_password: Annotated[Text, WrapValidator(_secret)] | None = None
    """With a sentinel:// ``redis_url``: the Sentinels' own AUTH password (``requirepass``
    of sentinel.conf), distinct from the Redis password in the URL; absent: no AUTH."""
    host_id: Annotated[str, StringConstraints(pattern=f"^{HOST_ID.pattern}$")] = Field(
        default_factory=socket.gethostname)
    """This host's name in queues, locks and the action log (default: the hostname)."""
    home: HomePath = Field(default_factory=default_home)
    """Logs, locks and the embedded server (default: ~/.local/state/workerguard)."""
    sweep_interval: Seconds = 30.0
    """Seconds between two sweeps of a host (beat's schedule, the guard's timer)."""
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
    sweep_timer: bool = True
    """The guard worker also sweeps its host when no sweep came for about one
    ``sweep_interval`` (a dead or absent beat); false leaves sweeps to beat alone."""
    identity: Identity = "auto"
    """How instances are told apart: ``cgroup`` (a cgroup v2 group each), ``registry`` (a
    record of what was spawned), ``auto`` (cgroup where writable, else registry)."""
    cgroup_root: AbsolutePath | None = None
    """The cgroup v2 directory instance groups go under (default, by systemd's delegation
    rules: ``<own group>/workerguard`` in a delegated unit, the guard itself moving into
    ``<own group>/guard``; else ``<cgroup2 mount>/workerguard`` for root; see
    ``workers/cgroup_layout.py``)."""
    log_max_bytes: PositiveInt = 10 * 1024 * 1024
    """A worker log larger than this is rotated (before each spawn and on every sweep)."""
    log_backups: Count = 3
    """Rotated copies kept (``<profile>.log.1`` ...); 0 truncates without a copy."""
    runtime_dir: AbsolutePath = Field(default_factory=default_runtime_dir)
    """Host-wide private directory of fences and instance records; absolute."""

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            if value and name == "redis_url":
                yield name, redact_url(value)
            else:
                yield name, "***" if value and name == "sentinel_password" else value

    @model_validator(mode="after")
    def _sentinel_settings(self) -> Settings:
        uses_sentinel = bool(self.redis_url) and sentinel.is_sentinel(str(self.redis_url))
        if uses_sentinel and not self.sentinel_master:
            raise _fail("is required with a sentinel:// redis_url (the name in "
                        "`sentinel monitor NAME ...`)", field="sentinel_master")
        for name in ("sentinel_master", "sentinel_password"):
            if not uses_sentinel and getattr(self, name) is not None:
                raise _fail("is only used with a sentinel:// redis_url; remove it, or set "
                            "redis_url to the Sentinels", field=name)
        return self

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


# the [cluster] table -------------------------------------------------------------------
def _raise_all(problems: list[tuple[tuple[str | int, ...], str]], value: Any) -> None:
    """Several problems at once, each at its own location (a check across tables)."""
    if problems:
        raise ValidationError.from_exception_data("workerguard", [
            InitErrorDetails(type=_fail(problem), loc=loc, input=value) for loc, problem in problems])


class ClusterSettings(Table):
    """The ``[cluster]`` table: the lease timings of every ``scope = "cluster"`` profile,
    fleet-wide (every host must have the same). Defaults are Kubernetes' leader election
    (lease 15 s, renew deadline 10 s, retry 2 s). ``workerguard check`` prints the timing
    inequality with these numbers and its margin."""

    lease_seconds: Seconds = 15.0
    """L: the TTL of a slot's lease in Redis, set by every grant and renewal; a crashed
    holder's slot moves to another host this long after its last renewal."""
    renew_deadline: Seconds = 10.0
    """D: an instance whose lease had no acknowledged renewal for this long is killed by its
    leash, before the lease can pass to another host (the inequality below)."""
    renew_period: Seconds = 2.0
    """P: seconds between two renewal rounds of a guard (one pipeline for all its slots)."""
    kill_budget: Seconds = 1.0
    """K: from the renew deadline until no process of the instance runs (leash lateness,
    ``cgroup.kill`` and the kernel's teardown)."""
    clock_drift: Annotated[float, Field(ge=0, lt=0.5)] = 0.01
    """rho: the most any host's clock and the Redis primary's may run fast or slow (0.01:
    1 %); clock steps are detected, not covered by this."""
    fence_grace: Seconds = 3.0
    """The profile's stop_signal goes out this long before the hard deadline (capped by its
    stop_timeout), then the group is killed at the deadline."""
    replicas: Count = 0
    """Grants and renewals count only once this many replicas have them (``WAIT``):
    floor(n/2) of n Redis nodes behind Sentinel; 0 for a single Redis."""
    wait_timeout: Seconds = 0.5
    """Seconds a ``WAIT`` for ``replicas`` may take."""
    claim_stagger: Annotated[float, Field(ge=0)] = 0.25
    """Seconds between two placement ranks: the host at rank r claims a vacant slot r times
    this after the first."""

    def timing(self, lease_seconds: float | None = None,
               renew_deadline: float | None = None) -> Timing:
        """The lease timings, with a profile's own L and D where it sets them."""
        return Timing(lease=lease_seconds or self.lease_seconds,
                      renew_deadline=renew_deadline or self.renew_deadline,
                      renew_period=self.renew_period, kill_budget=self.kill_budget,
                      clock_drift=self.clock_drift)

    @model_validator(mode="after")
    def _inequality(self) -> ClusterSettings:
        timing = self.timing()
        _raise_all([((field,), problem) for field, problem
                    in timing.violations(lease_socket_timeout(self.renew_period))], self)
        return self


# a [profiles.NAME] table ---------------------------------------------------------------
def _drop_name(schema: dict[str, Any]) -> None:
    """The name is the table's key (``[profiles.NAME]``), not a key inside the table."""
    schema["properties"].pop("name", None)
    schema["required"] = [k for k in schema.get("required", []) if k != "name"]


class Profile(Table):
    """One named worker definition. Tasks name a profile; they never carry a command."""

    model_config = ConfigDict(json_schema_extra=_drop_name)
    UNLISTED_KEYS: ClassVar[tuple[str, ...]] = ("scope", *CLUSTER_ONLY)
    """Left out of the keys an unknown-key error lists (config.explain): the cluster keys."""

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
    match_users: MatchUsers = ()
    """With ``match``: user names or uids whose processes ``match`` may adopt (and so, with
    ``stop_adopted``, stop); empty (the default): only the guard's own user's. A process
    of any other user is never adopted, whatever its command line."""
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
    scope: Scope = "host"
    """``host``: ``max_workers`` instances on each host that configures the profile;
    ``cluster``: ``max_workers`` across the fleet, each in a leased slot (docs/fleet.md)."""
    hosts: Annotated[tuple[HostPattern, ...],
                     _as_whole("must be a list of host_id patterns (fnmatch: * ? [..])")] = ()
    """Cluster profiles: the hosts that may run it, as fnmatch patterns in order of
    preference; empty: every host whose config has the profile."""
    max_per_host: PositiveInt = 1
    """Cluster profiles: the most slots one host may hold (1: every instance on another host)."""
    guarantee: Guarantee = "at_most"
    """Cluster profiles: ``at_most``: a cut-off holder kills its instance before the slot can
    move, so never more than max_workers run; ``at_least``: it keeps running, and a
    replacement starts elsewhere (duplicates possible, gaps shorter)."""
    lease_seconds: Seconds | None = None
    """Cluster profiles: this profile's own L (default: ``[cluster] lease_seconds``)."""
    renew_deadline: Seconds | None = None
    """Cluster profiles: this profile's own D (default: ``[cluster] renew_deadline``)."""

    @model_validator(mode="before")
    @classmethod
    def _max_follows_min(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if (data.get("scope") == "cluster" and "min_workers" not in data
                and type(data.get("max_workers")) is int):
            return {**data, "min_workers": data["max_workers"]}  # N slots: all of them run
        if "max_workers" not in data and type(data.get("min_workers")) is int:
            return {**data, "max_workers": max(1, data["min_workers"])}
        return data

    @model_validator(mode="after")
    def _check(self) -> Profile:
        if any(k.startswith(ENV_PREFIX) for k in self.env):
            raise _fail("must not set WORKERGUARD_* variables (they mark instances)", field="env")
        if self.match_users and self.match is None:
            raise _fail("is only used with match; remove it, or set match", field="match_users")
        if self.min_workers > self.max_workers:
            raise _fail(f"must be <= max_workers ({self.max_workers}), got {self.min_workers}",
                        field="min_workers")
        if self.scope == "cluster":
            self._check_cluster()
        else:
            for name in CLUSTER_ONLY:
                if name in self.model_fields_set:
                    raise _fail('is only used with scope = "cluster"', field=name)
        return self

    def _check_cluster(self) -> None:
        if self.match is not None:
            raise _fail('cannot be used with scope = "cluster": an adopted process has no '
                        "leash to kill it at its lease's deadline", field="match")
        if self.min_workers != self.max_workers:
            raise _fail(f"must equal max_workers ({self.max_workers}) with scope = \"cluster\" "
                        f"(every slot runs), got {self.min_workers}", field="min_workers")
        if sys.platform == "win32":
            raise _fail('"cluster" needs a POSIX host (the leash kills through cgroups and '
                        "process groups); Windows runs per-host profiles only", field="scope")

    @property
    def is_cluster(self) -> bool:
        return self.scope == "cluster"

    @property
    def match_regex(self) -> re.Pattern[str] | None:
        return re.compile(self.match) if self.match else None

    @property
    def match_uids(self) -> frozenset[int] | None:
        """The uids whose processes ``match`` may adopt: ``match_users``, else the guard's
        own; None where processes have no uid (Windows: any)."""
        own = this_uid()
        if own is None:
            return None
        if not self.match_users:
            return frozenset({own})
        return frozenset(uid for user in self.match_users if (uid := _uid_of(user)) is not None)


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
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    """Lease timings of the cluster profiles, fleet-wide."""
    profiles: Annotated[dict[Name, Profile], BeforeValidator(_name_profiles)] = Field(
        default_factory=dict, json_schema_extra={"additionalProperties": False})
    """The worker definitions, by name: [profiles.NAME]."""

    @model_validator(mode="after")
    def _cluster_profiles(self) -> ConfigFile:
        """What a cluster profile needs beyond its own table: a shared Redis, and lease
        timings that keep inequality (I) with its own L or D."""
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for name, profile in self.profiles.items():
            if not profile.is_cluster:
                continue
            if self.guard.redis_url is None:
                problems.append((("profiles", name, "scope"),
                                 '"cluster" needs a Redis every host reaches: set [guard] '
                                 "redis_url (the embedded server serves one host only)"))
            if profile.lease_seconds is None and profile.renew_deadline is None:
                continue  # the [cluster] table's own timings, checked there
            timing = self.cluster.timing(profile.lease_seconds, profile.renew_deadline)
            for field, problem in timing.violations(lease_socket_timeout(timing.renew_period)):
                whose = ("" if field in profile.model_fields_set
                         else " ([cluster]'s, with this profile's own timings)")
                problems.append((("profiles", name, field),
                                 problem.replace(" must", f"{whose} must", 1)))
        _raise_all(problems, self)
        return self


class _TomlSchema(GenerateJsonSchema):
    """TOML has no null: an optional key is one that may be left out."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the config file (for taplo / Even Better TOML, ``#:schema``)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            **ConfigFile.model_json_schema(schema_generator=_TomlSchema)}
