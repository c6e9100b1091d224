"""The fleet's commands, from Redis only: ``status --cluster`` and ``hosts`` (``--drain``).

They need the config (for Redis and the cluster profiles) and no guard worker: any
machine that reaches the fleet's Redis can run them (``policy.cluster_view``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NoReturn, TypeVar

import click

from workerguard.cli.common import (
    EXIT_OK,
    config_option,
    duration,
    errors,
    json_option,
    load,
    usage_error,
)

if TYPE_CHECKING:
    import redis

    from workerguard.config.load import Config
    from workerguard.policy.cluster_view import HostView, ProfileView
    from workerguard.store.host_records import Forgotten

T = TypeVar("T")


@contextmanager
def _client(config: Config) -> Iterator[Callable[[Callable[[redis.Redis], T]], T]]:
    """A way to run reads against the configured Redis; unreachable: one line, exit 1."""
    from workerguard.ops.connect import endpoint, redis_client, redis_url, unreachable
    from workerguard.store.lock import REDIS_ERRORS

    with errors(), redis_url(config.settings) as url:
        client = redis_client(url, config.settings)

        def run(read: Callable[[redis.Redis], T]) -> T:
            try:
                return read(client)
            except REDIS_ERRORS as exc:
                raise unreachable(endpoint(url, config.settings.sentinel_master), exc) from None

        try:
            yield run
        finally:
            client.close()


def cluster_status(config_file: str | None, profile: str | None, as_json: bool) -> NoReturn:
    """``workerguard status --cluster [PROFILE]``: every cluster profile's slots."""
    from workerguard.policy.cluster_view import cluster_views

    config = load(config_file)
    wanted = [p for p in config.profiles.values() if p.is_cluster]
    if profile is not None:
        if profile not in config.profiles:
            usage_error(f"unknown profile {profile!r} (configured: "
                        f"{', '.join(sorted(config.profiles)) or 'none'})")
        if not config.profiles[profile].is_cluster:
            usage_error(f"profile {profile!r} is not a cluster profile (scope = \"host\"): "
                        f"use workerguard status {profile}")
        wanted = [config.profiles[profile]]
    if not wanted:
        usage_error(f"no cluster profile in {config.source}")
    with _client(config) as run:
        views = run(lambda client: cluster_views(client, config, wanted))
    if as_json:
        click.echo(json.dumps({"profiles": {v.profile: v.as_dict() for v in views}},
                              indent=2, sort_keys=True))
    else:
        for view in views:
            click.echo("\n".join(profile_lines(view)))
    sys.exit(EXIT_OK)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def profile_lines(view: ProfileView) -> list[str]:
    """One cluster profile as ``status --cluster`` prints it."""
    head = (f"{view.profile}   cluster   {view.held} of {view.max_workers} held   "
            f"{view.guarantee.replace('_', ' ')} {view.max_workers}, lease "
            f"{view.lease_seconds:g} s" + ("   paused" if view.paused else ""))
    rows = [("slot", "host", "token", "pid", "up", "lease left", "state")]
    rows += [(str(s.slot), s.host or "-", str(s.token) if s.token is not None else "-",
              str(s.pid) if s.pid is not None else "-",
              duration(s.uptime) if s.uptime is not None else "-",
              _seconds(s.lease_left), s.state) for s in view.slots]
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = [head, *("  " + "  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)),
                                       r[6]]) for r in rows)]
    lines += [f"  spec_mismatch: {host} runs another definition than the fleet's spec "
              f"(max_workers {view.spec.max_workers if view.spec else '-'}): it claims nothing "
              f"until every live host runs one definition" for host in view.spec_mismatch]
    return lines


def _ago(seconds: float) -> str:
    if seconds == float("inf"):
        return "never"
    if seconds < 120:
        return f"{seconds:.1f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def host_lines(views: list[HostView]) -> list[str]:
    """The hosts as ``workerguard hosts`` prints them."""
    rows = [("host", "last seen", "version", "slots", "draining", "primary", "clock offset", "")]
    for v in views:
        r = v.record
        slots = ", ".join(f"{p}:{','.join(map(str, s))}" for p, s in sorted(r.slots.items())
                          if s) if r else ""
        rows.append((v.host, _ago(v.seen_ago), r.version if r else "-", slots or "-",
                     "yes" if v.draining else "no", (r.primary[:12] if r and r.primary else "-"),
                     f"{r.clock_offset:+.3f} s" if r else "-", "; ".join(v.flags)))
    widths = [max(len(r[i]) for r in rows) for i in range(7)]
    return ["  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[7]]).rstrip()
            for r in rows]


def _forgotten(host: str, done: Forgotten) -> NoReturn:
    """``hosts --forget HOST``: one line, exit 0; a live or unknown host: exit 2."""
    if done.live:
        left = (f"; it expires in {done.expires_in:.1f} s unless rewritten"
                if done.expires_in is not None else "")
        usage_error(f"host {host!r} is live (its guard writes its record every renew "
                    f"period{left}): stop its guard first (to clear only its drain mark: "
                    f"--undrain)")
    if not done.removed:
        usage_error(f"host {host!r} is neither listed nor draining: nothing to forget")
    click.echo(f"{host}: forgotten (no longer listed, no drain mark)")
    sys.exit(EXIT_OK)


@click.command()
@config_option
@json_option
@click.option("--drain", metavar="HOST_ID",
              help="Mark HOST_ID draining: it claims no slot and hands its cluster slots over "
                   "to other hosts one at a time.")
@click.option("--undrain", metavar="HOST_ID", help="Clear HOST_ID's drain mark.")
@click.option("--forget", metavar="HOST_ID",
              help="Remove a departed host from the list, and its drain mark. Refused (exit 2) "
                   "while its record is live: its guard would write it again.")
def hosts(config_file: str | None, as_json: bool, drain: str | None, undrain: str | None,
          forget: str | None) -> None:
    """Show the guards of the fleet (from Redis): last seen, version, cluster slots held,
    draining, the Redis primary each sees, its clock's offset from Redis TIME; departed
    hosts too.

    A host that sees another Redis primary than the others, or whose clock is off by more
    than 1 s, is flagged. --drain / --undrain a host id the fleet has seen (a typo is
    refused, exit 2). --forget a departed host (one whose guard is alive is refused, exit 2).
    """
    from workerguard.policy.cluster_view import host_views
    from workerguard.store.host_records import HostRecords

    config = load(config_file)
    if sum(x is not None for x in (drain, undrain, forget)) > 1:
        usage_error("--drain, --undrain and --forget exclude each other")
    with _client(config) as run:
        if forget is not None:
            _forgotten(forget, run(lambda client: HostRecords(client).forget(forget)))
        target = drain or undrain
        if target is not None:
            records = run(HostRecords)
            known = run(lambda _c: records.known())
            if target not in known and drain:
                usage_error(f"host {target!r} has never been seen by this Redis (known: "
                            f"{', '.join(sorted(known)) or 'none'})")
            run(lambda _c: records.set_draining(target, drain is not None))
            click.echo(f"{target}: draining: it claims no slot and hands its cluster slots to "
                       f"other hosts one at a time" if drain else f"{target}: not draining")
            sys.exit(EXIT_OK)
        views = run(host_views)
    if as_json:
        click.echo(json.dumps({"hosts": [v.as_dict() for v in views]}, indent=2,
                              sort_keys=True))
    else:
        click.echo("\n".join(host_lines(views)))
        if any("sees another Redis primary" in v.flags for v in views):
            click.echo("warning: the hosts see different Redis primaries (a split or a "
                       "failover in progress)")
    sys.exit(EXIT_OK)
