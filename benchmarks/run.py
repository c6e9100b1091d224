"""Benchmarks: workerguard side by side with a port of the script it replaces.

    python benchmarks/run.py            # the full run (several minutes)
    python benchmarks/run.py --quick    # scaled down: CI proves every row runs (docs/benchmarks.md)

Prints a markdown table; every row compares workerguard with a baseline measured in
the same run. Asserts nothing about speed.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.main import main

if __name__ == "__main__":
    sys.exit(main())
