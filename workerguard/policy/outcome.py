"""What one converge did (or, in a dry run, would do): the guard's answer, typed.

The guard returns an ``Outcome``, read by its attributes (``outcome.action``); the task
contract's result dict (docs/callers.md, "Result keys") is built from it in one place,
``Outcome.contract()``, at the edge: the task that returns it, the CLI that prints it.
Every answer of the guard has that shape (``Answer``: ``ok``, ``message``, ``contract()``);
the status and prune reports of ``reports`` are the others.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from workerguard.store.backoff import Backoff
from workerguard.workers.model import Instance
from workerguard.workers.spawn import SpawnFailure

Action = Literal["started", "already_running", "stopped_extras", "stopped_all",
                 "nothing_to_stop", "nothing_to_do", "paused", "backoff", "replaced",
                 "start_failed", "error"]
FAILED_ACTIONS: frozenset[str] = frozenset({"start_failed", "error"})


class Answer(Protocol):
    """What every guard answer offers: whether it succeeded, the line the CLI prints, and
    the task contract's result dict (built once, at the edge)."""

    @property
    def ok(self) -> bool: ...

    @property
    def message(self) -> str: ...

    def contract(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Outcome:
    host: str
    profile: str
    action: Action
    time: float
    running: tuple[Instance, ...] = ()
    started: tuple[int, ...] = ()
    stopped: tuple[int, ...] = ()
    kept: tuple[int, ...] = ()
    spare: tuple[int, ...] = ()
    """Adopted instances beyond ``max_workers`` left running (``stop_adopted = false``)."""
    cleaned: tuple[int, ...] = ()
    """Processes left by ended instances, killed."""
    failures: tuple[SpawnFailure, ...] = ()
    backoff: Backoff | None = None
    paused: Mapping[str, Any] | None = None
    error: str | None = None
    """Why a converge could not act (``action == "error"``)."""
    dry_run: bool = False
    would_start: int = 0
    would_stop: tuple[int, ...] = ()
    message_text: str | None = field(default=None, repr=False)
    """A message worded by the caller (dry runs); else it is worded from the action."""

    @property
    def ok(self) -> bool:
        return self.action not in FAILED_ACTIONS

    @property
    def error_text(self) -> str | None:
        if self.failures:
            return "; ".join(f.describe() for f in self.failures)
        return self.error

    @property
    def message(self) -> str:
        return self.message_text if self.message_text is not None else _message(self)

    def contract(self) -> dict[str, Any]:
        """The task result: a fresh dict, JSON-ready (the caller may change it)."""
        r: dict[str, Any] = {
            "profile": self.profile, "host": self.host, "action": self.action,
            "running": [i.pid for i in self.running], "started": list(self.started),
            "stopped": list(self.stopped), "kept": list(self.kept), "dry_run": self.dry_run,
            "time": self.time,
        }
        r["spare"], r["cleaned"] = list(self.spare), list(self.cleaned)
        if self.paused is not None:
            r["paused"] = dict(self.paused)
        if self.dry_run:
            r["would_stop"], r["would_start"] = list(self.would_stop), self.would_start
        if self.error_text is not None:
            r["error"] = self.error_text
        if self.backoff is not None and self.backoff.failures:
            r["backoff"] = {"failures": self.backoff.failures,
                            "next_attempt": self.backoff.next_attempt}
        r["ok"] = self.ok
        r["message"] = self.message
        return r


def pid_list(pids: Iterable[int]) -> str:
    """``4242, 4243``: pids as the CLI lines print them."""
    return ", ".join(str(p) for p in pids)


def _message(o: Outcome) -> str:
    """The line the CLI prints, worded like the script it replaces."""
    profile, action = o.profile, o.action
    running, stopped = pid_list(i.pid for i in o.running), pid_list(o.stopped)
    if action == "already_running":
        if o.spare:
            return (f"{profile}: already running (PIDs: {running}); {len(o.spare)} adopted "
                    f"beyond max_workers left running ({pid_list(o.spare)}; stop_adopted = false)")
        return f"{profile}: already running (PIDs: {running})"
    if action == "started":
        return f"{profile}: started (PIDs: {pid_list(o.started)})"
    if action == "replaced":
        if o.started:
            then = f"started {pid_list(o.started)}"
        elif o.backoff is not None and o.backoff.failures:
            then = (f"in backoff after {o.backoff.failures} failures, next start in "
                    f"{max(0.0, o.backoff.next_attempt - o.time):.0f} s")
        else:
            then = "no start needed"
        return f"{profile}: replaced unhealthy {stopped}; {then}"
    if action == "stopped_extras":
        return f"{profile}: keeping {pid_list(o.kept) or 'none'}, stopping {stopped}"
    if action == "stopped_all":
        return f"{profile}: stopped {stopped}; paused until the next ensure"
    if action == "nothing_to_stop":
        return f"{profile}: no instances to stop"
    if action == "nothing_to_do":
        return f"{profile}: nothing running, none required (min_workers = 0)"
    if action == "start_failed":
        return f"{profile}: start failed: {o.error_text}"
    if action == "backoff" and o.backoff is not None:
        return (f"{profile}: in backoff after {o.backoff.failures} failed starts; next attempt "
                f"in {max(0.0, o.backoff.next_attempt - o.time):.0f} s (ensure --force starts now)")
    if action == "paused" and o.paused is not None:
        return f"{profile}: paused (stopped by {o.paused['by']}); ensure clears it"
    if action == "error":
        return f"{profile}: {o.error}"
    return f"{profile}: {action}"
