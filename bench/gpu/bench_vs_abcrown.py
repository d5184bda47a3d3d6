#!/usr/bin/env python
"""dtensor-verify and alpha,beta-CROWN side by side on the same VNN-COMP instances.

    bench/gpu/bench_vs_abcrown.py BENCH_DIR --abcrown DIR --auto-lirpa DIR --out OUT
        [--filter SUBSTRING ...] [--limit N] [--instances CSV] [--timeout-scale F]
        [--device cpu|cuda] [--expected CSV] [--onnx2pytorch DIR] [--abcrown-config YAML]
        [--threads N] [--tools ours,abcrown] [--deadline SECONDS] [--work DIR] [--parts K]
        [--ours-csv CSV] [--abcrown-csv CSV]

The entry point of the package bench/gpu/vs_abcrown/ (its cli module documents the options, the
outputs and the counting; `--help` prints them).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.gpu.vs_abcrown.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
