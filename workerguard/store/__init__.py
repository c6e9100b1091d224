"""Everything workerguard keeps in Redis: one module per kind of record.

``keys`` names every key; ``lock`` is the per-profile lock; ``pause``, ``backoff``,
``known_instances``, ``sweep_claim`` and ``events`` each own one record.
"""
