"""The long-running commands: worker, beat, flower, up."""

from __future__ import annotations

import sys

import click

from workerguard.cli.common import config_option, errors, load, loglevel_option


@click.command()
@config_option
@click.option("--pool", type=click.Choice(["threads", "prefork", "solo"]), default="threads",
              show_default=True, help="Celery pool; threads suits a guard's waiting and works on Windows.")
@click.option("--concurrency", "-c", type=click.IntRange(1, 64), default=4, show_default=True)
@loglevel_option
def worker(config_file: str | None, pool: str, concurrency: int, loglevel: str) -> None:
    """Run the guard: a Celery worker on this host's queues and the sweep broadcast."""
    from workerguard.ops.runners import run_worker

    config = load(config_file)
    with errors():
        run_worker(config, pool, concurrency, loglevel)


@click.command()
@config_option
@loglevel_option
def beat(config_file: str | None, loglevel: str) -> None:
    """Run Celery beat with the sweep schedule (every sweep_interval seconds). Run one."""
    from workerguard.ops.runners import run_beat

    run_beat(load(config_file), loglevel)


@click.command(context_settings={"ignore_unknown_options": True})
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
    from workerguard.ops.runners import run_flower

    config = load(config_file)
    with errors():
        sys.exit(run_flower(config, address, port, list(flower_args)))


@click.command()
@config_option
@loglevel_option
def up(config_file: str | None, loglevel: str) -> None:
    """Embedded Redis (without redis_url) + guard worker + beat, in the foreground.

    Ctrl-C stops the three; the workers they manage keep running.
    """
    from workerguard.ops.runners import run_up

    config = load(config_file)
    with errors():
        code = run_up(config, loglevel)
    sys.exit(code)
