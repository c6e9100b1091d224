"""The decisions: what to do with a profile, and the answer that says what was done.

``guard`` combines the lock, the host's processes and the plan; ``plan`` is the pure
keep/stop/start function; ``outcome`` is a converge's typed answer, ``reports`` the
status and prune reports; ``hooks`` is how the rest of the system (metrics, the Celery
edge) learns what the guard did; ``coalesce`` shares one converge among identical
requests.
"""
