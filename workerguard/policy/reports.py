"""The guard's answers: ``Outcome`` constructors for converges, and the status and prune
reports (``StatusReport``, ``PruneReport``: they describe a host, not one converge).

Every answer is read by its attributes and has ``ok``, ``message`` (the line the CLI
prints, worded like the script it replaces: ``rpa: already running (PIDs: 51848)``) and
``contract()``, the task result dict with at least ``profile``, ``host``, ``action``,
``running``, ``started``, ``stopped``, ``dry_run``, ``ok`` and ``message``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from workerguard.config.schema import Profile
from workerguard.policy.outcome import Action, Outcome, pid_list
from workerguard.policy.plan import Plan
from workerguard.store.backoff import Backoff
from workerguard.workers.identity import age_seconds
from workerguard.workers.model import Instance
from workerguard.workers.spawn import SpawnFailure

Result = dict[str, Any]
"""An answer's ``contract()``: the task result dict as it travels (docs/callers.md, "Result keys")."""


def action_for(mode: str, plan: Plan, stopped: Sequence[int], started: Sequence[Any],
               failures: Sequence[SpawnFailure], anything_running: bool) -> Action:
    """The contract's ``action`` for what a converge of ``mode`` (an intent) did."""
    if mode == "stop_all":
        return "stopped_all" if plan.stop else "nothing_to_stop"
    if mode == "replace" and stopped and not failures:
        return "replaced"
    if failures:
        return "start_failed"
    if started:
        return "started"
    if plan.stop:
        return "stopped_extras"
    if mode == "enforce" and not anything_running:
        return "nothing_to_stop"
    return "already_running" if anything_running else "nothing_to_do"


def result(host: str, profile: str, action: Action, *, running: Sequence[Instance],
           started: Sequence[int] = (), stopped: Sequence[int] = (), kept: Sequence[int] = (),
           failures: Sequence[SpawnFailure] = (), backoff: Backoff | None = None,
           now: float | None = None, spare: Sequence[int] = (), cleaned: Sequence[int] = (),
           ) -> Outcome:
    return Outcome(host=host, profile=profile, action=action,
                   time=now if now is not None else time.time(), running=tuple(running),
                   started=tuple(started), stopped=tuple(stopped), kept=tuple(kept),
                   spare=tuple(spare), cleaned=tuple(cleaned), failures=tuple(failures),
                   backoff=backoff)


def paused_result(host: str, profile: str, instances: Sequence[Instance],
                  pause: Mapping[str, Any]) -> Outcome:
    return Outcome(host=host, profile=profile, action="paused", time=time.time(),
                   running=tuple(instances), paused=dict(pause))


def error_result(host: str, profile: str, exc: Exception) -> Outcome:
    return Outcome(host=host, profile=profile, action="error", time=time.time(), error=str(exc))


def dry_run_result(host: str, profile: str, mode: str, plan: Plan,
                   backoff: Backoff | None) -> Outcome:
    start = 0 if backoff else plan.start
    action: Action
    if backoff:
        action = "backoff"
    elif mode == "stop_all":
        action = "stopped_all" if plan.stop else "nothing_to_stop"
    elif start:
        action = "started"
    elif plan.stop:
        action = "stopped_extras"
    elif plan.keep:
        action = "already_running"
    else:
        action = "nothing_to_stop" if mode == "enforce" else "nothing_to_do"
    plain = Outcome(host=host, profile=profile, action=action, time=time.time(),
                    running=(*plan.keep, *plan.stop), kept=tuple(i.pid for i in plan.keep),
                    dry_run=True, backoff=backoff, would_stop=tuple(i.pid for i in plan.stop),
                    would_start=start)
    if action in ("started", "stopped_extras", "stopped_all"):
        parts = []
        if plan.keep:
            parts.append(f"keep {pid_list(plain.kept)}")
        if plan.stop:
            parts.append(f"stop {pid_list(plain.would_stop)}")
        if start:
            parts.append(f"start {start}")
        text = f"{profile}: [dry-run] would {', '.join(parts)}"
    else:
        text = "[dry-run] " + plain.message
    return replace(plain, message_text=text)


def instance_entry(i: Instance, now: float,
                   health: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "pid": i.pid, "create_time": round(i.started_at, 2), "start_ticks": i.start,
        "uptime": round(age_seconds(i.start), 1),
        "tree": list(i.tree), "marked": i.spawned, "cmdline": list(i.cmdline),
        "instance_id": i.instance_id, "origin": i.origin, "outdated": i.outdated,
        "processes": len(i.tree) or 1, "index": i.index,
    }
    probed = health.get(i.instance_id) if health is not None and i.instance_id else None
    if probed is not None:
        entry["health"] = {k: probed[k] for k in ("state", "failures", "last_probe", "last_ok",
                                                   "last_output", "last_duration")}
    rss = _rss(i.tree or (i.pid,))
    if rss is not None:
        entry["rss_bytes"] = rss
    return entry


def _rss(pids: Sequence[int]) -> int | None:
    import psutil

    total, seen = 0, False
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
            seen = True
        except psutil.Error:
            continue
    return total if seen else None


class _HostReport:
    @property
    def ok(self) -> bool:
        """Always: a report that could not be made raises instead (``RedisUnavailable`` ...)."""
        return True


@dataclass(frozen=True)
class PruneReport(_HostReport):
    """What ``prune`` stopped (or, in a dry run, would stop): the orphans of one host."""

    host: str
    orphans: tuple[Instance, ...]
    stopped: tuple[int, ...]
    dry_run: bool
    time: float
    removed: tuple[str, ...] = ()
    """Leftovers removed (in a dry run: that would be): empty groups, temp records, probe dirs."""
    stale_groups: int = 0
    """Empty instance groups left (of host ids served recently, or just made)."""

    @property
    def action(self) -> Literal["pruned", "nothing_to_stop"]:
        return "pruned" if self.stopped or (self.removed and not self.dry_run) else "nothing_to_stop"

    @property
    def message(self) -> str:
        return "\n".join([self._orphans_line(), *self._removed_lines()])

    def _orphans_line(self) -> str:
        if not self.orphans:
            return "no orphaned instances"
        names = ", ".join(sorted({i.profile for i in self.orphans}))
        if self.dry_run:
            return f"[dry-run] would stop orphans {pid_list([i.pid for i in self.orphans])} ({names})"
        return f"stopped orphans {pid_list(self.stopped)} ({names})"

    def _removed_lines(self) -> list[str]:
        left = f"; {self.stale_groups} empty groups left" if self.stale_groups else ""
        if not self.removed:
            return [f"no leftovers to remove{left}"]
        verb = "[dry-run] would remove" if self.dry_run else "removed"
        return [f"{verb} {len(self.removed)} leftovers{left}:", *(f"  {path}" for path in self.removed)]

    def contract(self) -> Result:
        """The task result: a fresh dict, JSON-ready."""
        return {"profile": None, "host": self.host, "action": self.action,
                "running": [], "started": [], "stopped": list(self.stopped),
                "dry_run": self.dry_run,
                "orphans": [{"profile": i.profile, "pid": i.pid, "instance_id": i.instance_id}
                            for i in self.orphans],
                "removed": list(self.removed), "stale_groups": self.stale_groups,
                "time": self.time, "ok": self.ok, "message": self.message}


def prune_report(host: str, orphans: Sequence[Instance], stopped: Sequence[int],
                 dry_run: bool, removed: Sequence[str] = (), stale_groups: int = 0) -> PruneReport:
    return PruneReport(host, tuple(orphans), tuple(stopped), dry_run, time.time(),
                       tuple(removed), stale_groups)


@dataclass(frozen=True)
class StatusReport(_HostReport):
    """Every profile's state and instances on one host, and its orphans.

    ``profiles`` (by name) and ``orphans`` are the entries of the task result as they are
    (docs/callers.md, "Result keys"), read once from the host when the report was made.
    """

    host: str
    profile: str | None
    """The profile asked about; None: every profile."""
    profiles: Mapping[str, dict[str, Any]]
    orphans: tuple[dict[str, Any], ...]
    running: tuple[int, ...]
    identity: str
    time: float
    message: str
    exit_watch: str | None = None
    """How the answering guard worker learns of exits: ``pidfd``, or ``polling every 0.5 s
    (why)``; None when the answer does not come from a guard worker (``--local``)."""

    @property
    def action(self) -> Literal["status"]:
        return "status"

    def contract(self) -> Result:
        """The task result: a fresh dict, JSON-ready (entries copied: the caller may change it)."""
        return {
            "profile": self.profile, "host": self.host, "action": self.action,
            "running": list(self.running), "started": [], "stopped": [], "dry_run": False,
            "profiles": copy.deepcopy(dict(self.profiles)),
            "orphans": copy.deepcopy(list(self.orphans)),
            "identity": self.identity, "exit_watch": self.exit_watch, "time": self.time,
            "ok": self.ok, "message": self.message,
        }


def status_report(host: str, profile: str | None, profiles: Sequence[Profile],
                  found: Mapping[str, Sequence[Instance]],
                  paused: Mapping[str, Mapping[str, Any] | None],
                  backoffs: Mapping[str, Backoff], now: float,
                  orphans: Sequence[Instance] = (), identity: str = "registry",
                  health: Mapping[str, Mapping[str, Any]] | None = None,
                  exit_watch: str | None = None, identity_note: str | None = None,
                  ) -> StatusReport:
    """Every profile's state and instances; ``health`` (the guard worker's probes, by
    instance id) adds each probed instance's health; ``exit_watch`` (the guard worker's
    exit watcher mode) adds a line when exits are polled; ``identity_note`` (why the cgroup
    layout is not the one systemd wants, or why there is none: ``cgroup_layout``) a line."""
    entries: dict[str, Any] = {}
    lines = []
    for p in profiles:
        instances = found[p.name]
        backoff = backoffs[p.name]
        pause = paused[p.name]
        if pause:
            state = "paused"
        elif backoff.active(now, p.backoff_max):
            state = "backoff"
        elif instances:
            state = "running"
        else:
            state = "stopped"
        entries[p.name] = {
            "state": state,
            "min_workers": p.min_workers,
            "max_workers": p.max_workers,
            "instances": [instance_entry(i, now, health) for i in instances],
            "paused": dict(pause) if pause else None,
            "backoff": ({"failures": backoff.failures, "next_attempt": backoff.next_attempt}
                        if backoff.failures else None),
            "command": list(p.command),
        }
        pids = pid_list([i.pid for i in instances]) or "-"
        lines.append(f"{p.name}: {state} (PIDs: {pids})")
    for orphan in orphans:
        lines.append(f"{orphan.profile}: orphaned (PID: {orphan.pid}; profile not configured, "
                     "`workerguard prune` stops it)")
    if exit_watch is not None and exit_watch != "pidfd":
        lines.append(f"exit watch: {exit_watch}")
    if identity_note is not None:
        lines.append(f"identity: {identity} ({identity_note})")
    return StatusReport(
        host=host, profile=profile, profiles=entries,
        orphans=tuple({"profile": o.profile, **instance_entry(o, now)} for o in orphans),
        running=tuple(i.pid for p in profiles for i in found[p.name]), identity=identity,
        time=now, message="\n".join(lines), exit_watch=exit_watch)
