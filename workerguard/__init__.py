"""workerguard: keep exactly the right number of a named worker process alive on each host."""

__version__ = "0.1.0"
