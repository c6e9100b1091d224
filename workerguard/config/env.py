"""WORKERGUARD_<KEY> overrides of the ``[guard]`` table, read with pydantic-settings.

Environment values are text, so they are parsed laxly here (``"3"`` -> 3, ``"no"`` ->
False) into a model with every ``Settings`` key optional; ``config.parse_config`` then
merges them over the file's table and validates the result strictly, naming the
variable in any error. Imported only when such a variable is set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError, create_model
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings.sources import EnvSettingsSource

from workerguard.config.explain import explain
from workerguard.config.schema import ENV_PREFIX, Settings


class _Base(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")


def _optional(kind: Any) -> Any:
    return kind | None


_FIELDS: dict[str, Any] = {name: (_optional(field.annotation), None)
                           for name, field in Settings.model_fields.items()}
_Overrides = create_model("_Overrides", __base__=_Base, **_FIELDS)  # every Settings key, optional


class _MappingSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping (tests pass {})."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(_Overrides)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k.lower(): v for k, v in self._environ.items() if v != ""}


def read_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``[guard]`` keys set in ``environ``, typed; ConfigError names the variable."""
    try:
        values = _Overrides.model_validate(_MappingSource(environ)())
    except ValidationError as exc:
        raise explain(exc, "environment", root=Settings, env_keys=set(Settings.model_fields),
                      prefix=("guard",)) from None
    overrides: dict[str, Any] = values.model_dump(exclude_unset=True)
    return overrides
