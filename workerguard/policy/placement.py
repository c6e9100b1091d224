"""Where a cluster profile's vacant slots go: which hosts may claim them, in what order.

There is no central scheduler. Every eligible guard computes the same
ranking from the same inputs, and the host at position ``r`` for a slot tries to claim it
``r`` staggers later than the first. The claim itself is one atomic script (``SET NX``),
so two guards that disagree about the ranking (a host record read a moment apart) lose a
race, never get a double grant.

The order for a slot: the position of the first of the profile's ``hosts``
patterns the host matches (the preference order), then the fewest cluster slots the host
holds (spread), then a stable hash of (profile, slot, host), so that different profiles
and slots land on different hosts. A host ranks for a slot only while it is not draining,
not in crash-loop cooldown for the profile, and holds fewer than ``max_per_host`` of the
profile's slots, counting the slots planned for it as first choice in this same call.
Only vacant slots are placed: a held slot stays where it is (no failback).

Pure: no clock, no Redis, nothing random; ``tests/test_placement.py`` checks it on
generated fleets.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase


@dataclass(frozen=True)
class HostState:
    """What placement needs of one live host (from its host record)."""

    host: str
    draining: bool = False
    """``hosts --drain``: it claims nothing and hands its slots over."""
    cooldown: bool = False
    """In crash-loop cooldown for this profile: another host should take the slot."""
    cluster_slots: int = 0
    """Slots of every cluster profile it holds: the fewest go first (spread)."""


def preference(patterns: Sequence[str], host: str) -> int | None:
    """The position of the first pattern ``host`` matches (fnmatch, case-sensitive); None
    if it matches none. No patterns: every host, all at position 0."""
    if not patterns:
        return 0
    return next((i for i, pattern in enumerate(patterns) if fnmatchcase(host, pattern)), None)


def stable_hash(profile: str, slot: int, host: str) -> int:
    """The same number on every host and every run (Python's ``hash`` is salted per process)."""
    digest = hashlib.blake2b(f"{profile}\0{slot}\0{host}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def claim_delay(position: int, stagger: float) -> float:
    """How long the host at ``position`` (0: first) waits before it claims a vacant slot."""
    if position < 0 or stagger < 0:
        raise ValueError("position and stagger must be >= 0")
    return position * stagger


def place(profile: str, vacant: Iterable[int], hosts: Iterable[HostState],
          held: Mapping[int, str], *, patterns: Sequence[str] = (),
          max_per_host: int = 1) -> dict[int, tuple[str, ...]]:
    """The ranked hosts for each vacant slot (best first; empty: no host may take it).

    ``held`` maps the profile's held slots to their holders; ``hosts`` are the live hosts
    whose config has the profile. Slots are filled lowest first: each slot's first choice
    counts against that host's ``max_per_host`` and its spread for the slots after it, so
    the first choices never put more than ``max_per_host`` slots on a host. The result
    depends only on the inputs' contents, never on their order.
    """
    if max_per_host < 1:
        raise ValueError("max_per_host must be >= 1")
    by_name = {h.host: h for h in sorted(hosts, key=lambda h: h.host)}
    counts = Counter(held.values())
    spread = {name: h.cluster_slots for name, h in by_name.items()}
    candidates = {name: rank for name, h in by_name.items()
                  if not (h.draining or h.cooldown)
                  and (rank := preference(patterns, name)) is not None}
    out: dict[int, tuple[str, ...]] = {}
    for slot in sorted(set(vacant) - set(held)):
        def order(name: str, slot: int = slot) -> tuple[int, int, int, str]:
            return candidates[name], spread[name], stable_hash(profile, slot, name), name

        ranked = tuple(sorted((n for n in candidates if counts[n] < max_per_host), key=order))
        out[slot] = ranked
        if ranked:
            counts[ranked[0]] += 1
            spread[ranked[0]] += 1
    return out


def position(ranked: Sequence[str], host: str) -> int | None:
    """Where ``host`` stands in a slot's ranking; None: it may not claim the slot."""
    try:
        return ranked.index(host)
    except ValueError:
        return None
