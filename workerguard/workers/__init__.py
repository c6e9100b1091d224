"""The process layer: find, start and stop worker processes. No Celery, no Redis here."""

from .discover import Scan, discover, scan_processes, verify_known
from .model import MARK_HOST, MARK_INSTANCE, MARK_PROFILE, Instance
from .spawn import SpawnFailure, spawn_instances
from .stop import StopOutcome, stop_instances

__all__ = [
    "MARK_HOST",
    "MARK_INSTANCE",
    "MARK_PROFILE",
    "Instance",
    "Scan",
    "SpawnFailure",
    "StopOutcome",
    "discover",
    "scan_processes",
    "spawn_instances",
    "stop_instances",
    "verify_known",
]
