"""A cluster profile's lease timings and the inequality that makes them safe.

No Redis here: the config (``config.schema``) checks these when it loads, and a file
that only loads a config must not import a Redis client (a guard run as another user in
tests/test_cgroup_layout.py imports no more than it needs; every CLI start pays the
import). ``store.lease`` holds the scripts that use them.
"""

from __future__ import annotations

from dataclasses import dataclass

from workerguard.timing import SOCKET_TIMEOUT


@dataclass(frozen=True)
class Timing:
    """A cluster profile's lease timings (seconds) and the clock-rate bound rho."""

    lease: float
    """L: the TTL every grant and renewal sets, on the Redis clock."""
    renew_deadline: float
    """D: no acknowledged renewal for this long (holder's clock) and the instance is killed."""
    renew_period: float
    """P: between two renewal rounds."""
    kill_budget: float
    """K: from the deadline until no process of the instance runs."""
    clock_drift: float
    """rho: bound on the rate error of any host's clock and the Redis primary's."""

    def overlap_bound(self) -> float:
        """The right-hand side of inequality (I): (1 + rho)(D / (1 - rho) + K)."""
        rho = self.clock_drift
        return (1 + rho) * (self.renew_deadline / (1 - rho) + self.kill_budget)

    def problems(self, socket_timeout: float) -> list[str]:
        """Every violated constraint, one line each with its numbers (empty: safe)."""
        return [f"{field} {problem}" for field, problem in self.violations(socket_timeout)]

    def violations(self, socket_timeout: float) -> list[tuple[str, str]]:
        """Every violated constraint as (the field to change, the problem with its numbers)."""
        out = []
        bound = self.overlap_bound()
        if not bound < self.lease:
            out.append(("lease_seconds",
                        f"{self.lease:g} must exceed (1+{self.clock_drift:g})*"
                        f"({self.renew_deadline:g}/(1-{self.clock_drift:g})+{self.kill_budget:g}) = "
                        f"{bound:.2f} s (inequality I: an old instance is gone before its lease can "
                        f"move), margin {self.lease - bound:.2f} s"))
        need = 2 * self.renew_period + socket_timeout
        if self.renew_deadline < need:
            out.append(("renew_deadline",
                        f"{self.renew_deadline:g} must be at least 2*renew_period + the lease "
                        f"client's socket timeout = {need:g} s (two renewal attempts before "
                        f"fencing)"))
        return out

    def summary(self) -> str:
        """Inequality (I) with these numbers and its margin, for ``workerguard check``."""
        rho = self.clock_drift
        verdict = "ok" if self.margin() > 0 else "VIOLATED"
        return (f"(1+{rho:g})*({self.renew_deadline:g}/(1-{rho:g})+{self.kill_budget:g}) = "
                f"{self.overlap_bound():.2f} s < lease {self.lease:g} s, margin "
                f"{self.margin():.2f} s: {verdict}")

    def margin(self) -> float:
        return self.lease - self.overlap_bound()


def lease_socket_timeout(renew_period: float) -> float:
    """The lease client's socket timeout (``ops.connect.lease_client``): a Redis call of the
    lease loop never waits longer than one renew period, nor than any other client."""
    return min(renew_period, SOCKET_TIMEOUT)
