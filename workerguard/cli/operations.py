"""Commands to watch and check a deployment: events, ping, check, schema."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from workerguard.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    config_option,
    emit,
    errors,
    host_option,
    json_option,
    load,
)
from workerguard.redact import redact_text, redact_url

if TYPE_CHECKING:
    from workerguard.config.load import Config
    from workerguard.config.schema import Profile


@click.command()
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

    A PROFILE neither configured here nor ever logged (by any host) is refused, exit 2.

    One line per event (time, host, profile, action, pids, requested by); --json
    prints one JSON object per line.
    """
    from workerguard.ops.connect import endpoint, redis_client, redis_url, unreachable
    from workerguard.store import events as log
    from workerguard.store.lock import REDIS_ERRORS
    from workerguard.tasks import validate

    config = load(config_file)
    try:
        start = log.parse_since(since) if since else None
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    wanted = log.EventFilter(profile=profile, host=host)
    show = log.as_json if as_json else log.line
    with errors(), redis_url(config.settings) as url:
        client = redis_client(url, config.settings)
        try:
            cursor = log.last_id(client)
            if profile is not None and profile not in config.profiles and not log.latest(
                    client, 1, wanted, until=cursor):
                validate.profile_name(config, profile)  # a typo: refused as every command does
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
            raise unreachable(endpoint(url, config.settings.sentinel_master), exc) from None
        finally:
            client.close()
    sys.exit(EXIT_OK)


@click.command()
@config_option
@host_option
@click.option("--timeout", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              metavar="SECONDS")
def ping(config_file: str | None, host: str | None, timeout: float) -> None:
    """Exit 0 if the guard worker of this host (or --host) answers a Celery ping, else 1.

    For healthchecks (docker compose, systemd, monitoring).
    """
    from workerguard.client import ping as ping_guard

    config = load(config_file)
    with errors():
        node = ping_guard(config, host=host, timeout=timeout)
    click.echo(f"{node}: pong")


@click.command()
@config_option
@host_option
@json_option
@click.option("--timeout", type=click.FloatRange(min=0.1), default=None, metavar="SECONDS",
              help="How long to wait for the guard's answer.")
def reload(config_file: str | None, host: str | None, as_json: bool, timeout: float | None) -> None:
    """Make the guard of this host (or --host) re-read its config file, then sweep once.

    A broken file, or one that changes redis_url, host_id, home or the metrics
    listener, is refused: the guard keeps its running config and this exits 1.
    Same as `kill -HUP` on the guard worker process.
    """
    from workerguard.client import reload as reload_guard
    from workerguard.config.load import load_config
    from workerguard.errors import ConfigError

    try:
        config = load_config(config_file)
    except ConfigError as exc:  # the guard reads the same file: it would refuse it too
        click.echo(f"error: reload refused, the running config stays: {redact_text(str(exc))}",
                   err=True)
        sys.exit(EXIT_FAILED)
    with errors():
        result = reload_guard(host=host, timeout=timeout, config=config)
    emit(result, as_json)


@click.command()
@config_option
def check(config_file: str | None) -> None:
    """Validate the config and print the profiles; exit 2 on any error."""
    config = load(config_file)
    s = config.settings
    click.echo(f"config: {config.source}")
    click.echo(f"redis: {redact_url(s.redis_url) if s.redis_url else f'embedded ({s.home}/redis)'}")
    if s.sentinel_master:
        click.echo(f"sentinel_master: {s.sentinel_master}  sentinel_password: "
                   f"{'***' if s.sentinel_password else 'none'}")
    click.echo(f"host_id: {s.host_id}  sweep_interval: {s.sweep_interval:g} s  "
               f"lock_expire: {s.lock_expire} s")
    if not config.profiles:
        click.echo("no profiles configured", err=True)
        sys.exit(EXIT_USAGE)
    for p in config.profiles.values():
        match = f"  match={p.match}" if p.match else ""
        if p.is_cluster:
            click.echo(f"  {p.name}: {' '.join(p.command)}  cluster: {p.max_workers} across "
                       f"{', '.join(p.hosts) or 'every host that has it'}  "
                       f"max_per_host={p.max_per_host}  guarantee={p.guarantee}")
            for line in cluster_lines(config, p):
                click.echo(f"    {line}")
        else:
            click.echo(f"  {p.name}: {' '.join(p.command)}  workers {p.min_workers}..{p.max_workers}"
                       f"  keep={p.keep}{match}")
    click.echo("ok")


def cluster_lines(config: Config, profile: Profile) -> list[str]:
    """What ``check`` says of a cluster profile: its timings, inequality (I) with its margin,
    the Sentinel timing that keeps its instances through a Redis failover, and a warning
    where a worker could escape the leash's kill."""
    t = config.timing(profile)
    c = config.cluster
    lines = [f"lease {t.lease:g} s  renew_deadline {t.renew_deadline:g} s  renew_period "
             f"{t.renew_period:g} s  kill_budget {t.kill_budget:g} s  clock_drift {t.clock_drift:g}",
             f"inequality (I): {t.summary()}"]
    if c.replicas == 0 and config.settings.sentinel_master:
        lines.append("warning: [cluster] replicas = 0 with Sentinel: a grant the failover "
                     "loses can be granted again (set floor(n/2) of n Redis nodes)")
    if config.settings.sentinel_master:
        down_after = max(0.0, t.renew_deadline - t.renew_period - 2) * 1000
        lines.append(f"sentinel: down-after-milliseconds <= {down_after:.0f} keeps instances "
                     f"through a failover (F + renew_period < renew_deadline); longer ones "
                     f"fence every cluster instance")
    if config.settings.identity == "registry":
        lines.append('warning: identity = "registry": a daemon that leaves its session escapes '
                     "the leash's kill at the deadline (cgroups close that gap)")
    return lines


@click.command()
def schema() -> None:
    """Print the JSON Schema of the config file (for editors: taplo, Even Better TOML).

    Save it (workerguard schema > workerguard.schema.json) and start the TOML file with
    `#:schema ./workerguard.schema.json`; the editor then completes and checks keys.
    """
    import json

    from workerguard.config.schema import json_schema

    click.echo(json.dumps(json_schema(), indent=2))
