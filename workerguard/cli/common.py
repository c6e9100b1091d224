"""What every command shares: exit codes, config loading, error mapping, options."""

from __future__ import annotations

import functools
import getpass
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import click

from workerguard.config.load import Config, load_config
from workerguard.errors import (
    ActionFailed,
    BlindLocal,
    ConfigError,
    InvalidRequest,
    UnknownProfile,
    WorkerguardError,
)
from workerguard.policy.reports import Result
from workerguard.redact import redact_text

if TYPE_CHECKING:
    from workerguard.policy.guard import Guard
    from workerguard.policy.outcome import Answer

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
USAGE_ERRORS = (ConfigError, UnknownProfile, InvalidRequest, BlindLocal)


def requester() -> str:
    """Who asked, for the action log: ``cli:USER@HOST pid N``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid()) if hasattr(os, "getuid") else "?"
    return f"cli:{user}@{socket.gethostname()} pid {os.getpid()}"


def usage_error(exc: Exception | str) -> NoReturn:
    """One ``error:`` line per problem (a broken config lists all of its problems)."""
    for line in redact_text(str(exc)).splitlines() or [""]:
        click.echo(f"error: {line}", err=True)
    sys.exit(EXIT_USAGE)


def load(config_file: str | None) -> Config:
    try:
        return load_config(config_file)
    except ConfigError as exc:
        usage_error(exc)


@contextmanager
def errors() -> Iterator[None]:
    """Map workerguard's errors to messages and exit codes."""
    try:
        yield
    except USAGE_ERRORS as exc:
        usage_error(exc)
    except ActionFailed as exc:  # the guard's own line, as --local prints it
        click.echo(redact_text(str(exc)))
        sys.exit(EXIT_FAILED)
    except WorkerguardError as exc:
        click.echo(f"error: {redact_text(str(exc))}", err=True)
        sys.exit(EXIT_FAILED)


def emit(result: Result, as_json: bool) -> NoReturn:
    """Print a result and exit 0, or 1 when the action failed."""
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
    else:
        click.echo(result["message"])
    sys.exit(EXIT_OK if result.get("ok", True) else EXIT_FAILED)


@dataclass(frozen=True)
class Where:
    """Where and how an action runs: in this process (``--local``) or through a guard."""

    config_file: str | None
    local: bool
    as_json: bool
    host: str | None
    timeout: float | None

    def call(self, config: Config, method: str, args: list[Any], kwargs: dict[str, Any]) -> Result:
        """``Guard.<method>(*args, **kwargs)`` here, or task ``workerguard.<method>`` remotely."""
        if self.local:
            return run_local(config, lambda guard: getattr(guard, method)(*args, **kwargs))
        from workerguard.client import call_and_wait

        return call_and_wait(config, f"workerguard.{method}", args, kwargs, host=self.host,
                             timeout=self.timeout)

    def run(self, method: str, args: list[Any], kwargs: dict[str, Any]) -> NoReturn:
        config = load(self.config_file)
        with errors():
            result = self.call(config, method, args, kwargs)
        emit(result, self.as_json)


def run_local(config: Config, call: Callable[[Guard], Answer]) -> Result:
    """Run one guard action in this process, under the same lock the tasks use; its answer
    as the task would return it (the contract dict). Refused (``BlindLocal``, exit 2)
    when this process would not see the host's instances (``policy.guard.refuse_a_blind_call``)."""
    from workerguard.ops.connect import redis_client, redis_url
    from workerguard.policy.guard import Guard, refuse_a_blind_call

    with redis_url(config.settings) as url:
        client = redis_client(url, config.settings)
        try:
            refuse_a_blind_call(client, config.settings)
            answer = call(Guard(client, config))
        finally:
            client.close()
    return answer.contract()


config_option = click.option(
    "--config", "config_file", metavar="FILE", envvar="WORKERGUARD_CONFIG",
    help="Profiles file (default: $WORKERGUARD_CONFIG, else ./workerguard.toml).")
dry_run_option = click.option("--dry-run", is_flag=True,
                              help="Report what would happen; change nothing.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result dict as JSON.")
host_option = click.option("--host", metavar="HOST_ID",
                           help="Send to this host's queue (default: this host's host_id).")
loglevel_option = click.option("--loglevel", "-l", default="INFO", show_default=True)


def action_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options of every action command, gathered into one ``where`` argument."""

    @config_option
    @click.option("--local", is_flag=True,
                  help="Act in this process under the lock, without the queue.")
    @json_option
    @host_option
    @click.option("--timeout", type=float, default=None, metavar="SECONDS",
                  help="How long to wait for a guard's answer.")
    @functools.wraps(command)
    def wrapper(*args: Any, config_file: str | None, local: bool, as_json: bool,
                host: str | None, timeout: float | None, **kwargs: Any) -> Any:
        return command(*args, where=Where(config_file, local, as_json, host, timeout), **kwargs)

    return wrapper


def duration(seconds: float) -> str:
    """``42s``, ``5m03s``, ``2h05m``, ``3d04h``."""
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
