#!/usr/bin/env python
"""dtensor-verify and alpha,beta-CROWN side by side on the same VNN-COMP instances.

The entry point of the package bench/gpu/vs_abcrown/: its cli module documents the command line
(`bench/gpu/bench_vs_abcrown.py --help`), the outputs and the counting.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.gpu.vs_abcrown.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
