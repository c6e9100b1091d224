"""Load the configuration: the TOML file, WORKERGUARD_* overrides, one validated ``Config``."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from workerguard.config.explain import explain
from workerguard.config.lease_timing import Timing
from workerguard.config.schema import ENV_PREFIX, ClusterSettings, ConfigFile, Profile, Settings
from workerguard.errors import ConfigError, UnknownProfile


@dataclass(frozen=True)
class Config:
    settings: Settings
    profiles: Mapping[str, Profile]
    source: str
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    """The ``[cluster]`` table: lease timings of the cluster profiles."""

    def profile(self, name: str) -> Profile:
        try:
            return self.profiles[name]
        except (KeyError, TypeError):
            known = ", ".join(sorted(self.profiles)) or "none"
            raise UnknownProfile(
                f"unknown profile {str(name)[:80]!r} (configured: {known}; config: {self.source})"
            ) from None

    def timing(self, profile: Profile) -> Timing:
        """A cluster profile's lease timings: ``[cluster]`` with its own L and D, if set."""
        return self.cluster.timing(profile.lease_seconds, profile.renew_deadline)


# WORKERGUARD_* overrides of the [guard] table --------------------------------------------
def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``[guard]`` keys set by WORKERGUARD_<KEY> (empty = unset), typed."""
    if not any(environ.get(f"{ENV_PREFIX}{key.upper()}") for key in Settings.model_fields):
        return {}  # the usual case: spare the CLI importing pydantic-settings (slow to import)
    from workerguard.config.env import read_overrides

    return read_overrides(environ)


# loading -------------------------------------------------------------------------------
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
    overrides = env_overrides(environ)
    data = dict(data)
    if overrides and isinstance(data.get("guard", {}), Mapping):
        data["guard"] = {**data.get("guard", {}), **overrides}
    try:
        parsed = ConfigFile.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise explain(exc, where, root=ConfigFile, env_keys=set(overrides)) from None
    return Config(settings=parsed.guard, profiles=parsed.profiles, source=where,
                  cluster=parsed.cluster)
