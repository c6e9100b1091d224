"""Health probes: readiness at start and liveness while running, for any kind of worker.

``spec`` defines a probe (validated, for the profile's ``probe`` table), ``run`` runs one
probe once, ``scheduler`` probes many instances on time; ``readiness`` waits for a new
instance's first pass, ``liveness`` probes running instances for the guard worker and
reports the unhealthy ones. Modules are imported by their full path.
"""
