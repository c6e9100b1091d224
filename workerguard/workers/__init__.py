"""The host's processes: find, start, watch and stop worker processes. No Celery, no Redis.

``host.HostProcesses`` is the face the guard uses; behind it, ``discover`` (which
processes are instances), ``spawn``, ``stop``, ``watch`` (exits as they happen),
``cgroups`` and ``registry`` (the two identity modes), ``fence`` (the host-wide
``flock``) and ``lockfile`` (every kernel lock of workerguard), ``logs``, and the
runtime directory they share (``rundir``).
Modules are imported by their full path; this package re-exports nothing.
"""
