"""The process layer: find, start and stop worker processes. No Celery, no Redis here."""

from .discover import Discovery, Scan, scan_processes, verify_known
from .model import MARK_HOST, MARK_INSTANCE, MARK_PROFILE, Instance, Leftover
from .spawn import SpawnFailure
from .stop import StopOutcome, stop_instances
from .table import HostProcesses, SpawnOutcome, command_fingerprint
from .watch import Exit, ExitWatcher, describe_exit

__all__ = [
    "MARK_HOST",
    "MARK_INSTANCE",
    "MARK_PROFILE",
    "Discovery",
    "Exit",
    "ExitWatcher",
    "HostProcesses",
    "Instance",
    "Leftover",
    "Scan",
    "SpawnFailure",
    "SpawnOutcome",
    "StopOutcome",
    "command_fingerprint",
    "describe_exit",
    "scan_processes",
    "stop_instances",
    "verify_known",
]
