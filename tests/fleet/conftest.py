"""The beds the checks run on, one per module (booting the guard workers costs more than a
round): ``fleet``, 3 hosts and a singleton (F1-F5); ``fleet4``, 4 hosts and 2 slots with
``max_per_host`` 1 (F6); ``fleet_at_least``, 2 hosts and a singleton with ``guarantee =
"at_least"`` (F11); the clock beds of F7 (tests/fleet/test_clocks.py, through ``bed``).
And the figures each check reports, printed at the end of the run."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from tests.fleet.bed import Fleet, clock_missing, missing

FIGURES: list[str] = []


def report(line: str) -> None:
    """A figure of a check, printed in the run's summary (``fleet figures``)."""
    FIGURES.append(line)
    print(line)


@contextlib.contextmanager
def bed(hosts: int, max_workers: int, guarantee: str = "at_most",
        redis_clock: str | None = None, host_clocks: tuple[str | None, ...] = (),
        timings: Mapping[str, float] | None = None) -> Iterator[Fleet]:
    why = missing()
    if why is None and (redis_clock is not None or any(host_clocks)):
        why = clock_missing()
    if why is not None:
        pytest.skip(f"the fleet bed cannot run here: {why}")
    started = Fleet(hosts, max_workers=max_workers, guarantee=guarantee,
                    redis_clock=redis_clock, host_clocks=host_clocks,
                    timings=timings or {}).start()
    try:
        yield started
    finally:
        started.close()


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with bed(3, max_workers=1) as started:
        yield started


@pytest.fixture(scope="module")
def fleet4() -> Iterator[Fleet]:
    with bed(4, max_workers=2) as started:
        yield started


@pytest.fixture(scope="module")
def fleet_at_least() -> Iterator[Fleet]:
    with bed(2, max_workers=1, guarantee="at_least") as started:
        yield started


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("fleet figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
