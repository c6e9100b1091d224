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
from typing import Any, NoReturn

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


USAGE_ERRORS = (ConfigError, UnknownProfile, InvalidRequest)


def _usage_error(exc: Exception) -> NoReturn:
    click.echo(f"error: {redact_text(str(exc))}", err=True)
    sys.exit(EXIT_USAGE)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except USAGE_ERRORS as exc:
        _usage_error(exc)
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
@click.option("--table/--plain", "table", default=None,
              help="A table (default on a terminal) or the plain lines (default otherwise).")
@click.option("--watch", is_flag=True, help="Refresh every --interval seconds until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True,
              metavar="SECONDS", help="Refresh interval of --watch.")
def status(profile: str | None, config_file: str | None, local: bool, as_json: bool,
           host: str | None, timeout: float | None, table: bool | None, watch: bool,
           interval: float) -> None:
    """Show the instances of PROFILE (or of every profile) on this host.

    On a terminal: a table of profile, host, state, pids, uptime and command. Piped,
    or with --plain: one line per profile (`demo: running (PIDs: 4242)`).
    """
    config = _load(config_file)
    show = _status_printer(as_json, table)

    def fetch() -> Result:
        if local:
            return run_local(config, lambda g: g.status(profile))
        from .client import call_and_wait

        return call_and_wait(config, "workerguard.status", [profile] if profile else [], {},
                             host=host, timeout=timeout)

    if not watch:
        with _errors():
            result = fetch()
        show(result, None)
        sys.exit(EXIT_OK)
    import time

    try:
        while True:
            header = _watch_header(host or config.settings.host_id, interval)
            try:
                result = fetch()
            except USAGE_ERRORS as exc:
                _usage_error(exc)
            except WorkerguardError as exc:  # keep watching through a Redis outage
                click.echo(f"{header}\nerror: {redact_text(str(exc))}")
            else:
                show(result, header)
            time.sleep(interval)
    except KeyboardInterrupt:
        sys.exit(EXIT_OK)


def _watch_header(host: str, interval: float) -> str:
    from datetime import datetime

    return (f"workerguard status --watch  host {host}  {datetime.now():%H:%M:%S}  "
            f"every {interval:g} s (Ctrl-C stops)")


def _status_printer(as_json: bool, table: bool | None) -> Callable[[Result, str | None], None]:
    """How ``status`` prints: JSON, the rich table, or the plain lines."""
    if as_json:
        def print_json(result: Result, header: str | None) -> None:
            if header:  # --watch: one compact document per refresh (JSON lines)
                click.echo(json.dumps(result, sort_keys=True))
            else:
                click.echo(json.dumps(result, indent=2, sort_keys=True))
        return print_json
    wants_table = table if table is not None else sys.stdout.isatty()
    if wants_table:
        try:
            from rich.console import Console

            from .table import render
        except ImportError:
            if table:
                click.echo("error: --table needs rich: pip install 'workerguard[ops]'", err=True)
                sys.exit(EXIT_USAGE)
        else:
            console = Console(highlight=False)

            def print_table(result: Result, header: str | None) -> None:
                if header and console.is_terminal:
                    console.clear()
                render(console, result, header)
            return print_table

    def print_plain(result: Result, header: str | None) -> None:
        if header:
            click.echo(header)
        click.echo(result["message"])
    return print_plain


@main.command()
@click.argument("profile", required=False)
@config_option
@click.option("--host", metavar="HOST_ID", help="Only this host's events (default: every host).")
@click.option("--since", metavar="WHEN",
              help="From this time on: a duration ago (30s, 10m, 2h, 1d), a stream id or an ISO time.")
@click.option("--count", "-n", type=click.IntRange(1, 1_000_000), default=50, show_default=True,
              help="Without --since: how many of the latest events to show.")
@click.option("--follow", "-f", is_flag=True, help="Then print new events as they happen, until Ctrl-C.")
@json_option
def events(profile: str | None, config_file: str | None, host: str | None, since: str | None,
           count: int, follow: bool, as_json: bool) -> None:
    """Show the action log: every start, stop and failed start, of every host.

    One line per event (time, host, profile, action, pids, requested by); --json
    prints one JSON object per line.
    """
    from . import events as log
    from .connect import redis_client, redis_url
    from .errors import RedisUnavailable
    from .lock import REDIS_ERRORS

    config = _load(config_file)
    try:
        start = log.parse_since(since) if since else None
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    wanted = log.EventFilter(profile=profile, host=host)
    show = log.as_json if as_json else log.line
    with _errors(), redis_url(config.settings) as url:
        client = redis_client(url)
        try:
            cursor = log.last_id(client)
            shown = (log.since(client, start, wanted, until=cursor) if start
                     else log.latest(client, count, wanted, until=cursor))
            for event in shown:
                click.echo(show(event))
            if follow:
                for event in log.follow(client, cursor, wanted):
                    click.echo(show(event))
        except KeyboardInterrupt:
            pass
        except REDIS_ERRORS as exc:
            raise RedisUnavailable(f"redis unreachable ({type(exc).__name__})") from None
        finally:
            client.close()
    sys.exit(EXIT_OK)


@main.command()
@config_option
@host_option
@click.option("--timeout", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              metavar="SECONDS")
def ping(config_file: str | None, host: str | None, timeout: float) -> None:
    """Exit 0 if the guard worker of this host (or --host) answers a Celery ping, else 1.

    For healthchecks (docker compose, systemd, monitoring).
    """
    from .client import ping as ping_guard

    config = _load(config_file)
    with _errors():
        node = ping_guard(config, host=host, timeout=timeout)
    click.echo(f"{node}: pong")


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


@main.command(context_settings={"ignore_unknown_options": True})
@config_option
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 only behind auth or a proxy).")
@click.option("--port", type=click.IntRange(1, 65535), default=5555, show_default=True)
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower(config_file: str | None, address: str, port: int, flower_args: tuple[str, ...]) -> None:
    """Flower (the Celery web monitor) for this deployment's broker.

    Further arguments go to Flower, e.g. --basic-auth=USER:PASS (or set
    FLOWER_BASIC_AUTH, which keeps the password off the command line).
    """
    from .services import run_flower

    config = _load(config_file)
    with _errors():
        sys.exit(run_flower(config, address, port, list(flower_args)))


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
