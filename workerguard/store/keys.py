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


def host_owner(host: str) -> str:
    """From where the host's instances are seen: the uid and runtime dir of the guard that
    spawns them (JSON; ``store.host_owner``); a ``--local`` call of another refuses."""
    return f"{PREFIX}owner:{host}"


def retry(host: str, profile: str) -> str:
    """Deduplicates the one retry scheduled for when a profile's backoff ends."""
    return f"{PREFIX}retry:{host}:{profile}"


# cluster-scoped profiles (store.lease): one lease per slot across the fleet ------------
EPOCH = PREFIX + "epoch"
"""The Redis primary the fleet last agreed on, and since when (Redis clock): after a
change (a failover) or a jump of the Redis clock, no slot is claimed for a hold-off."""


def cluster_slot(profile: str, slot: int) -> str:
    """The lease of one slot of a cluster profile: ``<host>|<token>|<instance id>``, PX L."""
    return f"{PREFIX}cluster:{profile}:slot:{slot}"


def cluster_info(profile: str, slot: int) -> str:
    """The holder's instance of one slot, for ``status --cluster`` (a hash: host, token, pid,
    start, started_ms on the Redis clock), written by the holder's converge and extended
    with the lease by each renewal: it lives as long as the lease does."""
    return f"{PREFIX}cluster:{profile}:info:{slot}"


def cluster_token(profile: str) -> str:
    """The last fencing token issued for a cluster profile (strictly increasing)."""
    return f"{PREFIX}cluster:{profile}:token"


def cluster_spec(profile: str) -> str:
    """The fingerprint of the cluster profile's definition the fleet runs."""
    return f"{PREFIX}cluster:{profile}:spec"


def cluster_paused(profile: str) -> str:
    """Set by ``stop`` of a cluster profile: no slot is claimed, holders release theirs."""
    return f"{PREFIX}cluster:{profile}:paused"


# hosts (store.host_records) ------------------------------------------------------------
HOSTS = PREFIX + "hosts"
"""Every host ever seen by the fleet, scored by its last-seen Redis time (ms)."""


def host_record(host: str) -> str:
    """A guard's own record (JSON: machine, boot, version, fingerprints, slots held, the
    primary it sees, its clock offset), PX 3P: gone when the guard is."""
    return f"{PREFIX}host:{host}"
DRAINING = PREFIX + "draining"
"""The hosts ``hosts --drain`` marked (a set, read in one command by every lease round):
they claim no slot and hand theirs over."""
