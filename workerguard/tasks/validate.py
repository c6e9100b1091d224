"""Strict checks of task arguments: nothing is coerced, every refusal names the problem."""

from __future__ import annotations

import re
from typing import Any

from workerguard.config.load import Config
from workerguard.config.schema import MAX_WORKERS_LIMIT, PROFILE_NAME
from workerguard.errors import InvalidRequest, UnknownProfile
from workerguard.policy.hooks import SWEEP_TRIGGERS

MAX_REQUESTER = 200


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def profile_name(config: Config, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"profile must be a string, got {type(value).__name__} {_shown(value)}")
    if not PROFILE_NAME.fullmatch(value):
        raise InvalidRequest(f"profile must match {PROFILE_NAME.pattern}, got {_shown(value)}")
    if value not in config.profiles:  # named without the config's path: callers see this
        known = ", ".join(sorted(config.profiles)) or "none"
        raise UnknownProfile(f"unknown profile {value!r} (configured: {known})")
    return value


def optional_profile(config: Config, value: Any) -> str | None:
    return None if value is None else profile_name(config, value)


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"{name} must be true or false, got {type(value).__name__} {_shown(value)}")
    return value


def max_workers(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(
            f"max_workers must be an integer or null, got {type(value).__name__} {_shown(value)}")
    if not 1 <= value <= MAX_WORKERS_LIMIT:
        raise InvalidRequest(f"max_workers must be between 1 and {MAX_WORKERS_LIMIT}, got {_shown(value)}")
    return value


def seconds(name: str, value: Any) -> float:
    """A duration in seconds: a finite number, 0 or more."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise InvalidRequest(f"{name} must be a number of seconds (0 or more), got {_shown(value)}")
    return float(value)


def requester(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_REQUESTER or "\x00" in value:
        raise InvalidRequest(f"requested_by must be a string of at most {MAX_REQUESTER} characters")
    return value


def trigger(value: Any) -> str:
    """What sent a sweep: ``beat`` (its schedule), ``timer`` (the guard's own clock) or
    ``startup`` (a guard worker that just became ready)."""
    if value not in SWEEP_TRIGGERS:
        raise InvalidRequest(f"trigger must be one of {', '.join(SWEEP_TRIGGERS)}, got {_shown(value)}")
    return str(value)


def instance_id(value: Any) -> str:
    """An instance id as workerguard makes them: 32 lowercase hex digits."""
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{32}", value):
        raise InvalidRequest(f"instance must be an instance id (32 hex digits), got {_shown(value)}")
    return value


def text(name: str, value: Any, limit: int = 500) -> str:
    if not isinstance(value, str) or "\x00" in value:
        raise InvalidRequest(f"{name} must be a string, got {type(value).__name__} {_shown(value)}")
    return value[:limit]
