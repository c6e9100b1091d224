"""``workerguard status`` as a rich table (needs the ``ops`` extra: rich).

The plain lines (``demo: running (PIDs: 4242)``) stay the output when stdout is not a
terminal: scripts and tests read them. The table is for people.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from workerguard.cli.common import duration
from workerguard.policy.reports import Result

STATE_STYLE = {"running": "green", "paused": "yellow", "backoff": "red", "stopped": "dim",
               "healthy": "green", "starting": "yellow", "unhealthy": "red"}


def status_table(result: Result) -> Table:
    table = Table(title=f"workerguard status: {result['host']}", title_justify="left",
                  expand=False)
    for column in ("profile", "host", "state", "pids", "uptime", "health", "command"):
        table.add_column(column, overflow="fold", no_wrap=column != "command")
    for name, entry in sorted(result.get("profiles", {}).items()):
        instances = entry.get("instances", [])
        state = entry["state"]
        table.add_row(
            name,
            result["host"],
            _styled(state),
            ", ".join(str(i["pid"]) for i in instances) or "-",
            ", ".join(duration(i["uptime"]) for i in instances) or "-",
            ", ".join(_health(i.get("health")) for i in instances) or "-",
            " ".join(entry.get("command", [])),
        )
    watch = result.get("exit_watch")
    if watch and watch != "pidfd":  # exits are polled: say why under the table
        table.caption = f"exit watch: {watch}"
    return table


def _styled(word: str) -> str:
    style = STATE_STYLE.get(word)
    return f"[{style}]{word}[/]" if style else word


def _health(health: dict[str, Any] | None) -> str:
    """``healthy``, ``unhealthy (3 failed)``, ``starting``; ``-`` when not probed here."""
    if not health:
        return "-"
    failures = health.get("failures") or 0
    return _styled(health["state"]) + (f" ({failures} failed)" if failures else "")


def render(console: Console, result: Result, header: str | None = None) -> None:
    if header:
        console.print(header, highlight=False)
    console.print(status_table(result))

