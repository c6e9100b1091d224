"""Health probes: readiness at start and liveness while running, for any kind of worker.

Self-contained like ``workers/``: no Celery, no Redis, no guard. ``spec`` defines a
probe (validated, for the profile's ``probe`` table), ``run`` runs one probe once,
``scheduler`` probes many instances on time and reports the unhealthy ones.
"""

from .run import ProbeResult, cut, run_probe, wait_ready
from .scheduler import Prober
from .spec import (
    AnyProbe,
    CommandProbe,
    HeartbeatProbe,
    HttpProbe,
    ProbeSpec,
    ProbeTarget,
    TcpProbe,
)

__all__ = [
    "AnyProbe",
    "CommandProbe",
    "HeartbeatProbe",
    "HttpProbe",
    "ProbeResult",
    "ProbeSpec",
    "ProbeTarget",
    "Prober",
    "TcpProbe",
    "cut",
    "run_probe",
    "wait_ready",
]
