"""One line per configuration error: where (file, table or profile, field) and what.

pydantic reports a failure as a list of (type, location, input); this turns each into
one line of the shape the CLI has always printed, e.g.

    wg.toml: profile 'rpa': min_workers: must be <= max_workers (2), got 3
    wg.toml: [guard]: lock_expire: must be > 0, got 0
    environment: WORKERGUARD_LOCK_EXPIRE: must be a number, got str 'soon'

Checks that pydantic has no type for raise ``PydanticCustomError("workerguard", line)``
with the finished problem text; a check of the whole table names its field in the
context (``field=...``). Secrets in URLs are redacted.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Collection
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from workerguard.errors import ConfigError
from workerguard.probes.spec import PROBE_KINDS
from workerguard.redact import redact_text

_NUMBER_ERRORS = {"int_type", "int_parsing", "int_from_float", "float_type", "float_parsing"}
_BOUNDS = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"),
           "less_than": ("<", "lt"), "less_than_equal": ("<=", "le")}
_TABLE_ERRORS = {"dict_type", "model_type", "model_attributes_type"}
_TAG_ERRORS = {"union_tag_invalid", "union_tag_not_found"}


def _without_tags(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop the tag pydantic puts in the location of an error inside a tagged union
    (``probe.heartbeat.path`` -> ``probe.path``): the user wrote ``kind``, not a table."""
    out = list(loc)
    for i in range(len(out) - 1, 0, -1):
        if out[i - 1] == "probe" and out[i] in PROBE_KINDS:
            del out[i]
    return tuple(out)


def explain(exc: ValidationError, where: str, *, root: type[BaseModel],
            env_keys: Collection[str] = (), prefix: tuple[str, ...] = ()) -> ConfigError:
    """Every error of ``exc`` as one ConfigError, one line each, in the order pydantic
    found them (a user fixes a broken file in one round, not one error per run).
    ``root`` is the model validated (for the allowed keys); keys in ``env_keys`` of the
    ``[guard]`` table came from WORKERGUARD_<KEY> and are reported as such; ``prefix``
    is prepended to locations."""
    lines = [_line(error, where, root, env_keys, prefix) for error in exc.errors()]
    return ConfigError(redact_text("\n".join(dict.fromkeys(lines))))


def _line(error: ErrorDetails, where: str, root: type[BaseModel], env_keys: Collection[str],
          prefix: tuple[str, ...]) -> str:
    loc = prefix + tuple(str(p) if not isinstance(p, int) else p for p in error["loc"])
    loc = _without_tags(loc)
    ctx = error.get("ctx") or {}
    field = ctx.get("field")
    if error["type"] == "value_error":  # "url: must start with ...": the field is named first
        named, sep, rest = str(ctx.get("error", error["msg"])).partition(": ")
        if sep and re.fullmatch(r"[a-z_]+", named):
            field = None if loc and loc[-1] == named else named
            error = {**error, "type": "workerguard", "msg": rest}
    if error["type"] in _TAG_ERRORS:
        field = str(ctx.get("discriminator", "kind")).strip("'")
    if field:
        loc = (*loc, field)
    problem = _problem(error, root, loc[len(prefix):])
    if loc and loc[-1] == "[key]":  # a dict key: the profile's name
        return f"{_place(loc[:-1], where, env_keys)}: name {problem}"
    return f"{_place(loc, where, env_keys)}: {problem}"


def _place(loc: tuple[Any, ...], where: str, env_keys: Collection[str]) -> str:
    if not loc:
        return where
    head, *rest = loc
    if head == "guard" and rest and rest[0] in env_keys:
        return f"environment: WORKERGUARD_{str(rest[0]).upper()}" + "".join(_label(rest[1:]))
    if head in ("guard", "cluster"):
        return f"{where}: [{head}]" + (f": {_label(rest)}" if rest else "")
    if head == "profiles" and rest:
        name, *inside = rest
        return f"{where}: profile {str(name)[:80]!r}" + (f": {_label(inside)}" if inside else "")
    return f"{where}: {_label(loc)}"


def _label(parts: list[Any] | tuple[Any, ...]) -> str:
    """``("probe", "url")`` -> ``probe.url``; ``("command", 1)`` -> ``command[1]``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _problem(error: ErrorDetails, root: type[BaseModel], loc: tuple[Any, ...]) -> str:
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "workerguard":
        return error["msg"]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        allowed, listed = _keys_at(root, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.75)
        return (f"unknown {'table' if len(loc) == 1 else 'key'}"
                + (f" (allowed: {', '.join(listed)})" if listed else "")
                + (f"; did you mean {close[0]}?" if close else ""))
    if kind in _NUMBER_ERRORS:
        if (isinstance(value, float) and kind.startswith("int")) or (
                kind == "int_parsing" and _is_float(value)):
            return f"must be a whole number, got {value!r}"
        return f"must be a number, got {type(value).__name__} {value!r}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, got {value!r}"
    if kind in ("string_type", "string_too_short"):
        return f"must be a non-empty string, got {value!r}"
    if kind == "string_pattern_mismatch":
        return f"must match {str(ctx['pattern']).strip('^$')}, got {value!r}"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return f"must be one of {', '.join(choices)}, got {value!r}"
    if kind in _BOUNDS:
        op, key = _BOUNDS[kind]
        return f"must be {op} {ctx[key]:g}, got {value!r}"
    if kind in _TABLE_ERRORS:
        return f"must be a table, got {value!r}"
    if kind == "union_tag_invalid":
        return f"must be one of {', '.join(PROBE_KINDS)}, got {ctx.get('tag')!r}"
    if kind == "union_tag_not_found":
        return f"is required (one of {', '.join(PROBE_KINDS)})"
    msg = error["msg"]
    return f"{msg[:1].lower()}{msg[1:]}, got {value!r}"


def _is_float(text: Any) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def _keys_at(root: type[BaseModel], path: tuple[Any, ...]) -> tuple[list[str], list[str]]:
    """The keys the schema allows in the table at ``path`` (empty if unknown), and those of
    them an error lists: not the keys a model names in ``UNLISTED_KEYS`` (a profile's
    cluster keys: the common per-host case stays a short list; a misspelt one is still
    suggested)."""
    kind: Any = root
    for part in path:
        model = _model(kind)
        if model is not None:
            field = model.model_fields.get(str(part))
            if field is None:
                return [], []
            kind = field.annotation
        elif get_origin(kind) is dict:
            kind = get_args(kind)[1]
        else:
            return [], []
    model = _model(kind)
    if model is None:
        return [], []
    allowed = sorted(model.model_json_schema().get("properties", {}))
    unlisted = getattr(model, "UNLISTED_KEYS", ())
    return allowed, [key for key in allowed if key not in unlisted]


def _model(kind: Any) -> type[BaseModel] | None:
    """The model class inside ``kind`` (``X``, ``X | None``, ``Annotated[X, ...]``)."""
    if get_origin(kind) in (Union, types.UnionType):
        found = [m for m in map(_model, get_args(kind)) if m is not None]
        return found[0] if len(found) == 1 else None
    if hasattr(kind, "__metadata__"):  # Annotated
        return _model(get_args(kind)[0])
    return kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None
