"""Everything workerguard keeps in Redis: one module per kind of record.

``keys`` names every key; ``lock`` is the per-profile lock; ``pause``, ``backoff``,
``known_instances``, ``sweep_claim``, ``exit_claims`` and ``events`` each own one record,
through one class bound to a client and a host; ``snapshot`` is the reads that span them.
"""
