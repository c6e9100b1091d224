"""Side-by-side benchmarks: workerguard against a port of the script it replaces."""
