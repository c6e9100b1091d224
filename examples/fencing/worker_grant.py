"""The grant a cluster instance runs under, read as workerguard hands it over.

workerguard starts every instance of a ``scope = "cluster"`` profile with:

* ``WORKERGUARD_FENCING_TOKEN``: the grant's token, a decimal integer, greater than the
  token of every earlier grant of the profile;
* ``WORKERGUARD_SLOT``: the instance's slot, ``0 .. max_workers - 1``;
* ``WORKERGUARD_LEASE_FILE``: a file holding the hard deadline in ``CLOCK_BOOTTIME``
  seconds; the guard rewrites it after each renewal and writes 0 once the lease is lost.

Standard library only; Linux (``CLOCK_BOOTTIME``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Grant:
    token: int
    slot: int
    lease_file: Path

    def seconds_left(self) -> float:
        """Seconds until the leash kills this instance; 0 once the lease is lost. A cheap
        check before a long side effect, not a fence: the write itself must carry the token."""
        try:
            deadline = float(self.lease_file.read_text(encoding="ascii"))
        except (OSError, ValueError):
            return 0.0
        return max(0.0, deadline - time.clock_gettime(time.CLOCK_BOOTTIME))


def current_grant(environ: Mapping[str, str] = os.environ) -> Grant:
    """The grant of this process; KeyError when it is not a cluster instance."""
    return Grant(token=int(environ["WORKERGUARD_FENCING_TOKEN"]),
                 slot=int(environ["WORKERGUARD_SLOT"]),
                 lease_file=Path(environ["WORKERGUARD_LEASE_FILE"]))
