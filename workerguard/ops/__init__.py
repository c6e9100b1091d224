"""Running workerguard: Redis connections, the embedded Redis, the long-running commands
(worker, beat, flower, up) and their Prometheus metrics.
"""
