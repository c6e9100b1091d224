"""The action commands: ensure, enforce, stop, status (through a guard, or ``--local``)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

import click

from workerguard.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    USAGE_ERRORS,
    Where,
    action_options,
    dry_run_option,
    errors,
    load,
    requester,
    usage_error,
)
from workerguard.config.schema import MAX_WORKERS_LIMIT
from workerguard.errors import WorkerguardError
from workerguard.policy.reports import Result
from workerguard.redact import redact_text
from workerguard.timing import PRUNE_OLDER_THAN


@click.command()
@click.argument("profile")
@action_options
@dry_run_option
@click.option("--force", is_flag=True, help="Start now even if the profile is in crash-loop backoff.")
def ensure(profile: str, where: Where, dry_run: bool, force: bool) -> None:
    """Start PROFILE up to min_workers, stop extras beyond max_workers; clear a pause."""
    where.run("ensure", [profile],
              {"dry_run": dry_run, "force": force, "requested_by": requester()})


@click.command()
@click.argument("profile")
@click.option("--max-workers", type=click.IntRange(1, MAX_WORKERS_LIMIT), default=None,
              help="Keep at most N (default: the profile's max_workers).")
@action_options
@dry_run_option
def enforce(profile: str, max_workers: int | None, where: Where, dry_run: bool) -> None:
    """Stop instances of PROFILE beyond max_workers (keeping the newest by default)."""
    where.run("enforce", [profile],
              {"max_workers": max_workers, "dry_run": dry_run, "requested_by": requester()})


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


class Duration(click.ParamType[float]):
    """Seconds, or a number with a unit: ``90s``, ``30m``, ``12h``, ``7d``."""

    name = "duration"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        text = str(value).strip().lower()
        unit = _UNITS.get(text[-1:])
        number = text[:-1] if unit is not None else text
        try:
            seconds = float(number) * (unit or 1)
        except ValueError:
            self.fail(f"{value!r} is not a duration (seconds, or with s, m, h or d: 12h)", param, ctx)
        if not 0 <= seconds < float("inf"):
            self.fail(f"{value!r} is not a duration of 0 or more", param, ctx)
        return seconds


@click.command()
@action_options
@dry_run_option
@click.option("--older-than", type=Duration(), default=f"{PRUNE_OLDER_THAN / 86_400:g}d", show_default=True,
              help="Also remove the empty cgroups of host ids no guard has served for this long "
                   "(seconds, or 90m, 12h, 7d).")
def prune(where: Where, dry_run: bool, older_than: float) -> None:
    """Stop this host's orphans (instances of profiles that are no longer configured) and
    remove leftovers: empty groups, temp records, probe dirs (see docs/cli.md)."""
    where.run("prune", [], {"dry_run": dry_run, "requested_by": requester(),
                            "older_than": older_than})


@click.command()
@click.argument("profile")
@action_options
@dry_run_option
def stop(profile: str, where: Where, dry_run: bool) -> None:
    """Stop every instance of PROFILE and pause it until the next ensure."""
    where.run("stop_all", [profile], {"dry_run": dry_run, "requested_by": requester()})


@click.command()
@click.argument("profile", required=False)
@action_options
@click.option("--table/--plain", "table", default=None,
              help="A table (default on a terminal) or the plain lines (default otherwise).")
@click.option("--watch", is_flag=True, help="Refresh every --interval seconds until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True,
              metavar="SECONDS", help="Refresh interval of --watch.")
@click.option("--cluster", is_flag=True,
              help="The slots of every cluster profile (or of PROFILE) across the fleet, "
                   "read from Redis only: holder, token, lease left, state.")
def status(profile: str | None, where: Where, table: bool | None, watch: bool,
           interval: float, cluster: bool) -> None:
    """Show the instances of PROFILE (or of every profile) on this host.

    On a terminal: a table of profile, host, state, pids, uptime and command. Piped,
    or with --plain: one line per profile (`demo: running (PIDs: 4242)`). With
    --cluster: the fleet's slots of cluster profiles, from Redis (no guard needed).
    """
    if cluster:
        from workerguard.cli.fleet import cluster_status

        cluster_status(where.config_file, profile, where.as_json)
    config = load(where.config_file)
    show = _status_printer(where.as_json, table)
    args = [profile] if profile else []
    if not watch:
        with errors():
            result = where.call(config, "status", args, {})
        show(result, None)
        sys.exit(EXIT_OK)
    try:
        while True:
            header = _watch_header(where.host or config.settings.host_id, interval)
            try:
                result = where.call(config, "status", args, {})
            except USAGE_ERRORS as exc:
                usage_error(exc)
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

            from workerguard.cli.status_table import render
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


