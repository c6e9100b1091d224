"""The ``workerguard`` command.

Exit codes (scripts depend on them): ``EXIT_OK`` 0, ``EXIT_FAILED`` 1 (the action ran
and failed, or no guard answered), ``EXIT_USAGE`` 2 (bad usage or bad config).
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from .config import Config, load_config
from .errors import ActionFailed, ConfigError, InvalidRequest, UnknownProfile, WorkerguardError
from .redact import redact_text, redact_url

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

Result = dict[str, Any]


def requester() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid()) if hasattr(os, "getuid") else "?"
    return f"cli:{user}@{socket.gethostname()} pid {os.getpid()}"


def _load(config_file: str | None) -> Config:
    try:
        return load_config(config_file)
    except ConfigError as exc:
        click.echo(f"error: {redact_text(str(exc))}", err=True)
        sys.exit(EXIT_USAGE)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except (ConfigError, UnknownProfile, InvalidRequest) as exc:
        click.echo(f"error: {redact_text(str(exc))}", err=True)
        sys.exit(EXIT_USAGE)
    except ActionFailed as exc:  # the guard's own line, as --local prints it
        click.echo(redact_text(str(exc)))
        sys.exit(EXIT_FAILED)
    except WorkerguardError as exc:
        click.echo(f"error: {redact_text(str(exc))}", err=True)
        sys.exit(EXIT_FAILED)


def emit(result: Result, as_json: bool) -> None:
    """Print a result and exit 0, or 1 when the action failed."""
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
    else:
        click.echo(result["message"])
    sys.exit(EXIT_OK if result.get("ok", True) else EXIT_FAILED)


def run_local(config: Config, call: Callable[[Any], Result]) -> Result:
    """Run one guard action in this process, under the same lock the tasks use."""
    from .connect import redis_client, redis_url
    from .guard import Guard

    with redis_url(config.settings) as url:
        client = redis_client(url)
        try:
            return call(Guard(client, config))
        finally:
            client.close()


config_option = click.option("--config", "config_file", metavar="FILE", envvar="WORKERGUARD_CONFIG",
                             help="Profiles file (default: $WORKERGUARD_CONFIG, else ./workerguard.toml).")
local_option = click.option("--local", is_flag=True,
                            help="Act in this process under the lock, without the queue.")
dry_run_option = click.option("--dry-run", is_flag=True, help="Report what would happen; change nothing.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result dict as JSON.")
host_option = click.option("--host", metavar="HOST_ID",
                           help="Send to this host's queue (default: this host's host_id).")
timeout_option = click.option("--timeout", type=float, default=None, metavar="SECONDS",
                              help="How long to wait for a guard's answer.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="workerguard")
def main() -> None:
    """Keep exactly the right number of a named worker process alive on each host."""


def _dispatch(config_file: str | None, local: bool, as_json: bool, task: str,
              local_call: Callable[[Any], Result], args: list[Any], kwargs: dict[str, Any],
              host: str | None, timeout: float | None) -> None:
    config = _load(config_file)
    with _errors():
        if local:
            result = run_local(config, local_call)
        else:
            from .client import call_and_wait

            result = call_and_wait(config, task, args, kwargs, host=host, timeout=timeout)
    emit(result, as_json)


@main.command()
@click.argument("profile")
@config_option
@local_option
@dry_run_option
@json_option
@host_option
@timeout_option
@click.option("--force", is_flag=True, help="Start now even if the profile is in crash-loop backoff.")
def ensure(profile: str, config_file: str | None, local: bool, dry_run: bool, as_json: bool,
           host: str | None, timeout: float | None, force: bool) -> None:
    """Start PROFILE up to min_workers, stop extras beyond max_workers; clear a pause."""
    who = requester()
    _dispatch(config_file, local, as_json, "workerguard.ensure",
              lambda g: g.ensure(profile, dry_run=dry_run, force=force, requested_by=who),
              [profile], {"dry_run": dry_run, "force": force, "requested_by": who}, host, timeout)


@main.command()
@click.argument("profile")
@click.option("--max-workers", type=click.IntRange(1, 1000), default=None,
              help="Keep at most N (default: the profile's max_workers).")
@config_option
@local_option
@dry_run_option
@json_option
@host_option
@timeout_option
def enforce(profile: str, max_workers: int | None, config_file: str | None, local: bool,
            dry_run: bool, as_json: bool, host: str | None, timeout: float | None) -> None:
    """Stop instances of PROFILE beyond max_workers (keeping the newest by default)."""
    who = requester()
    _dispatch(config_file, local, as_json, "workerguard.enforce",
              lambda g: g.enforce(profile, max_workers=max_workers, dry_run=dry_run,
                                  requested_by=who),
              [profile], {"max_workers": max_workers, "dry_run": dry_run, "requested_by": who},
              host, timeout)


@main.command()
@click.argument("profile")
@config_option
@local_option
@dry_run_option
@json_option
@host_option
@timeout_option
def stop(profile: str, config_file: str | None, local: bool, dry_run: bool, as_json: bool,
         host: str | None, timeout: float | None) -> None:
    """Stop every instance of PROFILE and pause it until the next ensure."""
    who = requester()
    _dispatch(config_file, local, as_json, "workerguard.stop_all",
              lambda g: g.stop_all(profile, dry_run=dry_run, requested_by=who),
              [profile], {"dry_run": dry_run, "requested_by": who}, host, timeout)


@main.command()
@click.argument("profile", required=False)
@config_option
@local_option
@json_option
@host_option
@timeout_option
def status(profile: str | None, config_file: str | None, local: bool, as_json: bool,
           host: str | None, timeout: float | None) -> None:
    """Show the instances of PROFILE (or of every profile) on this host."""
    _dispatch(config_file, local, as_json, "workerguard.status",
              lambda g: g.status(profile), [profile] if profile else [], {}, host, timeout)


@main.command()
@config_option
def check(config_file: str | None) -> None:
    """Validate the config and print the profiles; exit 2 on any error."""
    config = _load(config_file)
    s = config.settings
    click.echo(f"config: {config.source}")
    click.echo(f"redis: {redact_url(s.redis_url) if s.redis_url else f'embedded ({s.home}/redis)'}")
    click.echo(f"host_id: {s.host_id}  sweep_interval: {s.sweep_interval:g} s  "
               f"lock_expire: {s.lock_expire} s")
    if not config.profiles:
        click.echo("no profiles configured", err=True)
        sys.exit(EXIT_USAGE)
    for p in config.profiles.values():
        match = f"  match={p.match!r}" if p.match else ""
        click.echo(f"  {p.name}: {' '.join(p.command)}  workers {p.min_workers}..{p.max_workers}"
                   f"  keep={p.keep}{match}")
    click.echo("ok")


@main.command()
@config_option
@click.option("--pool", type=click.Choice(["threads", "prefork", "solo"]), default="threads",
              show_default=True, help="Celery pool; threads suits a guard's waiting and works on Windows.")
@click.option("--concurrency", "-c", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--loglevel", "-l", default="INFO", show_default=True)
def worker(config_file: str | None, pool: str, concurrency: int, loglevel: str) -> None:
    """Run the guard: a Celery worker on this host's queues and the sweep broadcast."""
    from .services import run_worker

    config = _load(config_file)
    with _errors():
        run_worker(config, pool, concurrency, loglevel)


@main.command()
@config_option
@click.option("--loglevel", "-l", default="INFO", show_default=True)
def beat(config_file: str | None, loglevel: str) -> None:
    """Run Celery beat with the sweep schedule (every sweep_interval seconds). Run one."""
    from .services import run_beat

    run_beat(_load(config_file), loglevel)


@main.command()
@config_option
@click.option("--loglevel", "-l", default="INFO", show_default=True)
def up(config_file: str | None, loglevel: str) -> None:
    """Embedded Redis (without redis_url) + guard worker + beat, in the foreground.

    Ctrl-C stops the three; the workers they manage keep running.
    """
    from .services import run_up

    sys.exit(run_up(_load(config_file), loglevel))


if __name__ == "__main__":
    main()
