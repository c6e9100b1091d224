"""The ``workerguard`` command.

Exit codes (scripts depend on them): ``EXIT_OK`` 0, ``EXIT_FAILED`` 1 (the action ran
and failed, or no guard answered), ``EXIT_USAGE`` 2 (bad usage or bad config).
"""

from __future__ import annotations

from workerguard.cli.deferred_imports import defer_redis_asyncio

defer_redis_asyncio()  # before anything imports redis-py

import click  # noqa: E402

from workerguard.cli import actions, fleet, operations, services  # noqa: E402
from workerguard.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE  # noqa: E402

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="workerguard")
def main() -> None:
    """Keep exactly the right number of a named worker process alive on each host."""


for command in (actions.ensure, actions.enforce, actions.stop, actions.status, actions.prune,
                operations.events, operations.ping, operations.check, operations.reload,
                operations.schema, fleet.hosts,
                services.worker, services.beat, services.flower, services.up):
    main.add_command(command)
