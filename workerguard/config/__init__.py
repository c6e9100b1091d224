"""Configuration: settings and profiles from one TOML file, overridable by WORKERGUARD_*.

``schema`` is the models (the file's shape, validated strictly), ``load`` reads a file
into a ``Config``, ``env`` reads WORKERGUARD_<KEY> overrides, ``explain`` words a
validation failure. Callers outside the package import these names from here.
"""

from workerguard.config.load import Config, config_path, load_config, parse_config
from workerguard.config.schema import Profile, Settings, json_schema

__all__ = ["Config", "Profile", "Settings", "config_path", "json_schema", "load_config",
           "parse_config"]
