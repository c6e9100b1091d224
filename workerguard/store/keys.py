"""Every Redis key workerguard uses, in one place (like arq's ``constants.py``).

All live under ``workerguard:``; the names are part of the contract between versions
(docs/operations.md, "Upgrading"). Celery's own keys (queues, results) are not listed here.
"""

from __future__ import annotations

PREFIX = "workerguard:"
ALL = PREFIX + "*"
"""A ``KEYS``/``SCAN`` pattern matching every key of workerguard."""

EVENTS = PREFIX + "events"
"""The action log: one capped stream shared by every host; each entry names its host."""


def lock(host: str, profile: str) -> str:
    """The profile's lock (python-redis-lock protocol; the value is the holder's id)."""
    return f"{PREFIX}lock:{host}:{profile}"


def lock_signal(host: str, profile: str) -> str:
    """The list a releasing holder pushes to, waking one ``BLPOP`` waiter."""
    return f"{PREFIX}lock-signal:{host}:{profile}"


def paused(host: str, profile: str) -> str:
    """Set by ``stop_all`` (JSON: since, by); sweeps leave a paused profile stopped."""
    return f"{PREFIX}paused:{host}:{profile}"


def backoff(host: str, profile: str) -> str:
    """Crash-loop state, a hash: ``failures``, ``next_attempt``, ``delay``."""
    return f"{PREFIX}backoff:{host}:{profile}"


def known(host: str, profile: str) -> str:
    """The known instances of the fast path (JSON, with the profile's fingerprint)."""
    return f"{PREFIX}known:{host}:{profile}"


def sweep(host: str) -> str:
    """The per-host sweep slot that drops a second beat's duplicate sweep."""
    return f"{PREFIX}sweep:{host}"


def exit_claim(host: str, instance: str) -> str:
    """Claimed (SET NX) once per ended instance: by the guard that stops it, or by the exit
    watcher that reports it as a crash; whichever comes first."""
    return f"{PREFIX}exit:{host}:{instance}"


def retry(host: str, profile: str) -> str:
    """Deduplicates the one retry scheduled for when a profile's backoff ends."""
    return f"{PREFIX}retry:{host}:{profile}"
