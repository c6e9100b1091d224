"""The pure config agreement of a cluster profile: may this host claim, and may the fleet's
spec move to this host's definition?

The fleet's spec (``store.cluster_spec``) names the one definition claimers must have.
A host whose definition differs claims nothing and keeps renewing what it holds: it is in
``mismatch``. The spec moves to a new definition only when **every live eligible host**
reports that very fingerprint in its host record: live (its record has not expired),
running the profile, not draining, and inside the profile's ``hosts`` patterns. A host
still on the old definition (or on a third one) holds the move back; a draining host or a
departed one does not. Any guard that sees the agreement sends the compare-and-set, so
the move needs no coordinator, and two guards that both see it race harmlessly (one
``moved``, the other ``changed``).

Pure: tested with plain inputs (tests/test_spec_agreement.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from workerguard.policy.placement import preference
from workerguard.store.cluster_spec import Spec
from workerguard.store.host_records import HostRecord

Standing = Literal["unset", "match", "mismatch"]
"""This host against the fleet's spec: no spec yet (the first claim writes it), the same
fingerprint, or another one (no claim)."""


@dataclass(frozen=True)
class Agreement:
    standing: Standing
    move: bool = False
    """Every live eligible host reports this host's fingerprint and the spec has another:
    send the compare-and-set."""
    holding_back: tuple[str, ...] = ()
    """The live eligible hosts whose fingerprint is not this host's (they hold a move back)."""


def counted_hosts(profile: str, live: Mapping[str, HostRecord], draining: set[str],
                  patterns: Sequence[str] = ()) -> dict[str, str]:
    """The live eligible hosts of ``profile`` and the fingerprint each reports."""
    return {host: record.fingerprints[profile] for host, record in live.items()
            if profile in record.fingerprints and host not in draining
            and (not patterns or preference(patterns, host) is not None)}


def agree(spec: Spec | None, own: Spec, reports: Mapping[str, str]) -> Agreement:
    """Where this host (``own``) stands against the fleet's ``spec``, given the live eligible
    hosts' ``reports`` (``counted_hosts``)."""
    holding_back = tuple(sorted(h for h, fp in reports.items() if fp != own.fp))
    if spec is None:
        return Agreement("unset", holding_back=holding_back)
    if spec.fp == own.fp:
        return Agreement("match", holding_back=holding_back)
    return Agreement("mismatch", move=bool(reports) and not holding_back,
                     holding_back=holding_back)


def mismatched_hosts(spec: Spec | None, profile: str,
                     live: Mapping[str, HostRecord]) -> tuple[str, ...]:
    """The live hosts that run ``profile`` with another definition than the fleet's spec
    (they claim nothing; ``status --cluster`` names them)."""
    if spec is None:
        return ()
    return tuple(sorted(h for h, r in live.items()
                        if profile in r.fingerprints and r.fingerprints[profile] != spec.fp))
