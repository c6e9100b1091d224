"""Settings and profiles: read from one TOML file, overridable by WORKERGUARD_* variables.

Every check names the file, the profile and the field, and unknown keys are
rejected rather than dropped, so a typo never silently becomes a default.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError
from .redact import redact_url
from .runtime import default_runtime_dir

PROFILE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
HOST_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
Keep = Literal["newest", "oldest"]
Identity = Literal["auto", "cgroup", "registry"]
IDENTITY_CHOICES: tuple[Identity, ...] = ("auto", "cgroup", "registry")
KEEP_CHOICES: tuple[Keep, ...] = ("newest", "oldest")
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2")
MAX_WORKERS_LIMIT = 1000
"""No profile may ask for more instances than this: a guard against typos like 10000."""


def default_home() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "workerguard"


@dataclass(frozen=True)
class Settings:
    """The ``[guard]`` table. ``redis_url`` is redacted in ``repr``."""

    redis_url: str | None = field(default=None, repr=False)
    host_id: str = field(default_factory=socket.gethostname)
    home: Path = field(default_factory=default_home)
    sweep_interval: float = 30.0
    lock_expire: int = 10
    lock_timeout: float = 30.0
    request_expires: float = 300.0
    result_expires: float = 3600.0
    events_maxlen: int = 10_000
    embedded_linger: float = 5.0
    """Seconds the embedded redis-server outlives its last user (no effect with redis_url)."""
    metrics_port: int | None = None
    """Port of the guard worker's Prometheus endpoint; None (the default) serves none."""
    metrics_addr: str = "0.0.0.0"  # noqa: S104 (an exporter is scraped from other hosts)
    """Address the metrics endpoint binds to; 127.0.0.1 keeps it local."""
    sweep_on_start: bool = True
    """The guard worker sweeps its host once when it is ready, without waiting for beat."""
    identity: Identity = "auto"
    """How instances are told apart: ``cgroup`` (a cgroup v2 group each), ``registry`` (a
    record of what was spawned), ``auto`` (cgroup where writable, else registry)."""
    cgroup_root: Path | None = None
    """The cgroup v2 directory instance groups go under (default: <cgroup2 mount>/workerguard
    for root, a ``workerguard`` group beside the guard's own otherwise)."""
    log_max_bytes: int = 10 * 1024 * 1024
    """A worker log larger than this is rotated (before each spawn and on every sweep)."""
    log_backups: int = 3
    """Rotated copies kept (``<profile>.log.1`` ...); 0 truncates without a copy."""
    runtime_dir: Path = field(default_factory=default_runtime_dir)
    """Host-wide private directory of fences (see ``runtime``); absolute."""

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.name != "redis_url"
        )
        return f"Settings(redis_url={redact_url(self.redis_url)!r}, {shown})"

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


@dataclass(frozen=True)
class Profile:
    """One named worker definition. Tasks name a profile; they never carry a command."""

    name: str
    command: tuple[str, ...]
    cwd: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    min_workers: int = 1
    max_workers: int = 1
    keep: Keep = "newest"
    match: str | None = None
    start_seconds: float = 1.0
    stop_timeout: float = 10.0
    stop_signal: str = "SIGTERM"
    start_retries: int = 3
    """Failed starts in a row before backoff delays begin."""
    backoff_max: float = 300.0
    """Cap of the exponential delay (1, 2, 4 ... s) between starts of a crash-looping worker."""
    stop_adopted: bool = False
    """May stop processes adopted through ``match`` when there are too many (never by default)."""

    @property
    def match_regex(self) -> re.Pattern[str] | None:
        return re.compile(self.match) if self.match else None


@dataclass(frozen=True)
class Config:
    settings: Settings
    profiles: Mapping[str, Profile]
    source: str

    def profile(self, name: str) -> Profile:
        from .errors import UnknownProfile

        try:
            return self.profiles[name]
        except (KeyError, TypeError):
            known = ", ".join(sorted(self.profiles)) or "none"
            raise UnknownProfile(
                f"unknown profile {str(name)[:80]!r} (configured: {known}; config: {self.source})"
            ) from None


def _field_types(cls: type) -> dict[str, Any]:
    return {f.name: f.type for f in fields(cls)}


class _Checker:
    """Turns raw TOML values into typed ones, with errors that say where they came from."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.where}: {key}: {problem}")

    def number(self, key: str, value: Any, *, integer: bool = False, positive: bool = True,
               minimum: float | None = None) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"must be a number, got {type(value).__name__} {value!r}")
        if integer and not (isinstance(value, int) or float(value).is_integer()):
            raise self.fail(key, f"must be a whole number, got {value!r}")
        if positive and value <= 0:
            raise self.fail(key, f"must be > 0, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.fail(key, f"must be >= {minimum:g}, got {value!r}")
        return int(value) if integer else float(value)

    def string(self, key: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"must be a non-empty string, got {value!r}")
        if "\x00" in value:
            raise self.fail(key, "must not contain NUL")
        return value

    def unknown(self, raw: Mapping[str, Any], allowed: set[str]) -> None:
        extra = sorted(set(raw) - allowed)
        if extra:
            raise self.fail(extra[0], f"unknown key (allowed: {', '.join(sorted(allowed))})")


_SETTINGS_NUMBERS: dict[str, dict[str, Any]] = {
    "sweep_interval": {},
    "lock_expire": {"integer": True},
    "lock_timeout": {},
    "request_expires": {},
    "result_expires": {},
    "events_maxlen": {"integer": True},
    "embedded_linger": {"positive": False, "minimum": 0},
    "metrics_port": {"integer": True},
    "log_max_bytes": {"integer": True},
    "log_backups": {"integer": True, "positive": False, "minimum": 0},
}
MAX_PORT = 65535


_SETTINGS_FLAGS = ("sweep_on_start",)
_ENV_TRUE, _ENV_FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_settings(raw: Mapping[str, Any], where: str) -> Settings:
    check = _Checker(where)
    check.unknown(raw, set(_field_types(Settings)))
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _SETTINGS_NUMBERS:
            values[key] = check.number(key, value, **_SETTINGS_NUMBERS[key])
        elif key in ("home", "runtime_dir"):
            values[key] = Path(check.string(key, value)).expanduser()
            if key == "runtime_dir" and not values[key].is_absolute():
                raise check.fail(key, f"must be an absolute path, got {value!r}")
        elif key == "redis_url":
            url = check.string(key, value)
            if not re.match(r"^(rediss?|redis\+socket|unix)://", url):
                raise check.fail(key, f"must start with redis://, rediss:// or unix://, got "
                                      f"{redact_url(url)!r}")
            values[key] = url
        elif key == "identity":
            if value not in IDENTITY_CHOICES:
                raise check.fail(key, f"must be one of {', '.join(IDENTITY_CHOICES)}, got {value!r}")
            values[key] = value
        elif key == "cgroup_root":
            values[key] = Path(check.string(key, value))
        elif key == "metrics_addr":
            values[key] = check.string(key, value)
        elif key in _SETTINGS_FLAGS:
            if not isinstance(value, bool):
                raise check.fail(key, f"must be true or false, got {value!r}")
            values[key] = value
        elif key == "host_id":
            host = check.string(key, value)
            if not HOST_ID.fullmatch(host):
                raise check.fail(key, f"must match {HOST_ID.pattern}, got {host!r}")
            values[key] = host
    if values.get("metrics_port", 0) > MAX_PORT:
        raise check.fail("metrics_port", f"must be a port (1..{MAX_PORT}), got {values['metrics_port']}")
    return Settings(**values)


def parse_profile(name: str, raw: Any, where: str, base_dir: Path | None = None) -> Profile:
    """Validate one ``[profiles.NAME]`` table; a relative ``cwd`` is taken from ``base_dir``."""
    base_dir = base_dir or Path.cwd()
    check = _Checker(f"{where}: profile {name!r}")
    if not PROFILE_NAME.fullmatch(name):
        raise ConfigError(f"{where}: profile {name[:80]!r}: name must match {PROFILE_NAME.pattern}")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: profile {name!r}: must be a table, got {raw!r}")
    allowed = {f.name for f in fields(Profile)} - {"name"}
    check.unknown(raw, allowed)
    if "command" not in raw:
        raise check.fail("command", "is required")
    command = raw["command"]
    if (not isinstance(command, list) or not command
            or not all(isinstance(a, str) and a and "\x00" not in a for a in command)):
        raise check.fail("command", f"must be a non-empty list of non-empty strings, got {command!r}")
    values: dict[str, Any] = {"name": name, "command": tuple(command)}
    if "cwd" in raw:
        cwd = Path(check.string("cwd", raw["cwd"])).expanduser()
        values["cwd"] = str(cwd if cwd.is_absolute() else (base_dir / cwd).resolve())
    if "env" in raw:
        env = raw["env"]
        if not isinstance(env, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise check.fail("env", f"must be a table of string values, got {env!r}")
        if any(k.startswith("WORKERGUARD_") for k in env):
            raise check.fail("env", "must not set WORKERGUARD_* variables (they mark instances)")
        values["env"] = dict(env)
    for key in ("min_workers", "max_workers"):
        if key in raw:
            values[key] = check.number(key, raw[key], integer=True, positive=False, minimum=0)
    if "max_workers" not in values:
        values["max_workers"] = max(1, values.get("min_workers", 1))
    min_workers = values.get("min_workers", 1)
    max_workers = values["max_workers"]
    if max_workers < 1 or max_workers > MAX_WORKERS_LIMIT:
        raise check.fail("max_workers", f"must be between 1 and {MAX_WORKERS_LIMIT}, got {max_workers}")
    if min_workers > max_workers:
        raise check.fail("min_workers", f"must be <= max_workers ({max_workers}), got {min_workers}")
    if "keep" in raw:
        if raw["keep"] not in KEEP_CHOICES:
            raise check.fail("keep", f"must be one of {', '.join(KEEP_CHOICES)}, got {raw['keep']!r}")
        values["keep"] = raw["keep"]
    if "match" in raw:
        pattern = check.string("match", raw["match"])
        try:
            re.compile(pattern)
        except re.error as exc:
            raise check.fail("match", f"is not a valid regular expression: {exc}") from None
        values["match"] = pattern
    for key in ("start_seconds", "stop_timeout", "backoff_max"):
        if key in raw:
            values[key] = check.number(key, raw[key])
    if "start_retries" in raw:
        values["start_retries"] = check.number("start_retries", raw["start_retries"], integer=True)
    if "stop_adopted" in raw:
        if not isinstance(raw["stop_adopted"], bool):
            raise check.fail("stop_adopted", f"must be true or false, got {raw['stop_adopted']!r}")
        values["stop_adopted"] = raw["stop_adopted"]
    if "stop_signal" in raw:
        if raw["stop_signal"] not in STOP_SIGNALS:
            raise check.fail("stop_signal", f"must be one of {', '.join(STOP_SIGNALS)}, "
                                            f"got {raw['stop_signal']!r}")
        values["stop_signal"] = raw["stop_signal"]
    return Profile(**values)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """WORKERGUARD_<KEY> for each ``[guard]`` key, converted to the key's type."""
    out: dict[str, Any] = {}
    for key in _field_types(Settings):
        value = environ.get(f"WORKERGUARD_{key.upper()}")
        if value is None or value == "":
            continue
        if key in _SETTINGS_NUMBERS:
            try:
                out[key] = float(value) if "." in value or "e" in value.lower() else int(value)
            except ValueError:
                raise ConfigError(
                    f"environment: WORKERGUARD_{key.upper()}: must be a number, got {value!r}"
                ) from None
        elif key in _SETTINGS_FLAGS:
            if value.lower() not in (*_ENV_TRUE, *_ENV_FALSE):
                raise ConfigError(f"environment: WORKERGUARD_{key.upper()}: must be true or "
                                  f"false, got {value!r}")
            out[key] = value.lower() in _ENV_TRUE
        else:
            out[key] = value
    return out


def config_path(explicit: str | os.PathLike[str] | None = None,
                environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(explicit or environ.get("WORKERGUARD_CONFIG") or "workerguard.toml")


def load_config(path: str | os.PathLike[str] | None = None,
                environ: Mapping[str, str] | None = None) -> Config:
    """Load and validate the config: ``path``, else ``$WORKERGUARD_CONFIG``, else ./workerguard.toml."""
    environ = os.environ if environ is None else environ
    source = config_path(path, environ)
    where = str(source)
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{where}: config file not found (use --config or WORKERGUARD_CONFIG)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    return parse_config(data, where, environ, base_dir=source.resolve().parent)


def parse_config(data: Mapping[str, Any], where: str,
                 environ: Mapping[str, str] | None = None,
                 base_dir: Path | None = None) -> Config:
    environ = os.environ if environ is None else environ
    extra = sorted(set(data) - {"guard", "profiles"})
    if extra:
        raise ConfigError(f"{where}: {extra[0]}: unknown table (allowed: guard, profiles)")
    guard = data.get("guard", {})
    if not isinstance(guard, Mapping):
        raise ConfigError(f"{where}: guard: must be a table")
    merged = {**guard, **_env_overrides(environ)}
    settings = parse_settings(merged, f"{where}: [guard]")
    raw_profiles = data.get("profiles", {})
    if not isinstance(raw_profiles, Mapping):
        raise ConfigError(f"{where}: profiles: must be a table of profiles")
    profiles = {name: parse_profile(name, raw, where, base_dir)
                for name, raw in raw_profiles.items()}
    return Config(settings=settings, profiles=profiles, source=where)
